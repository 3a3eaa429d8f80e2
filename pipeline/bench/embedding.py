"""Benchmark 4: the pipeline's image embedding against a bare `DataLoader -> encode_image` loop with the same
DataLoader settings, timed from the first batch to all features in memory (the physical limit of the machine)."""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from pipeline.data import datasets, reading
from pipeline.data.readers import Batch
from pipeline.models.loading import LoadedModel
from pipeline.stages.embed.images import encode_batches


@dataclass(frozen=True)
class Throughput:
    images: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.images / self.seconds


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(loaded: LoadedModel, root: Path, batch_size: int, workers: int) -> Throughput:
    """What anyone would write: webdataset's own pipeline (as clip_benchmark builds it) into encode_image."""
    import webdataset as wds

    shards = sorted(str(path) for path in (root / "test").glob("*.tar"))
    pipeline = (wds.WebDataset(shards, shardshuffle=False, empty_check=False).decode("pil")
                .to_tuple("webp;png;jpg;jpeg", "cls").map_tuple(loaded.preprocess, lambda label: label)
                .batched(batch_size))
    loader = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=min(workers, len(shards)),
                                         pin_memory=loaded.device.type == "cuda")
    batches = iter(loader)
    features, count = [], 0
    with torch.no_grad():
        images, _ = next(batches)
        start = time.perf_counter()
        for images, _ in itertools.chain([(images, None)], batches):
            features.append(loaded.model.encode_image(images.to(loaded.device, non_blocking=True)).cpu())
            count += len(images)
        _synchronize(loaded.device)
    return Throughput(count, time.perf_counter() - start)


class _Stamped:
    """Batches that record when the first one arrived."""

    def __init__(self, batches: Iterator[Batch]):
        self.first = next(batches)
        self.start = time.perf_counter()
        self.rest = batches

    def __iter__(self) -> Iterator[Batch]:
        return itertools.chain([self.first], self.rest)


def pipeline_embedding(loaded: LoadedModel, root: Path, batch_size: int, workers: int) -> Throughput:
    """The embed stage's own reader and encoding loop (labels collected, features kept with their dtype)."""
    spec = datasets.DatasetSpec("bench", "zeroshot_classification", str(root), "test", "acc1")
    stamped = _Stamped(reading.classification_batches(spec, loaded.preprocess, batch_size, workers,
                                                       pin_memory=loaded.device.type == "cuda"))
    labels: list[int] = []
    output = encode_batches(loaded, iter(stamped), spec, "fp32",
                                  lambda batch: labels.extend(int(label) for label in batch.fields["cls"]),
                                  progress=False)
    _synchronize(loaded.device)
    return Throughput(len(output.arrays["image_features"]), time.perf_counter() - stamped.start)


def warm_up(loaded: LoadedModel, batch_size: int) -> None:
    """One batch through the tower first, so neither side pays for kernel selection and allocator growth."""
    size = loaded.preprocess.transforms[0].size
    side = size if isinstance(size, int) else size[0]
    with torch.no_grad():
        loaded.model.encode_image(torch.zeros(batch_size, 3, side, side, device=loaded.device))
    _synchronize(loaded.device)


def compare(loaded: LoadedModel, root: Path, batch_size: int, workers: int, repeats: int = 2) -> tuple[Throughput, Throughput]:
    """(bare, pipeline), each the best of `repeats` runs, interleaved so neither side gets a warmer machine."""
    warm_up(loaded, batch_size)
    bare, ours = [], []
    for _ in range(repeats):
        bare.append(bare_loop(loaded, root, batch_size, workers))
        ours.append(pipeline_embedding(loaded, root, batch_size, workers))
    return min(bare, key=lambda t: t.seconds), min(ours, key=lambda t: t.seconds)
