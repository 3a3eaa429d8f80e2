"""The device a job computes on: `auto` is what torch would use, told without importing torch."""
import subprocess
import sys

import torch

from pipeline.models.devices import cuda_available, device_type, resolve_device


def test_auto_is_the_device_torch_would_use_and_a_device_type_drops_its_index():
    assert cuda_available() == torch.cuda.is_available()
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cuda:1") == "cuda:1" and device_type("cuda:1") == "cuda" and device_type("cpu") == "cpu"


def test_whether_a_gpu_is_usable_is_told_without_importing_torch():
    code = ("import sys\nfrom pipeline.models.devices import cuda_available\nfound = cuda_available()\n"
            "print(found, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split() == [str(torch.cuda.is_available()), "False"]
