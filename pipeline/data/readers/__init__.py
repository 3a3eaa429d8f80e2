"""Dataset readers, one module per on-disk format; each yields `Batch`es of transformed images and their fields."""
from __future__ import annotations

import tarfile
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

# DataComp's Hugging Face cache folder beside a mirror's datasets (see hf.py): what a local root may hold instead.
HF_CACHE = "hf_cache"


@dataclass(frozen=True)
class Unreadable:
    """A sample that could not be decoded: which shard, which key, and why."""

    shard: str
    key: str
    error: str
    missing: bool = False  # decodable, but without the field the task needs (a layout problem, not damage)

    def describe(self) -> str:
        return f"shard {self.shard}, sample {self.key}"


@dataclass
class Batch:
    """Transformed images (None when every sample of the batch was unreadable), one list per field
    (`cls` labels, `txt` captions, `npy` metadata, `game` WinoGAViL games), and the unreadable samples.

    `order` gives each image its place in the dataset (a number that sorts as the dataset lists its samples) where
    the reader's batches may come in another order: a webdataset read by several DataLoader workers interleaves
    their shards batch by batch. None where batches come in the dataset's order whatever the loader settings (a
    DataLoader over an indexed dataset returns its batches in index order, with or without workers)."""

    images: torch.Tensor | None
    fields: dict[str, list[Any]]
    unreadable: list[Unreadable] = field(default_factory=list)
    order: list[int] | None = None

    def pin_memory(self) -> "Batch":
        """Called by a DataLoader with `pin_memory=True` (it pins tensors, mappings and sequences, not dataclasses)."""
        images = self.images.pin_memory() if self.images is not None else None
        return Batch(images, self.fields, self.unreadable, self.order)


# What reading a damaged file raises: PIL's errors on an image it cannot decode (UnidentifiedImageError and its
# "image file is truncated" are OSErrors), a tar or gzip stream that ends early or is not one, zlib's error on a
# damaged deflate stream; the webdataset reader reports an unreadable shard as an OSError naming it. A file that
# is missing or may not be read is an OSError too, but says nothing about the data's state.
DECODING_ERRORS = (OSError, EOFError, tarfile.TarError, zlib.error)
NOT_DECODING = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def is_decoding_error(error: BaseException) -> bool:
    """Whether `error` says the data could not be decoded (a damaged or truncated file), rather than a setting, a
    missing file or a bug in the reading itself. A DataLoader worker's error comes back as its own type."""
    return isinstance(error, DECODING_ERRORS) and not isinstance(error, NOT_DECODING)


class Named:
    """Images by name for a DataLoader, transformed, each with its row: (image, row). `open` reads one by its name
    (from a folder, a zip) and is pickled into worker processes with the dataset."""

    def __init__(self, open: Callable[[str], Any], names: list[str], transform: Callable) -> None:
        self.open, self.names, self.transform = open, names, transform

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int):
        return self.transform(self.open(self.names[index])), index
