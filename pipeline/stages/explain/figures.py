"""Pictures of relevance maps: each map over its image (as Chefer et al.'s CLIP notebook draws it: the map
upsampled bilinearly, scaled to [0, 1], coloured with `jet` and added to the image), and the blog's grid of
images × models for one caption."""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

# Small images (the bundled model sees 32×32) are enlarged for people; maps are still computed at the model's size.
MIN_SIDE = 224


def display_size(image: np.ndarray) -> tuple[int, int]:
    height, width = image.shape[:2]
    factor = max(1, -(-MIN_SIDE // min(height, width)))
    return height * factor, width * factor


def scaled(relevance: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A patch-grid map upsampled bilinearly to `size` and scaled to [0, 1] (all zeros for a flat map)."""
    grid = torch.from_numpy(np.asarray(relevance, dtype=np.float32))[None, None]
    upsampled = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()
    low, high = float(upsampled.min()), float(upsampled.max())
    return (upsampled - low) / (high - low) if high > low else np.zeros_like(upsampled)


def overlay(image: np.ndarray, relevance: np.ndarray) -> np.ndarray:
    """`image` (H, W, 3) uint8 with `relevance` drawn over it, as uint8 at `display_size`."""
    size = display_size(image)
    picture = np.asarray(Image.fromarray(image).resize(size[::-1], Image.NEAREST), dtype=np.float32) / 255
    heat = matplotlib.colormaps["jet"](scaled(relevance, size))[..., :3]
    blended = heat + picture
    return (255 * blended / blended.max()).astype(np.uint8)


def png(picture: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


def slug(text: str, limit: int = 48) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:limit] or "x"


def pair_files(arrays: Mapping[str, np.ndarray]) -> dict[str, bytes]:
    """Each pair's map as `maps/<image>__<caption>.npy` (the patch grid) and `overlays/<image>__<caption>.png`."""
    files: dict[str, bytes] = {}
    for pair, (image, caption) in enumerate(zip(arrays["pair_image"], arrays["pair_caption"])):
        stem = f"{pair:03d}_{slug(str(arrays['image_names'][image]))}__{slug(str(arrays['captions'][caption]))}"
        buffer = io.BytesIO()
        np.save(buffer, arrays["relevance"][pair], allow_pickle=False)
        files[f"maps/{stem}.npy"] = buffer.getvalue()
        files[f"overlays/{stem}.png"] = png(overlay(arrays["images"][image], arrays["relevance"][pair]))
    return files


@dataclass(frozen=True)
class Column:
    """One model's maps in a grid: its label and its explain stage's arrays."""

    label: str
    arrays: Mapping[str, np.ndarray]

    def map_for(self, image_name: str, caption: str) -> tuple[np.ndarray, np.ndarray] | None:
        names, captions = [str(n) for n in self.arrays["image_names"]], [str(c) for c in self.arrays["captions"]]
        if image_name not in names or caption not in captions:
            return None
        image, wanted = names.index(image_name), captions.index(caption)
        for pair, (i, c) in enumerate(zip(self.arrays["pair_image"], self.arrays["pair_caption"])):
            if i == image and c == wanted:
                return self.arrays["images"][image], self.arrays["relevance"][pair]
        return None


def grid(columns: Sequence[Column], rows: Sequence[tuple[str, str]], title: str) -> bytes:
    """The blog's figure: one row per (image, caption), the image then each model's map over it, as PNG."""
    fig, axes = plt.subplots(len(rows), len(columns) + 1, squeeze=False,
                             figsize=(1.9 * (len(columns) + 1) + 0.6, 1.9 * len(rows) + 0.8))
    for row, (image_name, caption) in enumerate(rows):
        found = [column.map_for(image_name, caption) for column in columns]
        original = next(hit[0] for hit in found if hit is not None)
        axes[row, 0].imshow(original, interpolation="nearest")
        axes[row, 0].set_ylabel(f"{image_name}\n“{caption}”" if len({c for _, c in rows}) > 1 else image_name,
                                fontsize=7)
        for col, hit in enumerate(found, start=1):
            if hit is not None:
                axes[row, col].imshow(overlay(*hit))
            else:
                axes[row, col].text(0.5, 0.5, "not explained", ha="center", va="center", fontsize=7)
        if row == 0:
            axes[0, 0].set_title("image", fontsize=8)
            for col, column in enumerate(columns, start=1):
                axes[0, col].set_title(column.label, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
