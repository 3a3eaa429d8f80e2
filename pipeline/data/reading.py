"""What the embed stage reads: batches of transformed images with the fields each task needs (labels, captions,
WinoGAViL games, a VOC image's row), from the reader of the dataset's format (`pipeline/data/readers/`). torch and
the readers are imported here, where images are read: a job whose every stage is served never imports them."""
from __future__ import annotations

import functools
import multiprocessing
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from pipeline.data import annotated, remote
from pipeline.data.datasets import DatasetSpec, build, check_local_layout, fetched, http_cache, hub_cache
from pipeline.data.readers import Batch, Named
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.data.readers import hf


def worker_count(num_workers: int) -> int:
    if multiprocessing.current_process().name != "MainProcess":
        # Inside a launcher's worker (e.g. Hydra's joblib launcher) nested DataLoader workers fail to start.
        return 0
    # torch warns when a DataLoader asks for more workers than the CPUs this process may run on.
    return min(num_workers, usable_cpus())


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _torch_batches(dataset, batch_size: int, num_workers: int, field_name: str, collate=None,
                   pin_memory: bool = False) -> Iterator[Batch]:
    import torch

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=worker_count(num_workers),
                                         shuffle=False, collate_fn=collate, pin_memory=pin_memory)
    return (Batch(images, {field_name: list(values)}) for images, values in loader)


def _wds_batches(spec: DatasetSpec, fields: tuple[str, ...], transform: Callable, batch_size: int,
                 num_workers: int, pin_memory: bool) -> Iterator[Batch]:
    from pipeline.data.readers import wds  # webdataset and its decoder: only where images are read

    local, _ = fetched(spec, shards=True)
    check_local_layout(local)
    return wds.batches(remote.shard_paths(Path(local.root), local.split), fields, transform, batch_size,
                       worker_count(num_workers), pin_memory)


def classification_batches(spec: DatasetSpec, transform: Callable, batch_size: int, num_workers: int,
                           pin_memory: bool = False) -> Iterator[Batch]:
    """Batches with a `cls` field (and `npy` group metadata for WILDS/fairness) for a classification dataset."""
    if spec.format == "folder":
        from torchvision.datasets import ImageFolder

        check_local_layout(spec)
        folder = ImageFolder(str(Path(spec.root) / spec.split), transform=transform)
        return _torch_batches(folder, batch_size, num_workers, "cls", pin_memory=pin_memory)
    if spec.format == "tfds":
        return _torch_batches(build(spec, transform), batch_size, num_workers, "cls", pin_memory=pin_memory)
    fields = ("cls", "npy") if spec.metadata_fields else ("cls",)
    return _wds_batches(spec, fields, transform, batch_size, num_workers, pin_memory)


def retrieval_batches(spec: DatasetSpec, transform: Callable, batch_size: int, num_workers: int,
                      pin_memory: bool = False) -> Iterator[Batch]:
    """Batches with a `txt` field (the captions of each image), from a retrieval webdataset or an nlphuji dataset."""
    if spec.format == "hf":
        from clip_benchmark.datasets.builder import image_captions_collate_fn

        from pipeline.data.readers import hf

        return _torch_batches(hf.Pairs(load_hf(spec), transform), batch_size, num_workers, "txt",
                              image_captions_collate_fn, pin_memory)
    return _wds_batches(spec, ("txt",), transform, batch_size, num_workers, pin_memory)


def load_hf(spec: DatasetSpec) -> hf.Rows:
    """nlphuji's datasets as DataComp reads them (`load_dataset(id, split)`), from the Hub or a local mirror."""
    from pipeline.data.readers import hf

    if spec.root_kind == "hub_id":
        return hf.load_hub(spec.root, spec.split, spec.hf_config, hub_cache(spec))
    check_local_layout(spec)
    return hf.load_local(Path(spec.root), spec.split, repo_name=Path(spec.root).name)


def winogavil_instances(spec: DatasetSpec) -> Iterator[hf.WinoInstance]:
    """WinoGAViL games from nlphuji/winogavil: a cue, candidate images, and the associated candidates."""
    from pipeline.data.readers import hf

    return hf.winogavil_games(load_hf(spec))


def multilabel_batches(spec: DatasetSpec, transform: Callable, batch_size: int, num_workers: int,
                       pin_memory: bool = False) -> tuple[np.ndarray, Iterator[Batch]]:
    """A VOC devkit split's ground truth, (images, classes) flags, and batches of its images with each one's row
    (`index`), so the labels follow the images whatever order they are read in."""
    from pipeline.data.readers import voc

    folder = annotated.voc_folder(spec, http_cache(spec))
    truth = voc.ground_truth(folder, spec.split)
    images = Named(functools.partial(voc.open_image, folder), list(truth.ids), transform)
    return truth.labels, _torch_batches(images, batch_size, num_workers, "index", pin_memory=pin_memory)


def selection_images(spec: DatasetSpec, transform: Callable, batch_size: int, num_workers: int,
                     pin_memory: bool = False) -> tuple[list[str], Iterator[Batch]]:
    """The names of an image-caption selection dataset's images and batches of them with each one's row:
    SugarCrepe's every subset's COCO images at once (shared by the seven), Winoground's two per example."""
    if spec.format == "sugar_crepe":
        from pipeline.data.readers import sugar_crepe

        names = annotated.sugar_crepe_images(annotated.sugar_crepe_files(spec, http_cache(spec)))
        source = sugar_crepe.Images(sugar_crepe.image_location(spec.root, spec.images), http_cache(spec))
        images = Named(source.open, names, transform)
    else:
        from pipeline.data.readers import hf

        rows = load_hf(spec)
        names = [name for pair in hf.winoground_instances(rows)[1] for name in pair]
        images = hf.WinogroundImages(rows, transform)
    return names, _torch_batches(images, batch_size, num_workers, "index", pin_memory=pin_memory)


def selection_instances(spec: DatasetSpec) -> tuple[list[str], list[list[str]]]:
    """Each instance's captions, flattened (its own first: SugarCrepe's true caption, then the negative), and the
    names of its images, in the dataset's order."""
    if spec.format == "sugar_crepe":
        from pipeline.data.readers import sugar_crepe

        found = sugar_crepe.entries(annotated.sugar_crepe_files(spec, http_cache(spec))[sugar_crepe.subset_of(spec.name)])
        return [text for e in found for text in (e.caption, e.negative)], [[e.filename] for e in found]
    from pipeline.data.readers import hf

    return hf.winoground_instances(load_hf(spec))


def lines_images(spec: DatasetSpec, transform: Callable, batch_size: int, num_workers: int,
                 pin_memory: bool = False) -> tuple[list[str], Iterator[Batch]]:
    """A `lines` dataset's images that exist, by name in the index's order, with each one's row."""
    from pipeline.data.readers import lines

    index, _ = annotated.lines_files(spec, http_cache(spec))
    folder, names, present = annotated.present_images(spec, http_cache(spec), index)
    kept = [names[i] for i in present]
    return kept, _torch_batches(Named(functools.partial(lines.open_image, folder), kept, transform), batch_size,
                                num_workers, "index", pin_memory=pin_memory)


def lines_captions(spec: DatasetSpec) -> tuple[list[str], list[str]]:
    """The job language's captions of the images that exist, and each caption's image by name (the classify stage
    finds its row among the encoded images by that name)."""
    index, captions = annotated.lines_files(spec, http_cache(spec))
    _, names, kept = annotated.present_images(spec, http_cache(spec), index)
    texts = annotated.layout(spec).texts(captions, spec.language)
    if len(texts) < len(names):
        raise PipelineError(f"{captions} has {len(texts)} captions for the {len(names)} images of {index}; fetch it "
                            f"again")
    return [texts[i] for i in kept], [names[i] for i in kept]
