"""Dataset readers: CLIP_benchmark's webdataset layout (through clip_benchmark's own builder), WILDS/fairness
shards with per-sample metadata, Hugging Face datasets (nlphuji retrieval and WinoGAViL), TFDS, image folders."""
from __future__ import annotations

import hashlib
import io
import logging
import multiprocessing
import os
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from omegaconf import OmegaConf

from pipeline import PipelineError

log = logging.getLogger(__name__)

FINGERPRINT_HEAD_BYTES = 1 << 16
TASKS = ("zeroshot_classification", "zeroshot_retrieval", "winogavil")
FORMATS = ("wds", "hf", "tfds", "folder")
IMAGE_EXTENSIONS = ["webp", "png", "jpg", "jpeg"]


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset config: what it is, where it is, how it is scored."""

    name: str
    task: str
    root: str
    split: str
    main_metric: str
    format: str = "wds"
    column: str | None = None
    source: str = "local"  # whose copy: datacomp, clip_benchmark, nlphuji, tfds, or local for your own data
    metadata_fields: tuple[str, ...] = ()
    group_metrics: tuple[dict, ...] = ()
    extra_metrics: tuple[str, ...] = ()

    @classmethod
    def from_cfg(cls, cfg: Any) -> "DatasetSpec":
        plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
        spec = cls(
            plain["name"], plain["task"], str(plain["root"]), plain["split"], plain["main_metric"],
            plain.get("format", "wds"), plain.get("column"), plain.get("source") or "local",
            tuple(plain.get("metadata_fields") or ()),
            tuple(plain.get("group_metrics") or ()), tuple(plain.get("extra_metrics") or ()),
        )
        if spec.task not in TASKS:
            raise PipelineError(f"dataset.task={spec.task!r} is not one of {TASKS}")
        if spec.format not in FORMATS:
            raise PipelineError(f"dataset.format={spec.format!r} is not one of {FORMATS}")
        return spec

    @property
    def is_remote(self) -> bool:
        return "://" in self.root or (self.format == "hf" and not Path(self.root).is_absolute())

    @property
    def benchmark_name(self) -> str:
        """The name clip_benchmark's builder dispatches on."""
        prefix = "tfds/" if self.format == "tfds" else "wds/"
        return self.name if self.name.startswith(prefix) else prefix + self.name.removeprefix("tfds/")


@dataclass(frozen=True)
class DatasetInfo:
    """What later stages need to know about a dataset before reading any image."""

    spec: DatasetSpec
    classnames: list[str]
    templates: list[str]
    fingerprint: dict[str, Any] = field(default_factory=dict)


# -- checks and fingerprints -----------------------------------------------------------------------
def check_local_layout(spec: DatasetSpec) -> None:
    """Fail early, naming the path, when a local dataset is missing or incomplete."""
    if spec.is_remote or spec.format == "tfds":
        return
    root = Path(spec.root)
    if not root.is_dir():
        raise PipelineError(
            f"dataset root {root} does not exist. Set dataset.root (or data_root for the catalog) to a directory in "
            f"the dataset's layout (for the bundled data run `python -m pipeline.offline` or `make assets`)."
        )
    if spec.format == "folder":
        if not (root / spec.split).is_dir():
            raise PipelineError(f"{root / spec.split} is missing: an image folder needs <root>/<split>/<class>/<image>")
        return
    if spec.format != "wds":
        return
    nshards = root / spec.split / "nshards.txt"
    if not nshards.is_file():
        raise PipelineError(f"{nshards} is missing: {root} has no split {spec.split!r} in webdataset layout")
    missing = [str(root / spec.split / f"{i}.tar") for i in range(int(nshards.read_text()))
               if not (root / spec.split / f"{i}.tar").is_file()]
    if missing:
        raise PipelineError(f"dataset {spec.name}: shards missing: {', '.join(missing)}")


def fingerprint(spec: DatasetSpec) -> dict[str, Any]:
    """Identify a dataset's content cheaply: a remote one by its address, a local one by its files' names, sizes and heads.

    Hashing every byte of ImageNet on each run would cost more than the embedding it saves.
    """
    identity = {"name": spec.name, "split": spec.split, "format": spec.format, "metadata": list(spec.metadata_fields)}
    if spec.is_remote or spec.format == "tfds":
        return {**identity, "root": spec.root}
    root = Path(spec.root)
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and (p.parent == root or spec.split in p.relative_to(root).parts
                                                                   or spec.format == "hf"))
    for path in files:
        with open(path, "rb") as handle:
            head = handle.read(FINGERPRINT_HEAD_BYTES)
        digest.update(f"{path.relative_to(root)}:{path.stat().st_size}:".encode())
        digest.update(hashlib.sha256(head).digest())
    return {**identity, "content": digest.hexdigest()}


# -- webdataset (clip_benchmark) -------------------------------------------------------------------
def build(spec: DatasetSpec, transform: Callable | None = None):
    """clip_benchmark's dataset for `spec`, with `.classes` and `.templates` from the dataset's metadata files."""
    from clip_benchmark.datasets.builder import build_dataset

    check_local_layout(spec)
    try:
        with warnings.catch_warnings():
            # clip_benchmark leaves shardshuffle unset; evaluation order does not matter, the warning is noise.
            warnings.filterwarnings("ignore", message=r"WebDataset\(shardshuffle")
            return build_dataset(spec.benchmark_name, root=spec.root, transform=transform, split=spec.split,
                                 download=spec.format == "tfds", task=spec.task)
    except FileNotFoundError as exc:
        raise PipelineError(f"cannot read dataset {spec.name} at {spec.root}: {exc}") from exc


def _read_text(location: str) -> str:
    if "://" in location:
        with urllib.request.urlopen(location, timeout=60) as response:
            return response.read().decode()
    return Path(location).read_text()


def _shard_pattern(spec: DatasetSpec) -> str:
    """The brace pattern of a split's shards, with Hugging Face's raw/resolve addresses as clip_benchmark uses them."""
    metadata_dir = tar_dir = spec.root
    if spec.root.startswith("https://huggingface.co/datasets"):
        metadata_dir, tar_dir = spec.root.replace("/tree/", "/raw/"), spec.root.replace("/tree/", "/resolve/")
    nshards = int(_read_text(f"{metadata_dir}/{spec.split}/nshards.txt"))
    return f"{tar_dir}/{spec.split}/{{0..{nshards - 1}}}.tar"


def _webdataset_with_metadata(spec: DatasetSpec, transform: Callable):
    """(image, label, metadata) in one pass over the shards.

    clip_benchmark's reader keeps only (image, cls), so WILDS/fairness shards, whose group fields
    are a per-sample `.npy`, are read here with webdataset directly; one pass keeps the three aligned.
    """
    import webdataset as wds

    check_local_layout(spec)
    dataset = wds.WebDataset(_shard_pattern(spec), shardshuffle=False, nodesplitter=lambda src: src)
    return (dataset.decode(wds.autodecode.ImageHandler("pil", extensions=IMAGE_EXTENSIONS))
            .to_tuple(IMAGE_EXTENSIONS, "cls", "npy")
            .map_tuple(transform, None, lambda m: np.asarray(m, dtype=np.int64).reshape(-1)))


# -- image folders ----------------------------------------------------------------------------------
def _folder_classnames(spec: DatasetSpec) -> list[str]:
    from torchvision.datasets.folder import find_classes

    classes, _ = find_classes(str(Path(spec.root) / spec.split))
    return [c.replace("_", " ") for c in classes]


def _folder_templates(spec: DatasetSpec) -> list[str]:
    file = Path(spec.root) / "zeroshot_classification_templates.txt"
    return non_blank(file.read_text().splitlines()) if file.is_file() else []


# -- Hugging Face datasets (nlphuji) ------------------------------------------------------------------
def load_hf(spec: DatasetSpec):
    """nlphuji's datasets as DataComp reads them: `load_dataset(id, split)`, or a local mirror of the same."""
    import datasets as hf

    check_local_layout(spec)
    root = Path(spec.root)
    try:
        if (root / "dataset_dict.json").exists() or (root / "state.json").exists():  # a save_to_disk folder
            loaded = hf.load_from_disk(str(root))
            return loaded[spec.split] if isinstance(loaded, hf.DatasetDict) else loaded
        return hf.load_dataset(spec.root, split=spec.split)
    except Exception as exc:
        raise PipelineError(f"cannot load Hugging Face dataset {spec.root} (split {spec.split}): {exc}") from exc


# -- what the stages call -----------------------------------------------------------------------------
def describe(spec: DatasetSpec) -> DatasetInfo:
    """Class names and shipped templates (classification), with the content fingerprint for cache keys."""
    check_local_layout(spec)
    content = fingerprint(spec)
    if spec.task != "zeroshot_classification":
        return DatasetInfo(spec, [], [], content)
    if spec.format == "folder":
        return DatasetInfo(spec, _folder_classnames(spec), _folder_templates(spec), content)
    dataset = build(spec)
    classnames = non_blank(dataset.classes or [])
    if not classnames:
        raise PipelineError(f"dataset {spec.name} at {spec.root} has no classnames.txt")
    return DatasetInfo(spec, classnames, non_blank(getattr(dataset, "templates", None) or []), content)


def non_blank(lines: list[str]) -> list[str]:
    """Drop blank lines of classnames.txt and templates files, as clip-benchmark 1.4.0 (DataComp's pin) did
    (datasets/builder.py:630); 1.6.2 keeps them, turning a blank line into a phantom class named ""."""
    return [line.strip() for line in lines if line.strip()]


def _loader(dataset, batch_size: int, num_workers: int, batched_in_pipeline: bool, collate=None):
    workers = min(num_workers, os.cpu_count() or 1)
    if multiprocessing.current_process().name != "MainProcess":
        # Inside a launcher's worker (e.g. Hydra's joblib launcher) nested DataLoader workers fail to start.
        workers = 0
    if batched_in_pipeline:
        return torch.utils.data.DataLoader(dataset.batched(batch_size, collation_fn=collate) if collate else
                                           dataset.batched(batch_size), batch_size=None, num_workers=workers)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False,
                                       collate_fn=collate)


def _collate_with_metadata(samples):
    images, labels, metadata = zip(*samples)
    return torch.stack(images), torch.as_tensor(labels), torch.as_tensor(np.stack(metadata))


def classification_batches(spec: DatasetSpec, transform: Callable, batch_size: int,
                           num_workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """(images, labels, metadata or None) batches for a classification dataset."""
    if spec.format == "folder":
        from torchvision.datasets import ImageFolder

        check_local_layout(spec)
        loader = _loader(ImageFolder(str(Path(spec.root) / spec.split), transform=transform), batch_size, num_workers, False)
        return ((images, labels, None) for images, labels in loader)
    if spec.metadata_fields:
        loader = _loader(_webdataset_with_metadata(spec, transform), batch_size, num_workers, True, _collate_with_metadata)
        return iter(loader)
    dataset = build(spec, transform)
    batched = spec.format != "tfds"
    loader = _loader(dataset, batch_size, num_workers, batched)
    return ((images, labels, None) for images, labels in loader)


def retrieval_batches(spec: DatasetSpec, transform: Callable, batch_size: int,
                      num_workers: int) -> Iterator[tuple[torch.Tensor, list[list[str]]]]:
    """(images, captions per image) batches, from a retrieval webdataset or an nlphuji HF dataset."""
    from clip_benchmark.datasets.builder import image_captions_collate_fn

    if spec.format == "hf":
        rows = load_hf(spec)
        pairs = _HFPairs(rows, transform)
        return iter(_loader(pairs, batch_size, num_workers, False, image_captions_collate_fn))
    dataset = build(spec, transform)
    return iter(_loader(dataset, batch_size, num_workers, True, image_captions_collate_fn))


class _HFPairs(torch.utils.data.Dataset):
    """(image, captions) rows of an nlphuji retrieval dataset (columns `image`, `caption`)."""

    def __init__(self, rows, transform: Callable):
        self.rows, self.transform = rows, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        row = self.rows[index]
        return self.transform(_as_image(row["image"])), list(row["caption"])


def _as_image(value):
    from PIL import Image

    if isinstance(value, dict) and value.get("bytes") is not None:
        return Image.open(io.BytesIO(value["bytes"])).convert("RGB")
    return value.convert("RGB")


@dataclass(frozen=True)
class WinoInstance:
    cue: str
    candidates: list[str]
    associations: list[str]
    images: list


def winogavil_instances(spec: DatasetSpec) -> Iterator[WinoInstance]:
    """WinoGAViL games from nlphuji/winogavil: a cue, candidate images, and the associated candidates."""
    for row in load_hf(spec):
        yield WinoInstance(row["cue"], list(row["candidates"]), list(row["associations"]),
                           [_as_image(image) for image in row["candidate_images"]])
