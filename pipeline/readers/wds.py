"""Tar shards in CLIP_benchmark's webdataset layout, read with webdataset from local files only.

It decodes as clip_benchmark's `build_wds_dataset` does (webdataset's PIL image handler, the first of webp, png,
jpg, jpeg, then `cls`, `txt` or `npy`), but per sample: an undecodable sample travels on as an `Unreadable` that
names its shard and key, so the caller can fail with one clear line or skip it, even from a DataLoader worker.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from pipeline.readers import Batch, Unreadable

IMAGE_EXTENSIONS = ["webp", "png", "jpg", "jpeg"]
FIELD_VALUES: dict[str, Callable[[Any], Any]] = {
    "cls": int,
    "txt": str.splitlines,   # retrieval: one caption per line
    "npy": lambda value: np.asarray(value, dtype=np.int64).reshape(-1),  # WILDS/fairness group metadata
}


def shard_paths(folder: Path, split: str) -> list[Path]:
    nshards = int((folder / split / "nshards.txt").read_text().strip())
    return [folder / split / f"{index}.tar" for index in range(nshards)]


def _decoder():
    import webdataset as wds

    return wds.autodecode.Decoder([wds.autodecode.ImageHandler("pil", extensions=IMAGE_EXTENSIONS)])


def read_sample(sample: dict, fields: tuple[str, ...], transform: Callable, decoder) -> tuple:
    """(image, field values, None) for a good sample; (None, None, Unreadable) for one that cannot be decoded."""
    key, shard = str(sample.get("__key__")), Path(str(sample.get("__url__", "?"))).name
    try:
        decoded = decoder(sample)
        extension = next((e for e in IMAGE_EXTENSIONS if e in decoded), None)
        if extension is None:
            raise ValueError(f"no image ({', '.join(IMAGE_EXTENSIONS)}) in the sample")
        missing = [f for f in fields if f not in decoded]
        if missing:
            raise ValueError(f"no {', '.join(missing)} in the sample")
        return transform(decoded[extension]), tuple(FIELD_VALUES[f](decoded[f]) for f in fields), None
    except Exception as exc:  # whatever a damaged image raises (PIL, zlib, a truncated tar member, the transform)
        return None, None, Unreadable(shard, key, f"{type(exc).__name__}: {exc}".strip())


def collate(samples: list[tuple], fields: tuple[str, ...]) -> Batch:
    good = [s for s in samples if s[2] is None]
    images = torch.stack([s[0] for s in good]) if good else None
    columns = {name: [s[1][i] for s in good] for i, name in enumerate(fields)}
    return Batch(images, columns, [s[2] for s in samples if s[2] is not None])


def batches(shards: list[Path], fields: tuple[str, ...], transform: Callable, batch_size: int,
            num_workers: int) -> Iterator[Batch]:
    import webdataset as wds

    local = [str(path) for path in shards]  # local files only: no URL handler (pipe:, gs:, http:) can run
    samples = (wds.WebDataset(local, shardshuffle=False, nodesplitter=lambda src: src, empty_check=False)
               .map(partial(read_sample, fields=fields, transform=transform, decoder=_decoder()))
               .batched(batch_size, collation_fn=partial(collate, fields=fields)))
    workers = min(num_workers, len(local))
    return iter(torch.utils.data.DataLoader(samples, batch_size=None, num_workers=workers))
