"""Which device a job computes on: `auto` resolved, and whether torch can use a GPU, told without importing torch."""
from __future__ import annotations

import ctypes
import importlib.util
import re
import sys
from pathlib import Path


def resolve_device(device: str) -> str:
    """`auto` as the device it stands for (`cuda` where torch can use a GPU, else `cpu`); any other name as given."""
    if device != "auto":
        return device
    return "cuda" if cuda_available() else "cpu"


def device_type(device: str) -> str:
    """`cuda` for `cuda:1`: what the precision recipes (and so the cache keys) depend on."""
    return device.split(":", 1)[0]


def cuda_available() -> bool:
    """`torch.cuda.is_available()`, without importing torch (a second or two a process) when nothing else needs it:
    torch can use a GPU when it was built with CUDA (its `version.py` says which) and the CUDA driver counts at least
    one device (the driver applies CUDA_VISIBLE_DEVICES, as it does for torch)."""
    if "torch" in sys.modules:
        return sys.modules["torch"].cuda.is_available()
    spec = importlib.util.find_spec("torch")
    version = Path(spec.origin).with_name("version.py") if spec and spec.origin else None
    if version is None or not version.is_file():
        return False
    if not re.search(r"^cuda\s*(:\s*[^=]*)?=\s*['\"]\d", version.read_text(), re.M):
        return False  # a CPU build
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False  # no NVIDIA driver
    count = ctypes.c_int(0)
    return driver.cuInit(0) == 0 and driver.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
