"""Multilingual retrieval sets with one caption per image and language (XTD-10, XTD-200, Flickr30k-200): an index
of image file names, and per language a text file whose line i captions image i, beside a folder of the images
(a tar.gz of an `images/` folder, fetched once). An image missing from the folder is left out with its captions,
as clip_benchmark's `create_annotation_file` does (it downloads with `requests` and `wget`; here the project's HTTP
reader fetches, and clip_benchmark's builders are not used: they read no local files).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pipeline.data import remote
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)
IMAGE_FOLDER = "images"


@dataclass(frozen=True)
class Layout:
    """Where a dataset's files are, relative to its root (a URL or a local folder): an index and a captions file
    per language, or (Crossmodal-3600) one JSON-lines file in a zip, a line per image: its `image/key` and per
    language its captions, of which clip_benchmark takes the first."""

    index: str                       # the image file names, one per line (or the zip of the JSON lines)
    captions: str                    # a language's captions, `{language}` in the name (or the same zip)
    by_language: Mapping[str, str]  # languages whose captions live elsewhere (XTD-10's MIC and STAIR files)
    languages: tuple[str, ...]
    member: str | None = None        # the JSON-lines file inside the zip

    @classmethod
    def from_cfg(cls, plain: Mapping[str, Any]) -> "Layout":
        offered = plain.get("languages")
        if offered == "flores":  # XTD-200 and Flickr30k-200 come in the 200 FLORES languages clip_benchmark lists
            from clip_benchmark.datasets.flores_langs import flores_languages

            offered = flores_languages
        languages = tuple(str(language) for language in offered or ())
        if plain.get("records"):
            return cls(str(plain["records"]), str(plain["records"]), {}, languages, str(plain["member"]))
        return cls(str(plain["index"]), str(plain["captions"]), dict(plain.get("by_language") or {}), languages)

    def captions_of(self, language: str) -> str:
        return self.by_language.get(language) or self.captions.format(language=language)

    def names(self, index: Path) -> list[str]:
        """The image file names, in the index's order."""
        if self.member is None:
            return read_lines(index)
        return [f"{record['image/key']}.jpg" for record in self.records(index)]

    def texts(self, captions: Path, language: str) -> list[str]:
        """The language's caption of every image of the index."""
        if self.member is None:
            return read_lines(captions)
        try:
            return [record[language]["caption"][0] for record in self.records(captions)]
        except (KeyError, IndexError, TypeError) as exc:
            raise PipelineError(f"{captions}: an image has no {language} caption ({exc!r})") from exc

    def records(self, path: Path) -> list[dict]:
        import json
        import zipfile

        try:
            with zipfile.ZipFile(path) as archive, archive.open(self.member) as lines:
                return [json.loads(line) for line in lines if line.strip()]
        except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
            raise PipelineError(f"{path} holds no {self.member} of JSON lines ({exc}); fetch it again") from exc


def text_file(root: str, name: str, cache: Path) -> Path:
    """`<root>/<name>`: a local file, or fetched once from a URL root into `cache`."""
    if is_url(root):
        return remote.http_download(root, name, remote.http_cache_folder(root, cache) / name)
    path = Path(root) / name
    if not path.is_file():
        raise PipelineError(f"{path} is missing: set dataset.root to the dataset's annotation address, or to a "
                            f"mirror holding {name}")
    return path


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def is_url(location: str | None) -> bool:
    return bool(location) and location.startswith(("http://", "https://"))


def images_folder(root: str, images: str | None, cache: Path) -> Path:
    """The images: a local dataset.images folder; for a URL root, dataset.images' tar.gz holding `images/`; for a
    local root (a mirror), `<root>/images`."""
    if is_url(images) and is_url(root):
        unpacked = remote.fetched_archive(images, cache)
        return unpacked / IMAGE_FOLDER if (unpacked / IMAGE_FOLDER).is_dir() else unpacked
    folder = Path(images) if images and not is_url(images) else Path(root) / IMAGE_FOLDER
    if not folder.is_dir():
        raise PipelineError(f"{folder} holds no images: set dataset.images to the dataset's images (a folder, or the "
                            f"URL of their tar.gz)")
    return folder


def present(names: list[str], folder: Path) -> list[int]:
    """The index lines whose image exists (clip_benchmark skips the others, warning once)."""
    kept = [i for i, name in enumerate(names) if (folder / name).is_file()]
    if len(kept) < len(names):
        log.warning("%d of %d images of %s are missing and left out with their captions", len(names) - len(kept),
                    len(names), folder)
    return kept


def open_image(folder: Path, name: str):
    """One image of the folder as RGB (`readers.Named` calls it through a partial, pickled into workers)."""
    from PIL import Image

    with Image.open(folder / name) as image:
        return image.convert("RGB")
