"""Prompt sets: templates with `{c}` where the class name goes, or per-class sentences (CuPL)."""
from __future__ import annotations

import importlib.util
import json
import sys
from importlib import resources
from pathlib import Path
from types import ModuleType
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Union

from omegaconf import OmegaConf

from pipeline.errors import PipelineError

PLACEHOLDER = "{c}"
# The `prompts` label of results and stage runs that use no prompt set (image features, retrieval, WinoGAViL, probes).
PROMPT_FREE = "*"
# A list of templates shared by every class, or sentences written for each class.
Prompts = Union[list[str], dict[str, list[str]]]
SOURCES = ("dataset", "list", "open_clip", "file", "clip_benchmark", "clip_paper", "per_dataset", "clip_benchmark_cupl")


@dataclass(frozen=True)
class PromptSet:
    """A `prompts/` config: where its templates come from, and what that source needs (`templates` for a list,
    `attribute` of open_clip's templates, a file's `path`, per-dataset lists with their `default`, CuPL's dataset)."""

    name: str
    source: str
    templates: tuple[str, ...] = ()
    attribute: str | None = None
    path: str | None = None
    by_dataset: Mapping[str, list[str]] = field(default_factory=dict)
    default: tuple[str, ...] = ()
    dataset_key: str | None = None

    @classmethod
    def from_cfg(cls, cfg: Any) -> "PromptSet":
        plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
        source = str(plain.get("source"))
        if source not in SOURCES:
            raise PipelineError(f"unknown prompts.source {source!r}; use {', '.join(SOURCES)}")
        return cls(str(plain["name"]), source, tuple(plain.get("templates") or ()), plain.get("attribute"),
                   plain.get("path"), dict(plain.get("by_dataset") or {}), tuple(plain.get("default") or ()),
                   plain.get("dataset_key"))

    @property
    def label(self) -> str:
        """The prompt set's name in results; template files are told apart by their file name."""
        return f"file:{Path(str(self.path)).stem}" if self.source == "file" else self.name


def _from_open_clip(attribute: str) -> list[str]:
    # open_clip's templates are lambdas; applying them to the placeholder recovers the template text.
    templates = getattr(_open_clip_templates(), attribute, None)
    if templates is None:
        raise PipelineError(f"open_clip has no template list {attribute!r}")
    return [template(PLACEHOLDER) for template in templates]


def _open_clip_templates() -> ModuleType:
    """open_clip's template lists (its `zero_shot_metadata` module, which imports nothing), read without running
    `import open_clip`, which imports torch and torchvision (seconds) in a job whose every stage may be served."""
    if "open_clip" in sys.modules:
        return sys.modules["open_clip"]
    package = importlib.util.find_spec("open_clip")  # finds the package without executing its __init__
    metadata = Path(package.origin).with_name("zero_shot_metadata.py") if package and package.origin else None
    if metadata is None or not metadata.is_file():
        import open_clip  # a layout this reader does not know: the package itself has the lists

        return open_clip
    spec = importlib.util.spec_from_file_location("_open_clip_zero_shot_metadata", metadata)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _from_file(path: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise PipelineError(f"prompt file {file} does not exist (set prompts.path to a text file, one template per line)")
    return [line.strip() for line in file.read_text().splitlines() if line.strip()]


def _clip_benchmark_json(name: str) -> dict:
    return json.loads(resources.files("clip_benchmark.datasets").joinpath(name).read_text())


CLIP_PAPER = Path(__file__).with_name("clip_paper_prompts.json")  # openai/CLIP's data/prompts.md, per catalog key


def _clip_paper(dataset_key: str) -> list[str]:
    templates = json.loads(CLIP_PAPER.read_text())["templates"].get(dataset_key)
    if templates is None:
        raise PipelineError(f"the CLIP paper gives no prompts for dataset {dataset_key}; prompts=clip_paper covers the "
                            f"datasets of suite=clip_paper ({CLIP_PAPER.name}): pick another prompt set")
    return list(templates)


def _lookup(mapping: dict, dataset_key: str, fallback: str | None = None):
    """CLIP_benchmark's lookup order: the full key, the key without its `vtab/`-style prefix, then the fallback."""
    for key in (dataset_key, dataset_key.split("/", 1)[-1], fallback):
        if key is not None and key in mapping:
            return mapping[key]
    return None


def _cupl(dataset_key: str, classnames: list[str]) -> dict[str, list[str]]:
    per_class = _clip_benchmark_json("cupl_prompts.json").get(dataset_key)
    if per_class is None:
        raise PipelineError(f"clip_benchmark's cupl_prompts.json has no prompts for {dataset_key!r}")
    missing = [c for c in classnames if c not in per_class]
    if missing:
        raise PipelineError(f"CuPL prompts for {dataset_key} lack {len(missing)} classes of this dataset, e.g. {missing[0]!r}")
    return {c: list(per_class[c]) for c in classnames}


def resolve(prompt_set: PromptSet, dataset_key: str, dataset_templates: list[str], classnames: list[str]) -> Prompts:
    """The prompts of a prompt set on one dataset, read from its source and validated."""
    source = prompt_set.source
    if source == "dataset":
        templates = list(dataset_templates)
        if not templates:
            raise PipelineError("prompts=dataset, but the dataset ships no zeroshot_classification_templates.txt")
    elif source == "list":
        templates = list(prompt_set.templates)
    elif source == "open_clip":
        templates = _from_open_clip(str(prompt_set.attribute))
    elif source == "file":
        templates = _from_file(str(prompt_set.path))
    elif source == "clip_benchmark":
        templates = list(_lookup(_clip_benchmark_json("en_zeroshot_classification_templates.json"), dataset_key, "imagenet1k"))
    elif source == "clip_paper":
        templates = _clip_paper(dataset_key)
    elif source == "per_dataset":
        templates = list(_lookup(prompt_set.by_dataset, dataset_key) or prompt_set.default)
    else:  # clip_benchmark_cupl
        return _cupl(str(prompt_set.dataset_key), classnames)
    validate(templates, prompt_set.name)
    return templates


def validate(templates: list[str], name: str) -> None:
    if not templates:
        raise PipelineError(f"prompt set {name!r} is empty")
    bad = [t for t in templates if PLACEHOLDER not in t]
    if bad:
        raise PipelineError(f"prompt set {name!r}: template {bad[0]!r} has no {PLACEHOLDER} placeholder for the class name")


def fillers(templates: list[str]) -> list[Callable[[str], str]]:
    """Callables for open_clip's build_zero_shot_classifier, filling `{c}` by name as clip_benchmark does."""
    return [lambda classname, template=template: template.format(c=classname) for template in templates]
