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
# What `python -m pipeline` imports before any job runs (the aggregate callback included).
BARE_START = [PYTHON, "-c", "import pipeline.__main__, pipeline.aggregate"]


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


def pipeline_command(model: Model, dataset: Dataset, prompt_sets: list[str], settings: Settings) -> list[str]:
    """One `python -m pipeline` process: a multirun over the prompt sets (a single run for one set)."""
    sweep = ["-m"] if len(prompt_sets) > 1 else []
    return [PYTHON, "-m", "pipeline", *sweep, "model=tiny", f"model.name=bench_{model.arch}", f"model.arch={model.arch}",
            f"model.pretrained={model.checkpoint}", "protocol=fp32", "dataset=wds", f"dataset.name={dataset.name}",
            f"dataset.root={dataset.root}", f"prompts={','.join(prompt_sets)}", f"batch_size={settings.batch_size}",
            f"num_workers={settings.workers}"]


def clip_benchmark_command(model: Model, dataset: Dataset, templates: list[str], settings: Settings,
                           scratch: Path, label: str) -> list[str]:
    """One `clip_benchmark eval --no_amp` process with the prompt set's templates as its custom template file."""
    template_file = scratch / f"templates_{dataset.name}_{label}.json"
    template_file.write_text(json.dumps({dataset.name: templates}))
    return [CLIP_BENCHMARK, "eval", "--dataset", f"wds/{dataset.name}", "--dataset_root", str(dataset.root),
            "--task", "zeroshot_classification", "--model", model.arch, "--pretrained", str(model.checkpoint),
            "--no_amp", "--batch_size", str(settings.batch_size), "--num_workers", str(settings.workers),
            "--custom_template_file", str(template_file), "--output", str(scratch / f"cb_{dataset.name}_{label}.json")]
