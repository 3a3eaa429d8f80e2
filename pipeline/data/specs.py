"""What a dataset is, as values: its config (`DatasetSpec`) and what the stages know of it before reading any image
(`DatasetInfo`). The data group's other modules (`datasets`, `annotated`, `reading`) all take them."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pipeline.data import languages, remote
from pipeline.errors import PipelineError

# The formats a dataset can be read from; which task reads which is the task's (`pipeline.tasks`).
FORMATS = ("wds", "hf", "tfds", "folder", "voc", "sugar_crepe", "lines")
SINGLE_LABEL = "zeroshot_classification"  # the task whose class names describe() reads unless told


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset config: what it is, where it is, how it is scored."""

    name: str
    task: str
    root: str
    split: str
    main_metric: str
    format: str = "wds"
    column: str | None = None
    source: str = "local"  # whose copy: datacomp, clip_benchmark, nlphuji, tfds, or local for your own data
    metadata_fields: tuple[str, ...] = ()
    group_metrics: tuple[dict, ...] = ()
    extra_metrics: tuple[str, ...] = ()
    skip_corrupt: bool = False       # skip undecodable samples (changes the number: part of the image key)
    hf_config: str | None = None     # the config folder of a Hub parquet conversion holding several
    data_cache: str | None = None    # where remote data is cached (None: the Hub's own cache; HTTP under outputs/)
    http_cache: str | None = None
    train_split: str | None = None       # what linear probes fit on (null: the dataset has none)
    validation_split: str | None = None  # a provided validation split (null: probes carve one from train)
    archive_md5: str | None = None       # format voc: the MD5 a root URL's archive must have (null: unchecked)
    images: str | None = None            # format sugar_crepe: COCO val2017 (a folder, val2017.zip, or its URL)
    images_of: str | None = None         # the dataset whose images these are (Babel-ImageNet: imagenet1k's)
    language: str = languages.ENGLISH    # the class names' and templates' language (the job's `language=`)
    lines: dict | None = None            # format lines: where the index and each language's captions are

    @classmethod
    def from_cfg(cls, cfg: Any, data_cache: str | None = None, http_cache: str | None = None,
                 language: str = languages.ENGLISH) -> "DatasetSpec":
        plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
        spec = cls(
            plain["name"], plain["task"], str(plain["root"]), plain["split"], plain["main_metric"],
            plain.get("format", "wds"), plain.get("column"), plain.get("source") or "local",
            tuple(plain.get("metadata_fields") or ()), tuple(plain.get("group_metrics") or ()),
            tuple(plain.get("extra_metrics") or ()), bool(plain.get("skip_corrupt", False)), plain.get("hf_config"),
            data_cache, http_cache, plain.get("train_split"), plain.get("validation_split"), plain.get("archive_md5"),
            plain.get("images"), plain.get("images_of"), str(language), plain.get("lines"),
        )
        if spec.format not in FORMATS:
            raise PipelineError(f"dataset.format={spec.format!r} is not one of {FORMATS}")
        for option in ("split", "train_split", "validation_split"):
            value = getattr(spec, option)
            if (option == "split" or value is not None) and not is_split_name(value):
                raise PipelineError(f"dataset.{option}={value!r} is not a split name (train, test, ...)")
        if spec.skip_corrupt and spec.format != "wds":
            raise PipelineError(f"dataset.skip_corrupt=true applies to webdatasets (format wds), not {spec.format}")
        if spec.root_kind == "local":
            # Absolute from here on: a relative root never reaches a reader, where `./pipe:cmd` would turn into
            # webdataset's `pipe:` handler and `x://y` into clip_benchmark's `curl`.
            spec = replace(spec, root=str(Path(spec.root).expanduser().resolve()))
        return spec

    @property
    def root_kind(self) -> str:
        """`local`, `http` or `hub_id` (see `remote.check_root`); TFDS roots are data_dir folders."""
        return remote.check_root(self.root, self.format)

    @property
    def is_remote(self) -> bool:
        return self.root_kind != "local"

    @property
    def benchmark_name(self) -> str:
        """The name clip_benchmark's builder dispatches on."""
        prefix = "tfds/" if self.format == "tfds" else "wds/"
        return self.name if self.name.startswith(prefix) else prefix + self.name.removeprefix("tfds/")


def is_split_name(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and "/" not in value and not value.startswith(".")


@dataclass(frozen=True)
class DatasetInfo:
    """What later stages need to know about a dataset before reading any image."""

    spec: DatasetSpec
    classnames: list[str]
    templates: list[str]
    fingerprint: dict[str, Any] = field(default_factory=dict)
    images_fingerprint: dict[str, Any] | None = None  # what the images alone are, where several datasets share them
    class_subset: tuple[int, ...] | None = None  # the images' classes kept, in order (Babel-ImageNet's language)

    @property
    def image_identity(self) -> dict[str, Any]:
        """What keys the image features: the images' own identity where set (SugarCrepe's seven subsets share
        COCO's images), else the dataset's."""
        return self.images_fingerprint or self.fingerprint
