"""What the benchmarks run on: a randomly initialised open_clip checkpoint and synthetic webdatasets, written once
into a scratch folder in the layouts the real ones have (no weights or datasets can be downloaded here)."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image

from pipeline.offline.shapes import write_shapes_webdataset


@contextlib.contextmanager
def quietly():
    """clip_benchmark's converter prints every shard and warns about its 8 workers: none of it is a figure."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)  # open_clip warns that a model without weights is randomly initialised
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def random_checkpoint(path: Path, arch: str = "ViT-B-32", seed: int = 0) -> Path:
    """A real-size checkpoint of `arch` with open_clip's own random initialisation (a state dict, as open_clip saves)."""
    if not path.exists():
        torch.manual_seed(seed)
        with quietly():
            model = open_clip.create_model(arch, pretrained=None)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return path


def shapes(root: Path, images: int, seed: int, shards: int = 2) -> Path:
    """The coloured-shapes test split (12 classes) with about `images` samples."""
    with quietly():
        return write_shapes_webdataset(root, shards_per_split=shards, splits={"test": (math.ceil(images / 12), seed)})


class _Split(list):
    """(image, label) pairs with the `.classes`/`.templates` clip_benchmark's converter writes beside the shards."""

    classes: list[str] = []
    templates: list[str] = ["a photo of a {c}."]


def imagenet_classnames(count: int) -> list[str]:
    """The first `count` of clip_benchmark's ImageNet class names: realistic prompt lengths for the text tower."""
    names = json.loads(resources.files("clip_benchmark.datasets").joinpath("en_classnames.json").read_text())
    return names["imagenet1k"][:count]


def smooth_image(rng: np.random.Generator, size: int) -> Image.Image:
    """Upscaled coarse noise: photo-like in what it costs to decode and resize, unlike pure noise."""
    coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    return coarse.resize((size, size), Image.BILINEAR)


def named_classes(root: Path, classnames: list[str], per_class: int, seed: int, size: int = 64) -> Path:
    """A JPEG webdataset under real class names (only the encoders' and the reader's cost matter here)."""
    from clip_benchmark.webdataset_builder import PIL_to_bytes, convert_dataset

    rng = np.random.default_rng(seed)
    split = _Split()
    split.classes = list(classnames)
    for _ in range(per_class):
        split.extend((smooth_image(rng, size), label) for label in range(len(classnames)))
    with quietly():
        convert_dataset(split, "test", str(root), transform=PIL_to_bytes("jpg"), image_format="jpg",
                        max_count=math.ceil(len(split) / 2), verbose=False)
    return root
