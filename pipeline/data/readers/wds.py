"""Tar shards in CLIP_benchmark's webdataset layout, read with webdataset from local files only.

It decodes as clip_benchmark's `build_wds_dataset` does (webdataset's PIL image handler, the first of webp, png,
jpg, jpeg, then `cls`, `txt` or `npy`), but per sample: an undecodable sample travels on as an `Unreadable` that
names its shard and key, so the caller can fail with one clear line or skip it, even from a DataLoader worker.
Each sample carries its place in the dataset (`Batch.order`): DataLoader workers each read their own shards and
their batches arrive interleaved, so the embed stage puts them back in the dataset's order.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from pipeline.data.readers import Batch, Unreadable

IMAGE_EXTENSIONS = ["webp", "png", "jpg", "jpeg"]
FIELD_VALUES: dict[str, Callable[[Any], Any]] = {
    "cls": int,
    "txt": str.splitlines,   # retrieval: one caption per line
    "npy": lambda value: np.asarray(value, dtype=np.int64).reshape(-1),  # WILDS/fairness group metadata
}


def _decoder():
    import webdataset as wds

    return wds.autodecode.Decoder([wds.autodecode.ImageHandler("pil", extensions=IMAGE_EXTENSIONS)])


ORDER = "__order__"   # a sample's place in the dataset, added to the sample as it is read
SHARD_STRIDE = 1 << 40  # shard index * SHARD_STRIDE + position in the shard: sorts as the dataset lists its samples


def numbered(samples: Iterator[dict], shards: dict[str, int]) -> Iterator[dict]:
    """Each sample with its place in the dataset: its shard's index among the split's shards, then its position in
    that shard. A worker reads whole shards (`split_by_worker`), so the positions it counts are the shard's own."""
    seen: dict[str, int] = {}
    for sample in samples:
        url = str(sample.get("__url__"))
        position = seen.get(url, 0)
        seen[url] = position + 1
        yield {**sample, ORDER: shards[url] * SHARD_STRIDE + position}


def read_sample(sample: dict, fields: tuple[str, ...], transform: Callable, decoder) -> tuple:
    """(image, field values, None, place) for a good sample; (None, None, Unreadable, place) for one that cannot be
    decoded."""
    key, shard, place = str(sample.get("__key__")), Path(str(sample.get("__url__", "?"))).name, sample.get(ORDER, 0)
    try:
        decoded = decoder(sample)
        extension = next((e for e in IMAGE_EXTENSIONS if e in decoded), None)
        if extension is None:
            return None, None, Unreadable(shard, key, f"it has no image ({', '.join(IMAGE_EXTENSIONS)})",
                                          missing=True), place
    except Exception as exc:  # whatever a damaged image raises (PIL, zlib, a truncated tar member)
        cause = exc.__cause__ or exc  # webdataset's DecodingError carries no message of its own
        return None, None, Unreadable(shard, key, f"{type(cause).__name__}: {cause}".strip()), place
    missing = [f for f in fields if f not in decoded]
    if missing:
        return None, None, Unreadable(shard, key, f"it has no {', '.join(missing)} field", missing=True), place
    return transform(decoded[extension]), tuple(FIELD_VALUES[f](decoded[f]) for f in fields), None, place


def collate(samples: list[tuple], fields: tuple[str, ...]) -> Batch:
    import torch

    good = [s for s in samples if s[2] is None]
    images = torch.stack([s[0] for s in good]) if good else None
    columns = {name: [s[1][i] for s in good] for i, name in enumerate(fields)}
    return Batch(images, columns, [s[2] for s in samples if s[2] is not None], [int(s[3]) for s in good])


def open_local(sources: Iterator[dict]) -> Iterator[dict]:
    """Open each shard with plain `open()`. webdataset's own opener parses the name as a URL (a `;` or `#` in a
    folder name would cut it, `pipe:` would start a shell, GOPEN_REWRITE may rewrite it); a local file needs none."""
    for source in sources:
        with open(source["url"], "rb") as stream:
            check_end_of_archive(stream, source["url"])
            yield {**source, "stream": stream}


TAR_END = 1024  # a tar archive ends with two 512-byte blocks of zeros


def check_end_of_archive(stream, url: str) -> None:
    """A shard cut at a member boundary reads as a shorter, valid tar and would silently lose samples; its
    missing end-of-archive marker gives it away."""
    stream.seek(0, 2)
    size = stream.tell()
    stream.seek(max(0, size - TAR_END))
    tail = stream.read(TAR_END)
    stream.seek(0)
    if size < TAR_END or tail.count(0) != len(tail):
        raise OSError(f"shard {Path(url).name} is truncated (no tar end-of-archive marker)")


def shard_failure(exc: Exception) -> bool:
    """webdataset's handler for a shard that is not a readable tar: name the shard (its URL is the last arg)."""
    shard = Path(str(exc.args[-1])).name if exc.args else "?"
    raise OSError(f"shard {shard} is not a readable tar file ({type(exc).__name__}: {exc.args[0] if exc.args else ''})")


def batches(shards: list[Path], fields: tuple[str, ...], transform: Callable, batch_size: int,
            num_workers: int, pin_memory: bool = False) -> Iterator[Batch]:
    """The samples of `shards` (split across DataLoader workers by shard, as clip_benchmark's WebDataset does),
    decoded one by one, in batches, each sample with its place in the dataset (`Batch.order`): with several
    workers the batches arrive interleaved, worker by worker."""
    import torch
    import webdataset as wds
    from webdataset import tariterators

    local = [str(path.resolve()) for path in shards]
    samples = wds.DataPipeline(
        wds.SimpleShardList(local),
        wds.split_by_worker,
        open_local,
        partial(tariterators.tar_file_expander, handler=shard_failure),
        partial(tariterators.group_by_keys, handler=shard_failure),
        partial(numbered, shards={url: index for index, url in enumerate(local)}),
        wds.map(partial(read_sample, fields=fields, transform=transform, decoder=_decoder())),
        wds.batched(batch_size, collation_fn=partial(collate, fields=fields)),
    )
    workers = min(num_workers, len(local))
    return iter(torch.utils.data.DataLoader(samples, batch_size=None, num_workers=workers, pin_memory=pin_memory))
