"""Pascal VOC 2007 as its devkit lays it out, for the multi-label task the CLIP paper scores: `JPEGImages/<id>.jpg`
and, per class, `ImageSets/Main/<class>_<split>.txt` with one `<id> <1|-1|0>` line per image (present, absent,
only difficult objects of the class): the ground truth the devkit's own classification evaluation reads.

clip_benchmark's `voc2007_multilabel` builds its labels from the detection boxes instead (every box present,
difficult or not) and downloads through torchvision; here the devkit's files are read, from a local folder or from
the test archive fetched once over HTTP and unpacked (`remote.fetched_archive`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError, one_line

YEAR = "VOC2007"
# The devkit's class order (VOCinit.m), the columns of the ground truth and of the zero-shot classifier.
CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
           "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
FLAGS = {"1": 1, "-1": -1, "0": 0}  # metrics.PRESENT, ABSENT, DIFFICULT
WHERE = ("the test archive VOCtest_06-Nov-2007.tar (http://host.robots.ox.ac.uk/pascal/VOC/voc2007/, or any mirror "
         "of it): unpack it under dataset.root, or set dataset.root to its URL")


@dataclass(frozen=True)
class GroundTruth:
    """The images of a split, in the devkit's order, and their (images, classes) flags: 1, -1 or 0."""

    ids: tuple[str, ...]
    labels: np.ndarray


def year_folder(root: Path) -> Path:
    """The `VOC2007` folder under `root` (the folder holding `VOCdevkit/`, `VOCdevkit/` itself, or `VOC2007/`)."""
    for candidate in (root / "VOCdevkit" / YEAR, root / YEAR, root):
        if (candidate / "ImageSets" / "Main").is_dir():
            return candidate
    raise PipelineError(f"{root} holds no Pascal VOC devkit ({YEAR}/ImageSets/Main is missing); get {WHERE}")


def ground_truth(folder: Path, split: str) -> GroundTruth:
    """Each class's `<class>_<split>.txt`; every class file must list the same images (the first one's order)."""
    ids: tuple[str, ...] = ()
    columns = []
    for name in CLASSES:
        path = folder / "ImageSets" / "Main" / f"{name}_{split}.txt"
        if not path.is_file():
            raise PipelineError(f"{path} is missing: the VOC devkit has no ground truth of class {name} for split "
                                f"{split!r}; get {WHERE}")
        flags = dict(_flag_lines(path))
        if not ids:
            ids = tuple(flags)
        if set(flags) != set(ids):
            raise PipelineError(f"{path} lists other images than {CLASSES[0]}_{split}.txt; the devkit is incomplete "
                                f"or mixed: unpack it again")
        columns.append([flags[image] for image in ids])
    if not ids:
        raise PipelineError(f"{folder}: split {split!r} lists no images")
    return GroundTruth(ids, np.array(columns, dtype=np.int8).T)


def _flag_lines(path: Path):
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in FLAGS:
            raise PipelineError(f"{path}:{number}: expected `<image id> <1|-1|0>`, found {line.strip()[:60]!r}")
        yield parts[0], FLAGS[parts[1]]


def content_digest(folder: Path, truth: GroundTruth, split: str) -> str:
    """The split's ground-truth files, in full, and its images' names and sizes: cheap, and enough to tell copies
    apart (hashing 4,952 images on every job would cost more than it protects)."""
    digest = hashlib.sha256()
    for name in CLASSES:
        digest.update((folder / "ImageSets" / "Main" / f"{name}_{split}.txt").read_bytes())
    for image in truth.ids:
        path = image_path(folder, image)
        digest.update(f"{image}:{path.stat().st_size if path.is_file() else -1};".encode())
    return digest.hexdigest()


def image_path(folder: Path, image: str) -> Path:
    return folder / "JPEGImages" / f"{image}.jpg"


def open_image(folder: Path, image: str):
    """One image of the devkit by its id, as RGB (`readers.Named` calls it through a partial, pickled into workers)."""
    from PIL import Image

    path = image_path(folder, image)
    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    except OSError as exc:
        raise PipelineError(f"image {path} cannot be read ({one_line(exc)}); unpack {WHERE.split(':')[0]} again") from exc
