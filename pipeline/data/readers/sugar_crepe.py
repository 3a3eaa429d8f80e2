"""SugarCrepe (RAIVNLab/sugar-crepe): seven subsets of (COCO val2017 image, true caption, hard negative) entries,
one annotation file per subset, `<subset>.json` = {"<index>": {"filename", "caption", "negative_caption"}}.

A root is a folder in clip_benchmark's layout (`<subset>.json` beside `val2017/`), or the URL of the annotation
folder (SugarCrepe's GitHub data folder), fetched once with the project's HTTP reader; the images come from a
`val2017/` folder or from COCO's `val2017.zip`, read member by member without unpacking it (clip_benchmark fetches
both with `wget` and `unzip` through a shell).
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.data import remote
from pipeline.errors import PipelineError, one_line

SUBSETS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
ANNOTATIONS = "https://raw.githubusercontent.com/RAIVNLab/sugar-crepe/main/data"
COCO_VAL2017 = "http://images.cocodataset.org/zips/val2017.zip"
IMAGE_FOLDER = "val2017"


@dataclass(frozen=True)
class Entry:
    filename: str
    caption: str
    negative: str


def subset_of(name: str) -> str:
    """`sugar_crepe/add_att` -> `add_att`, refusing a name that is not one of the seven."""
    subset = name.rsplit("/", 1)[-1]
    if subset not in SUBSETS:
        raise PipelineError(f"dataset {name}: SugarCrepe has no subset {subset!r}; use one of {', '.join(SUBSETS)}")
    return subset


def annotation_file(root: str, subset: str, cache: Path) -> Path:
    """`<subset>.json` of a local folder, or fetched once from a URL root into `cache`."""
    if root.startswith(("http://", "https://")):
        return remote.http_download(root, f"{subset}.json", remote.http_cache_folder(root, cache) / f"{subset}.json")
    path = Path(root) / f"{subset}.json"
    if not path.is_file():
        raise PipelineError(f"{path} is missing: SugarCrepe's annotations are {ANNOTATIONS}/{subset}.json; put them "
                            f"beside val2017/ (clip_benchmark's layout), or set dataset.root to that URL")
    return path


def entries(path: Path) -> list[Entry]:
    """A subset's entries in the file's order (clip_benchmark's: the keys as JSON lists them)."""
    try:
        annotations = json.loads(path.read_text())
        return [Entry(str(a["filename"]), str(a["caption"]), str(a["negative_caption"])) for a in annotations.values()]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        why = f"an entry lacks {exc}" if isinstance(exc, KeyError) else one_line(exc)
        raise PipelineError(f"{path} is not a SugarCrepe annotation file ({why}); expected "
                            f'{{"<index>": {{"filename", "caption", "negative_caption"}}}}') from exc


class Images:
    """COCO images by file name, from a `val2017/` folder or from `val2017.zip` (local, or fetched once)."""

    def __init__(self, location: str, cache: Path) -> None:
        if location.startswith(("http://", "https://")):
            base, name = location.rsplit("/", 1)
            location = str(remote.http_download(base, name, remote.http_cache_folder(location, cache) / name))
        self.location = Path(location)
        if not (self.location.is_dir() or zipfile.is_zipfile(self.location)):
            raise PipelineError(f"{self.location} holds no COCO val2017 images: give a val2017/ folder or "
                                f"val2017.zip ({COCO_VAL2017}) as dataset.images")
        self._zip: zipfile.ZipFile | None = None

    def identity(self) -> dict:
        stat = self.location.stat()
        return {"images": str(self.location), "size": stat.st_size if self.location.is_file() else None}

    def open(self, filename: str):
        from PIL import Image

        try:
            if self.location.is_dir():
                return Image.open(self.location / filename).convert("RGB")
            if self._zip is None:  # opened in the process that reads (DataLoader workers each open their own)
                self._zip = zipfile.ZipFile(self.location)
            with self._zip.open(f"{IMAGE_FOLDER}/{filename}") as member:
                return Image.open(member).convert("RGB")
        except (OSError, KeyError) as exc:
            raise PipelineError(f"COCO image {filename} cannot be read from {self.location} ({one_line(exc)}); "
                                f"fetch val2017 again") from exc

    def __getstate__(self) -> dict:  # a ZipFile does not cross into worker processes
        return {**self.__dict__, "_zip": None}


def image_location(root: str, images: str | None) -> str:
    """dataset.images, else COCO's zip for a URL root, else `val2017/` beside a local root's annotations."""
    if images:
        return images
    return COCO_VAL2017 if root.startswith(("http://", "https://")) else str(Path(root) / IMAGE_FOLDER)
