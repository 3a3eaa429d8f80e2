"""Deterministic 'coloured shapes' dataset, written in CLIP_benchmark's webdataset layout."""
from __future__ import annotations

import logging
import math
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
CLASSNAMES: list[str] = [f"{colour} {shape}" for shape in SHAPES for colour in COLOURS]
TEMPLATES: list[str] = [
    "a photo of a {c}.",
    "a drawing of a {c}.",
    "a {c} on a plain background.",
    "a picture of a {c}.",
]
IMAGE_SIZE = 32
SPLITS: dict[str, tuple[int, int]] = {"train": (60, 1), "test": (40, 2)}  # per-class count, seed


@dataclass(frozen=True)
class ShapeSample:
    image: Image.Image
    label: int


def draw_shape(label: int, rng: random.Random, size: int = IMAGE_SIZE,
               region: tuple[int, int, int] | None = None) -> Image.Image:
    """Draw one sample of class `label`: jittered colour, position and size on a noisy light background.
    `region` (left, top, side) confines the object to that square, its size scaled to the square's side."""
    shape = SHAPES[label // len(COLOURS)]
    colour = list(COLOURS.values())[label % len(COLOURS)]
    background = tuple(rng.randint(180, 245) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    for _ in range(6):  # faint distractor specks
        x, y = rng.randrange(size), rng.randrange(size)
        draw.point((x, y), fill=tuple(max(0, c - rng.randint(20, 60)) for c in background))
    fill = tuple(min(255, max(0, c + rng.randint(-25, 25))) for c in colour)
    left, top, side = region or (0, 0, size)
    radius = rng.uniform(0.22, 0.38) * side
    cx = left + rng.uniform(radius, side - radius)
    cy = top + rng.uniform(radius, side - radius)
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        pts = [(cx + radius * math.cos(a), cy + radius * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        draw.polygon(pts, fill=fill)
    else:
        arm = radius / 3
        draw.rectangle((cx - radius, cy - arm, cx + radius, cy + arm), fill=fill)
        draw.rectangle((cx - arm, cy - radius, cx + arm, cy + radius), fill=fill)
    return image


def generate(per_class: int, seed: int) -> list[ShapeSample]:
    """Samples in a fixed interleaved class order, so shards hold every class."""
    rng = random.Random(seed)
    return [
        ShapeSample(draw_shape(label, rng), label)
        for _ in range(per_class)
        for label in range(len(CLASSNAMES))
    ]


class _ConvertibleSplit(list):
    """A list of (image, label) pairs carrying the `.classes` / `.templates` that clip_benchmark's converter writes."""

    classes = CLASSNAMES
    templates = TEMPLATES


def write_shapes_webdataset(root: Path, shards_per_split: int = 2,
                            splits: dict[str, tuple[int, int]] = SPLITS) -> Path:
    """Write every split (name: (per-class count, seed)) under `root` with clip_benchmark's own webdataset converter."""
    # The converter is clip_benchmark's, so the layout is exactly the one its reader expects.
    from clip_benchmark.webdataset_builder import PIL_to_bytes, convert_dataset

    root = Path(root)
    for split, (per_class, seed) in splits.items():
        samples = generate(per_class, seed)
        pairs = _ConvertibleSplit((s.image, s.label) for s in samples)
        convert_dataset(
            pairs, split, str(root), transform=PIL_to_bytes("png"), image_format="png",
            max_count=math.ceil(len(pairs) / shards_per_split), verbose=False,
        )
    return root


def written_once(root: Path, write: Callable[[Path], Path]) -> Path:
    """`write(folder)` once, in a scratch folder renamed into place, so `root` is never half-written."""
    root = Path(root)
    if root.exists():
        return root
    log.info("writing %s", root)
    root.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        write(scratch)
        scratch.rename(root)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return root


def ensure_shapes(root: Path) -> Path:
    """The synthetic shapes webdataset, built once."""
    return written_once(root, write_shapes_webdataset)
