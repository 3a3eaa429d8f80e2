"""Datasets: what a dataset config names, where its files are (remote roots fetched into local folders first),
and what identifies its content; `reading` reads their images through the reader for each format."""
from __future__ import annotations

import hashlib
import logging
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from pipeline.data import annotated, languages, remote, sources
# The values every user of `datasets` names (`datasets.DatasetSpec`): they live in `specs`, which `annotated` imports.
from pipeline.data.specs import FORMATS, SINGLE_LABEL, DatasetInfo, DatasetSpec, is_split_name  # noqa: F401
from pipeline.data.readers import HF_CACHE
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

FINGERPRINT_HEAD_BYTES = 1 << 16
def probe_splits(spec: DatasetSpec) -> tuple[DatasetSpec, DatasetSpec | None]:
    """The train (and provided validation) split of `spec` for a linear probe, or a one-line reason there is none."""
    if spec.train_split is None:
        raise PipelineError(f"dataset {spec.name} has no train split (dataset.train_split is null), so no probe can "
                            f"be fitted; use head=zeroshot, or set dataset.train_split to a split your copy holds")
    if sources.holds_test_only(spec.source, spec.root):
        raise PipelineError(f"dataset {spec.name}: DataComp's copy ({spec.root}) holds only the test split, and a "
                            f"probe needs split {spec.train_split!r}; read CLIP_benchmark's copy with "
                            f"dataset.source=clip_benchmark")
    if spec.train_split in (spec.split, spec.validation_split):
        raise PipelineError(f"dataset {spec.name}: dataset.train_split={spec.train_split!r} is also the split the "
                            f"probe is scored on or validated with; pick distinct splits")
    if spec.validation_split == spec.split:
        raise PipelineError(f"dataset {spec.name}: dataset.validation_split={spec.validation_split!r} is the split "
                            f"the probe is scored on; name another, or null to carve one from train")
    validation = replace(spec, split=spec.validation_split) if spec.validation_split else None
    return replace(spec, split=spec.train_split), validation


# -- remote roots -----------------------------------------------------------------------------------------
def fetched(spec: DatasetSpec, shards: bool) -> tuple[DatasetSpec, remote.LocalCopy | None]:
    """`spec` pointing at a local copy of its remote webdataset root (fetched once, then served from the cache),
    with that copy (what identifies the remote content, and the root pinned to it); no copy for a local root."""
    if spec.root_kind != "http" or spec.format != "wds":
        return spec, None
    copy = remote.fetch_webdataset(spec.root, spec.split, hub_cache(spec), http_cache(spec), shards)
    return replace(spec, root=str(copy.folder)), copy


def http_cache(spec: DatasetSpec) -> Path:
    """Where plain-URL roots are fetched to: data_cache, else paths.data_cache, else the user's cache."""
    return Path(spec.data_cache or spec.http_cache or remote.DEFAULT_HTTP_CACHE).expanduser()


def hub_cache(spec: DatasetSpec) -> str | None:
    """The Hub cache to use: `<data_cache>/hub` when a data_cache is set, else the Hub's own (HF_HOME)."""
    return str(Path(spec.data_cache) / "hub") if spec.data_cache else None


# -- checks and fingerprints -----------------------------------------------------------------------------
def check_local_layout(spec: DatasetSpec, shards: bool = True) -> None:
    """Fail early, naming the path, when a local dataset is missing or incomplete (its shards too, with `shards`)."""
    if spec.is_remote or spec.format == "tfds":
        return
    root = Path(spec.root)
    if spec.format == "voc":
        annotated.voc_folder(spec, http_cache(spec))
        return
    if spec.format == "hf":
        if not root.is_dir() and not (root.parent / HF_CACHE).is_dir():
            raise PipelineError(f"dataset root {root} does not exist (nor DataComp's {HF_CACHE} beside it). Set "
                                f"dataset.root (or data_root for the catalog) to a local mirror of the dataset.")
        return
    if not root.is_dir():
        public = sources.public_copy(spec.source, spec.name)
        where = (f"copy {public} there, or drop data_root to read that copy" if public else
                 "for the bundled data run `python -m pipeline.offline` or `make assets`")
        raise PipelineError(f"dataset root {root} does not exist. Set dataset.root (or data_root for the catalog) to a "
                            f"directory in the dataset's layout ({where}).")
    if spec.format == "folder":
        if not (root / spec.split).is_dir():
            raise PipelineError(f"{root / spec.split} is missing: an image folder needs <root>/<split>/<class>/<image>")
        return
    nshards = root / spec.split / "nshards.txt"
    if not nshards.is_file():
        raise PipelineError(f"{nshards} is missing: {root} has no split {spec.split!r} in webdataset layout")
    if not shards:
        return
    missing = [str(path) for path in remote.shard_paths(root, spec.split) if not path.is_file()]
    if missing:
        raise PipelineError(f"dataset {spec.name}: shards missing: {', '.join(missing)}")


def fingerprint(spec: DatasetSpec, remote_identity: dict | None = None) -> dict[str, Any]:
    """Identify a dataset's content cheaply: a remote one by its address (and Hub commit), a local one by its
    files' names, sizes and heads. Hashing every byte of ImageNet on each run would cost more than the
    embedding it saves."""
    identity = {"name": spec.name, "split": spec.split, "format": spec.format, "metadata": list(spec.metadata_fields)}
    if remote_identity:
        return {**identity, **remote_identity}
    if spec.is_remote or spec.format == "tfds":
        return {**identity, "root": spec.root}
    root = Path(spec.root)
    if spec.format == "hf" and not root.is_dir():
        root = root.parent / HF_CACHE
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and (p.parent == root or spec.split in p.relative_to(root).parts
                                                                   or spec.format == "hf"))
    for path in files:
        with open(path, "rb") as handle:
            head = handle.read(FINGERPRINT_HEAD_BYTES)
        digest.update(f"{path.relative_to(root)}:{path.stat().st_size}:".encode())
        digest.update(hashlib.sha256(head).digest())
    return {**identity, "content": digest.hexdigest()}


# -- clip_benchmark's builder: metadata of local webdatasets, and TFDS ----------------------------------------
def build(spec: DatasetSpec, transform: Callable | None = None, shards: bool = True):
    """clip_benchmark's dataset for a local `spec`, with `.classes` and `.templates` from its metadata files
    (`shards=False`: for those alone, before a remote root's shards are fetched)."""
    from clip_benchmark.datasets.builder import build_dataset

    check_local_layout(spec, shards)
    if spec.is_remote or "://" in spec.root:
        # clip_benchmark reads a root containing "://" with `curl` through a shell: it only ever gets local folders.
        raise PipelineError(f"dataset.root={spec.root!r}: clip_benchmark's builder is only given local folders")
    try:
        with warnings.catch_warnings():
            # clip_benchmark leaves shardshuffle unset; evaluation order does not matter, the warning is noise.
            warnings.filterwarnings("ignore", message=r"WebDataset\(shardshuffle")
            return build_dataset(spec.benchmark_name, root=spec.root, transform=transform, split=spec.split,
                                 download=spec.format == "tfds", task=spec.task)
    except FileNotFoundError as exc:
        raise PipelineError(f"cannot read dataset {spec.name} at {spec.root}: {exc}") from exc


def non_blank(lines: list[str]) -> list[str]:
    """Drop blank lines of classnames.txt and templates files, as clip-benchmark 1.4.0 (DataComp's pin) did
    (datasets/builder.py:630); 1.6.2 keeps them, turning a blank line into a phantom class named ""."""
    return [line.strip() for line in lines if line.strip()]


def _folder_classnames(spec: DatasetSpec) -> list[str]:
    from torchvision.datasets.folder import find_classes

    classes, _ = find_classes(str(Path(spec.root) / spec.split))
    return [c.replace("_", " ") for c in classes]


def _folder_templates(spec: DatasetSpec) -> list[str]:
    file = Path(spec.root) / "zeroshot_classification_templates.txt"
    return non_blank(file.read_text().splitlines()) if file.is_file() else []


# -- what the stages call ---------------------------------------------------------------------------------
def describe(spec: DatasetSpec, classes: bool | None = None) -> DatasetInfo:
    """The content fingerprint for cache keys, and where `classes` (by default: for single-label classification)
    the class names and shipped templates. A remote webdataset's metadata is fetched here; its shards only when
    images are read."""
    if spec.format in annotated.FORMATS:
        found = annotated.describe(spec, http_cache(spec))
        return DatasetInfo(spec, found.classnames, found.templates, found.content, found.images)
    local, copy = fetched(spec, shards=False)
    check_local_layout(local, shards=copy is None)
    remote_identity = copy.identity if copy else None
    if spec.root_kind == "hub_id":
        remote_identity = {"root": spec.root, "hf_config": spec.hf_config,
                           "commit": hub_commit(spec.root, hub_cache(spec))}
    content = fingerprint(local, remote_identity)
    images = fingerprint(replace(local, name=spec.images_of), remote_identity) if spec.images_of else None
    if copy is not None:
        spec = replace(spec, root=copy.pinned_root)  # later reads fetch the version keyed here
    if not (classes if classes is not None else spec.task == SINGLE_LABEL):
        return DatasetInfo(spec, [], [], content)
    if spec.format == "folder":
        if spec.language != languages.ENGLISH:
            raise PipelineError(f"dataset {spec.name}: an image folder's class names are its folder names; "
                                f"language={spec.language} needs a catalog dataset with names in that language")
        return DatasetInfo(spec, _folder_classnames(spec), _folder_templates(spec), content)
    if spec.format == "wds":
        classes, templates = wds_metadata(Path(local.root))
    else:
        dataset = build(local, shards=copy is None)
        classes, templates = dataset.classes or [], getattr(dataset, "templates", None) or []
    classnames = non_blank(classes)
    if not classnames:
        raise PipelineError(f"dataset {spec.name} at {spec.root} has no classnames.txt")
    if spec.name == languages.BABEL:
        kept, names, babel_templates = languages.babel(spec.language)
        return DatasetInfo(spec, names, babel_templates, {**content, "language": spec.language}, images, tuple(kept))
    names, localized = languages.localized(spec.name, spec.language, classnames, non_blank(templates))
    return DatasetInfo(spec, names, localized, content, images)


def wds_metadata(root: Path) -> tuple[list[str], list[str]]:
    """A local webdataset's class names and templates, the lines of its two text files, as clip_benchmark's
    `build_wds_dataset` reads them (clip-benchmark 1.6.2, datasets/builder.py, `dataset.classes` and
    `dataset.templates`), without importing its builder (and torchvision) for two files."""
    files = (root / "classnames.txt", root / "zeroshot_classification_templates.txt")
    return tuple([line.strip() for line in file.read_text().splitlines()] if file.is_file() else [] for file in files)


def hub_commit(repo_id: str, cache_dir: str | None) -> str:
    from pipeline.data.readers import hf

    return hf.hub_commit(repo_id, cache_dir)
