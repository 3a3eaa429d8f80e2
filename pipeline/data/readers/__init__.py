"""Dataset readers, one module per on-disk format; each yields `Batch`es of transformed images and their fields."""
from __future__ import annotations

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
    (`cls` labels, `txt` captions, `npy` metadata, `game` WinoGAViL games), and the unreadable samples."""

    images: torch.Tensor | None
    fields: dict[str, list[Any]]
    unreadable: list[Unreadable] = field(default_factory=list)

    def pin_memory(self) -> "Batch":
        """Called by a DataLoader with `pin_memory=True` (it pins tensors, mappings and sequences, not dataclasses)."""
        images = self.images.pin_memory() if self.images is not None else None
        return Batch(images, self.fields, self.unreadable)


class Named:
    """Images by name for a DataLoader, transformed, each with its row: (image, row). `open` reads one by its name
    (from a folder, a zip) and is pickled into worker processes with the dataset."""

    def __init__(self, open: Callable[[str], Any], names: list[str], transform: Callable) -> None:
        self.open, self.names, self.transform = open, names, transform

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int):
        return self.transform(self.open(self.names[index])), index
