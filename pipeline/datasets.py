"""Datasets in CLIP_benchmark's webdataset layout, read through clip_benchmark's own builder."""
from __future__ import annotations

import hashlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from pipeline import PipelineError

log = logging.getLogger(__name__)

FINGERPRINT_HEAD_BYTES = 1 << 16


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    task: str
    root: str
    split: str
    main_metric: str

    @classmethod
    def from_cfg(cls, cfg: Any) -> "DatasetSpec":
        return cls(cfg.name, cfg.task, str(cfg.root), cfg.split, cfg.main_metric)

    @property
    def is_remote(self) -> bool:
        return "://" in self.root

    @property
    def benchmark_name(self) -> str:
        """The name clip_benchmark's builder dispatches on."""
        return self.name if self.name.startswith("wds/") else f"wds/{self.name}"


@dataclass(frozen=True)
class DatasetInfo:
    """What later stages need to know about a dataset before reading any image."""

    spec: DatasetSpec
    classnames: list[str]
    templates: list[str]
    fingerprint: dict[str, Any]


def check_local_layout(spec: DatasetSpec) -> None:
    """Fail early, naming the path, when a local dataset is missing or incomplete."""
    if spec.is_remote:
        return
    root = Path(spec.root)
    if not root.is_dir():
        raise PipelineError(
            f"dataset root {root} does not exist. Set dataset.root to a directory in CLIP_benchmark's "
            f"webdataset layout (for the bundled data run `python -m pipeline.offline` or `make assets`)."
        )
    nshards = root / spec.split / "nshards.txt"
    if not nshards.is_file():
        raise PipelineError(f"{nshards} is missing: {root} has no split {spec.split!r} in webdataset layout")
    missing = [str(root / spec.split / f"{i}.tar") for i in range(int(nshards.read_text()))
               if not (root / spec.split / f"{i}.tar").is_file()]
    if missing:
        raise PipelineError(f"dataset {spec.name}: shards missing: {', '.join(missing)}")


def fingerprint(spec: DatasetSpec) -> dict[str, Any]:
    """Identify a dataset's content cheaply: a remote one by URL, a local one by its files' names, sizes and heads.

    Hashing every byte of ImageNet on each run would cost more than the embedding it saves.
    """
    if spec.is_remote:
        return {"name": spec.name, "root": spec.root, "split": spec.split}
    root = Path(spec.root)
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and (p.parent == root or p.parent.name == spec.split))
    for path in files:
        with open(path, "rb") as handle:
            head = handle.read(FINGERPRINT_HEAD_BYTES)
        digest.update(f"{path.relative_to(root)}:{path.stat().st_size}:".encode())
        digest.update(hashlib.sha256(head).digest())
    return {"name": spec.name, "split": spec.split, "content": digest.hexdigest()}


def build(spec: DatasetSpec, transform: Callable | None = None):
    """clip_benchmark's webdataset pipeline, with `.classes` and `.templates` from the dataset's metadata files."""
    from clip_benchmark.datasets.builder import build_dataset

    check_local_layout(spec)
    try:
        with warnings.catch_warnings():
            # clip_benchmark leaves shardshuffle unset; evaluation order does not matter, the warning is noise.
            warnings.filterwarnings("ignore", message=r"WebDataset\(shardshuffle")
            return build_dataset(spec.benchmark_name, root=spec.root, transform=transform, split=spec.split,
                                 download=False, task=spec.task)
    except FileNotFoundError as exc:
        raise PipelineError(f"cannot read dataset {spec.name} at {spec.root}: {exc}") from exc


def describe(spec: DatasetSpec) -> DatasetInfo:
    dataset = build(spec)
    if not dataset.classes:
        raise PipelineError(f"dataset {spec.name} at {spec.root} has no classnames.txt")
    return DatasetInfo(spec, list(dataset.classes), list(dataset.templates or []), fingerprint(spec))


def image_batches(spec: DatasetSpec, transform: Callable, batch_size: int, num_workers: int) -> torch.utils.data.DataLoader:
    """Batches of (images, labels), batched inside the webdataset pipeline as clip_benchmark does."""
    dataset = build(spec, transform)
    workers = min(num_workers, os.cpu_count() or 1)
    return torch.utils.data.DataLoader(dataset.batched(batch_size), batch_size=None, num_workers=workers)
