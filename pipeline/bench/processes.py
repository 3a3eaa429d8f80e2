"""Benchmarks 1-3 run whole processes, as a user does: this pipeline's Hydra app against `clip_benchmark eval`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PYTHON = sys.executable
CLIP_BENCHMARK = str(Path(sys.executable).with_name("clip_benchmark"))
# A process that runs `python -m pipeline ARGS...` and, as it exits, writes the modules it imported to FILE.
_RECORDING = ("import atexit, json, runpy, sys\n"
              "record, sys.argv = sys.argv[1], ['pipeline', *sys.argv[2:]]\n"
              "atexit.register(lambda: open(record, 'w').write(json.dumps(sorted(sys.modules))))\n"
              "runpy.run_module('pipeline', run_name='__main__', alter_sys=True)\n")
# A bare interpreter that imports those modules and does nothing else.
_IMPORTING = ("import importlib, json, sys\n"
              "for name in json.load(open(sys.argv[1])):\n"
              "    try:\n"
              "        importlib.import_module(name)\n"
              "    except Exception:\n"
              "        pass\n")


class BenchFailure(RuntimeError):
    """A benchmarked command failed; its output tail says why."""


def seconds(command: list[str], env: dict[str, str] | None = None) -> float:
    """Wall-clock seconds of one process, start to exit."""
    start = time.perf_counter()
    done = subprocess.run(command, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise BenchFailure(f"{' '.join(command[:6])} ... exited {done.returncode}:\n{tail}")
    return elapsed


@dataclass(frozen=True)
class Model:
    arch: str
    checkpoint: Path


@dataclass(frozen=True)
class Dataset:
    name: str
    root: Path


@dataclass(frozen=True)
class Settings:
    batch_size: int
    workers: int


def dataset_configs(scratch: Path, sets: list[Dataset]) -> Path:
    """A config folder with one `dataset/<name>.yaml` per synthetic set, added to Hydra's search path, so one
    multirun sweeps datasets and prompt sets together as a user's sweep does."""
    folder = scratch / "conf" / "dataset"
    folder.mkdir(parents=True, exist_ok=True)
    for dataset in sets:
        (folder / f"{dataset.name}.yaml").write_text(
            f"name: {dataset.name}\ntask: zeroshot_classification\nformat: wds\ncolumn: null\nroot: {dataset.root}\n"
            f"split: test\nskip_corrupt: false\nmain_metric: acc1\n")
    return folder.parent


def pipeline_arguments(model: Model, sets: list[Dataset], prompt_sets: list[str], settings: Settings,
                       conf: Path) -> list[str]:
    """`python -m pipeline`'s arguments: a multirun over datasets x prompt sets (a single run for one of each)."""
    sweep = ["-m"] if len(sets) * len(prompt_sets) > 1 else []
    return [*sweep, f"hydra.searchpath=[file://{conf}]", "model=tiny", f"model.name=bench_{model.arch}",
            f"model.arch={model.arch}", f"model.pretrained={model.checkpoint}", "protocol=fp32",
            f"dataset={','.join(d.name for d in sets)}", f"prompts={','.join(prompt_sets)}",
            f"batch_size={settings.batch_size}", f"num_workers={settings.workers}"]


def pipeline_command(arguments: list[str]) -> list[str]:
    return [PYTHON, "-m", "pipeline", *arguments]


def recording_command(arguments: list[str], record: Path) -> list[str]:
    """`python -m pipeline` that records the modules it imported, for `bare_command`."""
    return [PYTHON, "-c", _RECORDING, str(record), *arguments]


def bare_command(record: Path) -> list[str]:
    """A bare interpreter start with exactly the imports a recorded run made."""
    return [PYTHON, "-c", _IMPORTING, str(record)]


def clip_benchmark_command(model: Model, dataset: Dataset, templates: list[str], settings: Settings,
                           scratch: Path, label: str) -> list[str]:
    """One `clip_benchmark eval --no_amp` process with the prompt set's templates as its custom template file."""
    template_file = scratch / f"templates_{dataset.name}_{label}.json"
    template_file.write_text(json.dumps({dataset.name: templates}))
    return [CLIP_BENCHMARK, "eval", "--dataset", f"wds/{dataset.name}", "--dataset_root", str(dataset.root),
            "--task", "zeroshot_classification", "--model", model.arch, "--pretrained", str(model.checkpoint),
            "--no_amp", "--batch_size", str(settings.batch_size), "--num_workers", str(settings.workers),
            "--custom_template_file", str(template_file), "--output", str(scratch / f"cb_{dataset.name}_{label}.json")]
