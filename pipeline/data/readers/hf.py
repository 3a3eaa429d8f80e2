"""nlphuji's Hugging Face datasets (Flickr, MSCOCO, WinoGAViL) without dataset scripts.

Current `datasets` releases refuse loading scripts, and nlphuji/winogavil is script-based and gated, so rows come
from parquet files: the conversion the Hub publishes (`refs/convert/parquet`), fetched with `huggingface_hub`, or a
local mirror in one of three layouts: a `save_to_disk` folder, a folder of parquet files, or DataComp's `hf_cache`
(what `load_dataset(..., cache_dir=<data_dir>/hf_cache)` wrote with datasets 2.8; its image paths point into the
machine it was written on and are re-rooted here). Rows are read raw from Arrow, so images decode only when used.
"""
from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from pipeline.data.readers import HF_CACHE
from pipeline.data.remote import hub_error
from pipeline.errors import PipelineError, one_line

log = logging.getLogger(__name__)

PARQUET_BRANCH = "refs/convert/parquet"
DATA_FILE_PATTERNS = ["*.parquet"]


@dataclass(frozen=True)
class Rows:
    """A dataset's rows as plain Python values (images as {"bytes", "path"}), and where relative image paths live."""

    table: Any  # pyarrow.Table
    image_root: Path | None = None

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, index: int) -> dict:
        return self.table.slice(index, 1).to_pylist()[0]

    def column(self, name: str) -> list:
        return self.table.column(name).to_pylist()


def _arrow_table(dataset) -> Any:
    return dataset.with_format("arrow")[:]  # every row, undecoded


def _from_parquet(files: Sequence[Path]) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.concat_tables([pq.read_table(str(path)) for path in sorted(files)], promote_options="default")


def split_files(folder: Path, split: str, suffix: str) -> list[Path]:
    """Data files of `split` below `folder`: `<split>/*`, `*<split>-00000-of-00001*` or `*-<split>.*` names."""
    pattern = re.compile(rf"(^|[/_.-]){re.escape(split)}([/_.-]|$)")
    return sorted(p for p in folder.rglob(f"*{suffix}") if pattern.search(str(p.relative_to(folder))))


# -- local mirrors ------------------------------------------------------------------------------------------
def _hf_cache_arrow_files(hf_cache: Path, repo_name: str, split: str) -> list[Path]:
    """datasets 2.8's cache: <hf_cache>/<org>___<name>/<config>/<version>/<hash>/<name>-<split>[-NNNNN-of-NNNNN].arrow
    (or a `parquet/<org>--<name>-<hash>/...` folder for script-less repositories)."""
    owned = [p for p in hf_cache.rglob("*.arrow")
             if "downloads" not in p.relative_to(hf_cache).parts
             and not any(part.endswith(".incomplete") for part in p.relative_to(hf_cache).parts)
             and any(repo_name in part for part in p.relative_to(hf_cache).parts[:-1])]
    files = [p for p in owned if re.search(rf"-{re.escape(split)}(-\d{{5}}-of-\d{{5}})?\.arrow$", p.name)]
    folders = sorted({p.parent for p in files})
    if len(folders) > 1:
        raise PipelineError(f"{hf_cache} holds {repo_name}'s {split!r} split in several versions "
                            f"({', '.join(str(f.relative_to(hf_cache)) for f in folders)}); remove all but one")
    return files


def load_local(root: Path, split: str, repo_name: str) -> Rows:
    """A local mirror: save_to_disk folder, parquet folder, or DataComp's hf_cache (beside the named folder)."""
    import datasets as hf

    if (root / "dataset_dict.json").exists() or (root / "state.json").exists():
        loaded = hf.load_from_disk(str(root))
        if isinstance(loaded, hf.DatasetDict):
            if split not in loaded:
                raise PipelineError(f"{root} has no split {split!r} (it has {', '.join(loaded)})")
            loaded = loaded[split]
        return Rows(_arrow_table(loaded), root)
    if root.is_dir() and (parquet := split_files(root, split, ".parquet")):
        return Rows(_from_parquet(parquet), root)
    for hf_cache in (root, root.parent / HF_CACHE):
        if hf_cache.is_dir() and (arrow := _hf_cache_arrow_files(hf_cache, repo_name, split)):
            import pyarrow as pa

            tables = [hf.Dataset.from_file(str(path)).data.table for path in sorted(arrow)]
            return Rows(pa.concat_tables(tables), hf_cache)
    raise PipelineError(f"no {split!r} split of {repo_name} under {root}: expected a save_to_disk folder, parquet "
                        f"files, or DataComp's {HF_CACHE} folder beside it")


# -- the Hub --------------------------------------------------------------------------------------------------
def hub_commit(repo_id: str, cache_dir: str | None) -> str:
    """The commit the parquet conversion resolves to (so a moved branch is new content): asked of the Hub, or,
    offline, read from the Hub cache's `refs/` entry."""
    from huggingface_hub import HfApi, constants, errors

    try:
        return str(HfApi(endpoint=constants.ENDPOINT).dataset_info(repo_id, revision=PARQUET_BRANCH).sha)
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError) as exc:
        raise hub_error(repo_id, constants.ENDPOINT, exc) from exc
    except Exception as exc:  # offline, or the Hub out of reach: the cache knows the last commit seen
        ref = (Path(cache_dir or constants.HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}" / "refs"
               / PARQUET_BRANCH)
        if ref.is_file():
            return ref.read_text().strip()
        raise PipelineError(f"dataset {repo_id} cannot be reached on {constants.ENDPOINT} and is not in the local "
                            f"cache ({one_line(exc)}); run once online, or point data_root at a local mirror") from exc


def load_hub(repo_id: str, split: str, config: str | None, cache_dir: str | None) -> Rows:
    """The Hub's parquet conversion of `repo_id`; the repository's own data files where that lacks the split."""
    from huggingface_hub import constants, errors, snapshot_download

    endpoint = constants.ENDPOINT
    folder = config or "*"
    try:
        snapshot = Path(snapshot_download(repo_id, repo_type="dataset", revision=PARQUET_BRANCH, cache_dir=cache_dir,
                                          endpoint=endpoint, allow_patterns=[f"{folder}/{split}/*.parquet", f"{folder}/*{split}*.parquet"]))
        files = [p for p in split_files(snapshot / config if config else snapshot, split, ".parquet")
                 if "partial" not in p.parent.name]  # partial-<split>: a truncated conversion
        configs = sorted({p.relative_to(snapshot).parts[0] for p in files})
        if len(configs) > 1:
            raise PipelineError(f"dataset {repo_id} has several configs ({', '.join(configs)}); choose one with "
                                f"dataset.hf_config=NAME")
    except errors.RevisionNotFoundError:
        files = []
    except PipelineError:
        raise
    except Exception as exc:
        raise hub_error(repo_id, endpoint, exc) or PipelineError(f"cannot read {repo_id} from {endpoint}: "
                                                                 f"{one_line(exc)}") from exc
    if files:
        return Rows(_from_parquet(files), snapshot)
    log.warning("%s: the Hub's parquet conversion has no %r split; reading the repository's data files instead",
                repo_id, split)
    try:
        snapshot = Path(snapshot_download(repo_id, repo_type="dataset", cache_dir=cache_dir, endpoint=endpoint,
                                          allow_patterns=DATA_FILE_PATTERNS))
    except Exception as exc:
        raise hub_error(repo_id, endpoint, exc) or PipelineError(f"cannot read {repo_id} from {endpoint}: "
                                                                 f"{one_line(exc)}") from exc
    if parquet := split_files(snapshot, split, ".parquet"):
        return Rows(_from_parquet(parquet), snapshot)
    raise PipelineError(f"dataset {repo_id} has no parquet data for split {split!r}; download it once with "
                        f"DataComp's download_evalsets.py and point data_root at that folder (its {HF_CACHE} is read)")


# -- images -----------------------------------------------------------------------------------------------------
def reroot(path: str, image_root: Path | None) -> Path:
    """An image path written on another machine, inside this mirror: the part after `hf_cache/` (or after the
    mirror's own folder name) joined to where the mirror is now."""
    original = Path(path)
    if (original.is_absolute() and original.is_file()) or image_root is None:
        return original
    if not original.is_absolute() and (image_root / original).is_file():
        return image_root / original
    parts = original.parts
    for anchor in (HF_CACHE, image_root.name):
        if anchor in parts:
            candidate = image_root.joinpath(*parts[len(parts) - parts[::-1].index(anchor):])
            if candidate.is_file():
                return candidate
    return image_root / original.name if (image_root / original.name).is_file() else original


def as_image(value: Any, image_root: Path | None = None):
    """A PIL RGB image from a stored {"bytes", "path"} value (or an already decoded image)."""
    from PIL import Image

    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return Image.open(io.BytesIO(value["bytes"])).convert("RGB")
        if value.get("path"):
            return Image.open(reroot(value["path"], image_root)).convert("RGB")
        raise ValueError("an image value with neither bytes nor path")
    return value.convert("RGB")


# -- rows as the stages read them -----------------------------------------------------------------------------
class Pairs(torch.utils.data.Dataset):
    """(image, captions) rows of an nlphuji retrieval dataset (columns `image`, `caption`)."""

    def __init__(self, rows: Rows, transform: Callable):
        self.rows, self.transform = rows, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        row = self.rows[index]
        return self.transform(as_image(row["image"], self.rows.image_root)), list(row["caption"])


@dataclass(frozen=True)
class WinoInstance:
    cue: str
    candidates: list[str]
    associations: list[str]
    images: list


def winogavil_games(rows: Rows) -> Iterator[WinoInstance]:
    """nlphuji/winogavil's rows (`cue`, `candidates`, `associations`, `candidate_images`) as games."""
    for index in range(len(rows)):
        row = rows[index]
        yield WinoInstance(row["cue"], list(row["candidates"]), list(row["associations"]),
                           [as_image(image, rows.image_root) for image in row["candidate_images"]])


class WinogroundImages(torch.utils.data.Dataset):
    """facebook/winoground's images, each example's `image_0` then `image_1`, as (image, its row)."""

    def __init__(self, rows: Rows, transform: Callable):
        self.rows, self.transform = rows, transform

    def __len__(self) -> int:
        return 2 * len(self.rows)

    def __getitem__(self, index: int):
        image = self.rows[index // 2][f"image_{index % 2}"]
        return self.transform(as_image(image, self.rows.image_root)), index


def winoground_instances(rows: Rows) -> tuple[list[str], list[list[str]]]:
    """Each example's two captions (`caption_0`, `caption_1`) and the names of its two images, `<id>_0`, `<id>_1`,
    read without decoding an image."""
    ids = [str(value) for value in rows.column("id")] if "id" in rows.table.column_names else \
        [str(index) for index in range(len(rows))]
    captions = [str(caption) for pair in zip(rows.column("caption_0"), rows.column("caption_1")) for caption in pair]
    return captions, [[f"{example}_0", f"{example}_1"] for example in ids]
