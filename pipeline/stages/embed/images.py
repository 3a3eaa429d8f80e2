"""Image encoding for the embed stage: every image of a dataset through the image tower once, in the dataset's
order, each reading or model failure said for what it is. Each task's encoder (`pipeline.tasks`) reads its
dataset through these, keeping what it needs beside the features (labels, caption owners, a game's layout)."""
from __future__ import annotations

import logging
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from pipeline.data import datasets
from pipeline.data.readers import Batch, Unreadable, is_decoding_error
from pipeline.errors import PipelineError, one_line
from pipeline.models.loading import LoadedModel, ModelLoader
from pipeline.models.precision import with_dtype
from pipeline.stages.embed.projection import ImageEncoder, image_encoder
from pipeline.store.artifacts import StageOutput

log = logging.getLogger(__name__)


def read_failure(spec: datasets.DatasetSpec, exc: Exception) -> PipelineError:
    """A reader's failure as what it is: damaged data only where the error is a decoding error."""
    where = f"reading dataset {spec.name} ({spec.root}, split {spec.split}) failed"
    if is_decoding_error(exc):
        return PipelineError(f"{where}: {one_line(exc)}. A shard may be corrupt or truncated; re-download or "
                             f"regenerate it.")
    return PipelineError(f"{where}: {type(exc).__name__}: {one_line(exc)} (not a decoding error: the data is not "
                         f"known to be damaged; the job's log has the traceback)")


def _unreadable_sample(spec: datasets.DatasetSpec, sample: Unreadable) -> PipelineError:
    if sample.missing:
        return PipelineError(f"dataset {spec.name}: sample {sample.key} in shard {sample.shard}: {sample.error}; "
                             f"is dataset.task={spec.task} right for this dataset?")
    return PipelineError(f"dataset {spec.name}: sample {sample.key} in shard {sample.shard} cannot be decoded "
                         f"({one_line(sample.error)}); the shard is corrupt or truncated: re-download it, "
                         f"or set dataset.skip_corrupt=true to skip such samples")


def from_worker(exc: PipelineError) -> PipelineError:
    """A reader's one-line error as it said it: a DataLoader worker's comes back with the worker's traceback in
    its message (torch re-raises it so), which belongs in the log, not on the terminal."""
    text = str(exc)
    if "Original Traceback" not in text:
        return exc
    said = text.rstrip().splitlines()[-1]
    return PipelineError(said.split("PipelineError: ", 1)[-1])


def _model_failure(loaded: LoadedModel, spec: datasets.DatasetSpec, images: torch.Tensor, exc: Exception) -> PipelineError:
    if isinstance(exc, torch.OutOfMemoryError):
        return PipelineError(f"out of memory on {loaded.device} encoding a batch of {len(images)} images of "
                             f"{spec.name}; lower batch_size")
    return PipelineError(f"the model failed encoding images of {spec.name} (a model error, not a data problem): "
                         f"{type(exc).__name__}: {one_line(exc)}")


def encode_batches(loaded: LoadedModel, batches: Iterator[Batch], spec: datasets.DatasetSpec, precision: str,
                   collect: Callable[[Batch], None], progress: bool = True, encode: ImageEncoder | None = None,
                   desc: str = "embed") -> StageOutput:
    """Encode the images of every batch; `collect` then gets the other fields of every sample at once, as one
    `Batch` without images, in the dataset's order.

    Features and fields are stored in the dataset's order (`Batch.order`), never in the order a loader happened to
    deliver them, so every per-sample array, and every bootstrap drawn on it, is the same whatever `batch_size`,
    `num_workers` or device read it. Only a failure to read a batch is reported as a data problem, and as damage
    only where it is a decoding error; the model's own failures (out of memory included) are reported as what
    they are. Features keep the dtype the tower produced (`with_dtype`). One progress bar counts images (and their
    rate); features go back to the CPU as each batch is done. Where the tower allows it, pre-projection features
    come from the same pass (`projection.image_encoder`), so a probe added later never encodes this split again.
    `encode` replaces the image tower (the generate stage's captions)."""
    features: dict[str, list[torch.Tensor]] = {}
    fields: dict[str, list] = {}
    places: list[int] = []
    encode = encode or image_encoder(loaded.model)
    skipped: list[Unreadable] = []
    with torch.no_grad(), loaded.autocast(precision), \
            tqdm(desc=f"{desc} {spec.name}/{spec.split}", unit="img", disable=not progress) as bar:
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except PipelineError as exc:
                raise from_worker(exc) from exc
            except Exception as exc:
                raise read_failure(spec, exc) from exc
            missing = [sample for sample in batch.unreadable if sample.missing]
            if missing or (batch.unreadable and not spec.skip_corrupt):
                raise _unreadable_sample(spec, (missing or batch.unreadable)[0])
            skipped.extend(batch.unreadable)
            if batch.images is not None:
                try:
                    images = batch.images.to(loaded.device, non_blocking=True)
                    for name, encoded in encode(images).items():
                        features.setdefault(name, []).append(encoded.cpu())
                except Exception as exc:
                    raise _model_failure(loaded, spec, batch.images, exc) from exc
                for name, values in batch.fields.items():
                    fields.setdefault(name, []).extend(values)
                places.extend(batch.order if batch.order is not None else [])
                bar.update(len(batch.images))
    if not features:
        raise PipelineError(f"dataset {spec.name} ({spec.root}, split {spec.split}) yielded no readable samples")
    stacked = {name: torch.cat(parts) for name, parts in features.items()}
    if places:  # fields are then per image, as the reader gave each image its place
        order = dataset_order(places, len(next(iter(stacked.values()))))
        stacked = {name: values[torch.as_tensor(order)] for name, values in stacked.items()}
        fields = {name: [values[i] for i in order] for name, values in fields.items()}
    collect(Batch(None, fields))
    arrays = {key: value for name, values in stacked.items() for key, value in with_dtype(name, values).items()}
    if not spec.skip_corrupt:
        return StageOutput(arrays=arrays)
    skipped.sort(key=lambda sample: (sample.shard, sample.key))
    if skipped:
        log.warning("dataset %s: skipped %d undecodable sample(s) (dataset.skip_corrupt=true), e.g. %s",
                    spec.name, len(skipped), skipped[0].describe())
    listed = np.array([f"{sample.shard}:{sample.key}" for sample in skipped], dtype=str)
    return StageOutput(arrays={**arrays, "skipped_samples": listed}, metrics={"skipped_samples": float(len(skipped))})


def dataset_order(places: list[int], count: int) -> np.ndarray:
    """The permutation that puts `count` images read in loader order into the dataset's order, by each one's place
    (readers whose loader keeps the dataset's order give none, and their images stay as read)."""
    if len(places) != count:
        raise ValueError(f"{len(places)} sample places for {count} samples")  # a reader's bug, never the data's
    return np.argsort(np.asarray(places, dtype=np.int64), kind="stable")


def pinned(loaded: LoadedModel) -> bool:
    """Page-locked batches let the copy to a GPU overlap the next batch's loading; on CPU they only cost."""
    return loaded.device.type == "cuda"


def encode_indexed(loader: ModelLoader, spec: datasets.DatasetSpec, precision: str, batch_size: int,
                   num_workers: int, read: Callable, name: str) -> StageOutput:
    """Image features with `name`: the per-image array `read` gives beside batches that carry each image's row
    (`index`), reordered to follow the images as they were read."""
    loaded = loader.get()
    rows: list[int] = []
    per_image, images = read(spec, loaded.preprocess, batch_size, num_workers, pinned(loaded))
    encoded = encode_batches(loaded, images, spec, precision, lambda batch: rows.extend(map(int, batch.fields["index"])))
    return StageOutput(arrays={**encoded.arrays, name: np.asarray(per_image)[np.array(rows, dtype=np.int64)]},
                       metrics=encoded.metrics)
