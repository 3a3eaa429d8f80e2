"""Datasets described by annotation files of their own rather than a webdataset's: the VOC devkit's ground truth,
SugarCrepe's JSON, the multilingual sets' caption lists. Where their files are (a URL's fetched once), and what
identifies each one's content and its images, which several datasets (SugarCrepe's subsets, a multilingual set's
languages) share. `datasets.describe` turns a description into the stages' `DatasetInfo`."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.data import languages, remote
from pipeline.data.specs import DatasetSpec

FORMATS = ("voc", "sugar_crepe", "lines")


@dataclass(frozen=True)
class Described:
    classnames: list[str]
    templates: list[str]
    content: dict[str, Any]
    images: dict[str, Any] | None = field(default=None)  # the images' own identity, where datasets share them


def describe(spec: DatasetSpec, cache: Path) -> Described:
    return {"voc": describe_voc, "sugar_crepe": describe_sugar_crepe, "lines": describe_lines}[spec.format](spec, cache)


def identity(spec: DatasetSpec, **more: Any) -> dict[str, Any]:
    return {"name": spec.name, "split": spec.split, "format": spec.format, "metadata": [], **more}


def digest(*paths: Path) -> str:
    return hashlib.sha256(b"".join(path.read_bytes() for path in paths)).hexdigest()


def names_digest(names: list[str]) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


# -- Pascal VOC 2007 -----------------------------------------------------------------------------------------------
def voc_folder(spec: DatasetSpec, cache: Path) -> Path:
    """The `VOC2007` folder of a devkit root: a local folder, or a URL of its test archive (fetched once)."""
    from pipeline.data.readers import voc

    if spec.root_kind == "http":
        return voc.year_folder(remote.fetched_archive(spec.root, cache, spec.archive_md5))
    return voc.year_folder(Path(spec.root))


def describe_voc(spec: DatasetSpec, cache: Path) -> Described:
    """A VOC devkit's 20 classes (the devkit's names, which the paper's and clip_benchmark's prompts use), keyed
    by its ground truth and image sizes, or by an archive URL and its checksum (then nothing is fetched here: a job
    whose stages are all cached never downloads the archive)."""
    from pipeline.data.readers import voc

    if spec.root_kind == "http" and spec.archive_md5:
        found = {"root": spec.root, "md5": spec.archive_md5}
    else:
        folder = voc_folder(spec, cache)
        found = {"content": voc.content_digest(folder, voc.ground_truth(folder, spec.split), spec.split)}
    # its templates (prompts=dataset) are clip_benchmark's for voc2007_multilabel, as the paper's: "a photo of a {c}."
    shipped = languages.shipped("en_zeroshot_classification_templates.json").get(spec.name, [])
    return Described(list(voc.CLASSES), list(shipped), identity(spec, **found))


# -- SugarCrepe -------------------------------------------------------------------------------------------------
def sugar_crepe_files(spec: DatasetSpec, cache: Path) -> dict[str, Path]:
    """Every subset's annotation file (the image stage encodes the images of all seven once)."""
    from pipeline.data.readers import sugar_crepe

    sugar_crepe.subset_of(spec.name)
    return {subset: sugar_crepe.annotation_file(spec.root, subset, cache) for subset in sugar_crepe.SUBSETS}


def sugar_crepe_images(files: dict[str, Path]) -> list[str]:
    """The COCO images of every subset, by file name, sorted: the one image stage of the seven."""
    from pipeline.data.readers import sugar_crepe

    return sorted({entry.filename for path in files.values() for entry in sugar_crepe.entries(path)})


def describe_sugar_crepe(spec: DatasetSpec, cache: Path) -> Described:
    """A subset keyed by its annotation file; its images by every subset's file names and where COCO's are."""
    from pipeline.data.readers import sugar_crepe

    files = sugar_crepe_files(spec, cache)
    subset = sugar_crepe.subset_of(spec.name)
    location = sugar_crepe.image_location(spec.root, spec.images)
    local = Path(location)
    where = {"images": location} if location.startswith(("http://", "https://")) else \
        {"images": str(local.resolve()), "size": local.stat().st_size if local.is_file() else None}
    images = {"images_of": "sugar_crepe", **where, "names": names_digest(sugar_crepe_images(files))}
    return Described([], [], identity(spec, content=digest(files[subset])), images)


# -- multilingual caption lists ----------------------------------------------------------------------------------
def layout(spec: DatasetSpec):
    """Where a `lines` dataset's index and captions are (`readers.lines.Layout`)."""
    from pipeline.data.readers import lines

    return lines.Layout.from_cfg(spec.lines or {})


def own_languages(spec: DatasetSpec) -> tuple[str, ...] | None:
    """The languages a multilingual dataset comes in (its captions'); None for the others."""
    return layout(spec).languages if spec.format == "lines" else None


def lines_files(spec: DatasetSpec, cache: Path) -> tuple[Path, Path]:
    """The image index and the job language's captions of a `lines` dataset (fetched once from a URL root)."""
    from pipeline.data.readers import lines

    found = layout(spec)
    return (lines.text_file(spec.root, found.index, cache),
            lines.text_file(spec.root, found.captions_of(spec.language), cache))


def present_images(spec: DatasetSpec, cache: Path, index: Path) -> tuple[Path, list[str], list[int]]:
    """A `lines` dataset's images folder, the index's image names, and the rows of those the folder holds."""
    from pipeline.data.readers import lines

    folder = lines.images_folder(spec.root, spec.images, cache)
    names = layout(spec).names(index)
    return folder, names, lines.present(names, folder)


def describe_lines(spec: DatasetSpec, cache: Path) -> Described:
    """Keyed by the language's captions and the index; the images by the index and where they are, so every
    language of the dataset shares one image stage."""
    index, captions = lines_files(spec, cache)
    content = identity(spec, language=spec.language, content=digest(index, captions))
    images = {"images_of": spec.name, "index": digest(index)}
    if spec.root_kind == "http":  # the archive at this address, unpacked once and never changed
        images["images"] = spec.images
    else:  # a mirror: which of the index's images it holds is part of what the image stage encodes
        folder, names, kept = present_images(spec, cache, index)
        images.update(images=str(folder.resolve()), present=names_digest([names[i] for i in kept]))
    return Described([], [], content, images)
