"""What the explain stage is asked about: its config (`conf/explain/`), the images (files, or samples of the job's
dataset by index) and the captions (strings, or the class prompt of each image's label)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from omegaconf import ListConfig, OmegaConf
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import Compose, Normalize

from pipeline.data import datasets, reading
from pipeline.stages.embed.images import read_failure
from pipeline.errors import PipelineError

NONE = "none"
METHODS = ("relevance",)
LABEL_PROMPTS = "label prompts"  # how a job whose captions are each image's class prompt labels them


@dataclass(frozen=True)
class ExplainSpec:
    """`explain.*`: the method and its setting, the images and the captions."""

    method: str
    images: tuple[str, ...] | tuple[int, ...]  # file paths, or sample indices of the job's dataset
    captions: tuple[str, ...] | None           # None: each image's class prompt (`template`)
    template: str
    start_layer: int
    batch_size: int

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any] | None) -> "ExplainSpec | None":
        """None when `explain=none`; a one-line refusal for every malformed value."""
        if cfg is None or cfg.get("name", NONE) == NONE:
            return None
        if cfg["name"] not in METHODS:
            raise PipelineError(f"explain={cfg['name']!r} is not known; use one of {(NONE, *METHODS)}")
        images = _images(cfg.get("images"))
        captions = _captions(cfg.get("captions"))
        template = str(cfg.get("template") or "")
        if captions is None:
            _check_template(template)
        if captions is None and isinstance(images[0], str):
            raise PipelineError("explain.captions=null asks for each image's class prompt, and image files carry no "
                                "label: give explain.captions=[...] (strings), or explain.images=N to explain samples "
                                "of the dataset")
        batch_size = _integer(cfg.get("batch_size", 8), "explain.batch_size")
        if batch_size < 1:
            raise PipelineError(f"explain.batch_size={batch_size} must be at least 1")
        start_layer = _integer(cfg.get("start_layer", 0), "explain.start_layer")
        return cls(str(cfg["name"]), images, captions, template, start_layer, batch_size)

    def for_depth(self, blocks: int, model_label: str) -> "ExplainSpec":
        """`start_layer` as a block index of a tower with `blocks` blocks (-1 and the last index are one setting,
        so one cache key); refused when the tower has no such block."""
        if not -blocks <= self.start_layer < blocks:
            raise PipelineError(f"explain.start_layer={self.start_layer}: {model_label}'s image tower has {blocks} "
                                f"blocks; give 0 (every block) to {blocks - 1}, or -1 (the last)")
        return replace(self, start_layer=self.start_layer % blocks)

    @property
    def from_dataset(self) -> bool:
        return isinstance(self.images[0], int)

    def method_material(self) -> dict[str, Any]:
        return {"method": self.method, "start_layer": self.start_layer}


def _integer(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PipelineError(f"{name}={value!r} must be a whole number")
    return value


def _check_template(template: str) -> None:
    try:
        filled = template.format(c="{c}")
    except (IndexError, KeyError, ValueError):
        filled = ""
    if "{c}" not in template or filled != template:
        raise PipelineError(f"explain.template={template!r} must hold {{c}} for the class name and no other braces; "
                            f"write it like 'a photo of a {{c}}.'")


def _images(value: Any) -> tuple[str, ...] | tuple[int, ...]:
    hint = "set explain.images to image paths ([a.jpg, b.png]), a count N (the dataset's first N samples) or sample " \
           "indices ([0, 7])"
    if isinstance(value, (bool, float)) or value is None:
        raise PipelineError(f"explain.images={value!r}: {hint}")
    if isinstance(value, int):
        if value < 1:
            raise PipelineError(f"explain.images={value}: {hint}")
        return tuple(range(value))
    if isinstance(value, str):
        value = [value]
    items = OmegaConf.to_container(value) if isinstance(value, ListConfig) else list(value)
    if not items:
        raise PipelineError(f"explain.images is empty: {hint}")
    if all(isinstance(item, int) and not isinstance(item, bool) and item >= 0 for item in items):
        repeated = sorted({item for item in items if items.count(item) > 1})
        if repeated:
            raise PipelineError(f"explain.images lists sample {repeated[0]} more than once; list each index once")
        return tuple(items)
    if all(isinstance(item, str) and item for item in items):
        return tuple(items)
    raise PipelineError(f"explain.images={items!r} mixes kinds or holds a negative index: {hint}")


def _captions(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, (list, ListConfig)):
        items = OmegaConf.to_container(value) if isinstance(value, ListConfig) else list(value)
    else:
        raise PipelineError(f"explain.captions={value!r}: give a list of strings, or null for each image's class "
                            f"prompt")
    if not items or not all(isinstance(item, str) and item.strip() for item in items):
        raise PipelineError(f"explain.captions={items!r}: give non-empty strings, or null for each image's class "
                            f"prompt")
    return tuple(items)


# -- images ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """The images to explain: files, or samples of a dataset by index. `identity` is what the cache key holds."""

    names: tuple[str, ...]
    identity: dict[str, Any]
    paths: tuple[Path, ...] = ()
    dataset: datasets.DatasetInfo | None = None
    indices: tuple[int, ...] = ()


def file_source(paths: tuple[str, ...]) -> Source:
    """Image files, keyed by their bytes; every one is opened now, so a bad path fails before any run exists."""
    resolved, digests = [], []
    for given in paths:
        path = Path(given).expanduser().resolve()
        try:
            with Image.open(path) as image:
                image.load()  # decodes every byte: a truncated file fails here, not mid-run
            digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
        except FileNotFoundError:
            raise PipelineError(f"explain.images: {given} does not exist; give paths to image files") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise PipelineError(f"explain.images: {given} is not a readable image ({exc}); give PNG or JPEG "
                                f"files") from None
        resolved.append(path)
    names = tuple(distinct([path.stem for path in resolved]))
    # The names label the maps, overlays and grid rows, so they are keyed with the bytes.
    return Source(names, {"files": digests, "names": list(names)}, paths=tuple(resolved))


def dataset_source(info: datasets.DatasetInfo, indices: tuple[int, ...]) -> Source:
    if info.spec.task != "zeroshot_classification":
        raise PipelineError(f"explain.images={list(indices)} takes samples of a classification dataset, and "
                            f"{info.spec.name} is {info.spec.task}; give image paths instead")
    names = tuple(f"{info.spec.name}#{index}" for index in indices)
    return Source(names, {"dataset": info.fingerprint, "indices": list(indices)}, dataset=info, indices=indices)


def distinct(names: list[str]) -> list[str]:
    """Names made unique by numbering repeats (`cat`, `cat-2`), order kept."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def split_preprocess(preprocess: Callable) -> tuple[Callable, Normalize]:
    """open_clip's image transform as (what the model sees, in [0, 1]; the normalization after it), so maps are
    drawn over exactly the crop the tower was given."""
    steps = list(getattr(preprocess, "transforms", []))
    if not steps or not isinstance(steps[-1], Normalize):
        raise PipelineError("the model's image transform does not end with a normalization; relevance maps need "
                            "open_clip's standard preprocessing")
    return Compose(steps[:-1]), steps[-1]


def read(source: Source, view: Callable) -> tuple[torch.Tensor, list[int] | None]:
    """The images as the model sees them, (n, 3, H, W) in [0, 1], and their labels (dataset samples only)."""
    if source.paths:
        return torch.stack([view(_rgb(path)) for path in source.paths]), None
    spec = source.dataset.spec
    try:
        found, count = _samples(spec, set(source.indices), view)
    except PipelineError:
        raise
    except Exception as exc:  # the readers raise whatever their decoders do on a damaged file
        raise read_failure(spec, exc) from exc
    missing = sorted(set(source.indices) - set(found))
    if missing:
        raise PipelineError(f"explain.images asks for sample {missing[0]} of {spec.name}, which has {count} samples "
                            f"in split {spec.split!r}")
    return torch.stack([found[i][0] for i in source.indices]), [found[i][1] for i in source.indices]


def _samples(spec: datasets.DatasetSpec, wanted: set[int], view: Callable
             ) -> tuple[dict[int, tuple[torch.Tensor, int]], int]:
    """The wanted samples by index, in the order the embed stage reads the split, and how many were read."""
    found: dict[int, tuple[torch.Tensor, int]] = {}
    position = 0
    for batch in reading.classification_batches(spec, view, batch_size=64, num_workers=0):
        if batch.unreadable:  # skipping it would shift every later index onto another image
            raise PipelineError(f"dataset {spec.name}: {batch.unreadable[0].describe()} cannot be read, so sample "
                                f"indices are not well defined; repair the shard, or give image paths")
        for image, label in zip(batch.images, batch.fields["cls"]):
            if position in wanted:
                found[position] = (image, int(label))
            position += 1
        if len(found) == len(wanted):
            break
    return found, position


def _rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def captions_material(spec: ExplainSpec, source: Source) -> dict[str, Any]:
    """What decides the captions: the strings, or the template and the class names it is filled with."""
    if spec.captions is not None:
        return {"captions": list(spec.captions)}
    return {"template": spec.template, "classnames": source.dataset.classnames}


def pairs(spec: ExplainSpec, count: int, labels: list[int] | None, classnames: list[str]
          ) -> tuple[list[str], list[tuple[int, int]]]:
    """The captions and the (image, caption) pairs to explain: every image with every caption, caption by caption;
    or each image with its own label's prompt."""
    if spec.captions is not None:
        return list(spec.captions), [(image, caption) for caption in range(len(spec.captions)) for image in range(count)]
    prompts = [spec.template.format(c=classnames[label]) for label in labels]
    captions = list(dict.fromkeys(prompts))
    return captions, [(image, captions.index(prompt)) for image, prompt in enumerate(prompts)]
