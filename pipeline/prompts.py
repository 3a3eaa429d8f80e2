"""Prompt sets: lists of templates with `{c}` where the class name goes."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import open_clip

from pipeline import PipelineError

PLACEHOLDER = "{c}"


def _from_open_clip(attribute: str) -> list[str]:
    # open_clip's templates are lambdas; applying them to the placeholder recovers the template text.
    templates = getattr(open_clip, attribute, None)
    if templates is None:
        raise PipelineError(f"open_clip has no template list {attribute!r}")
    return [template(PLACEHOLDER) for template in templates]


def _from_file(path: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise PipelineError(f"prompt file {file} does not exist (set prompts.path to a text file, one template per line)")
    return [line.strip() for line in file.read_text().splitlines() if line.strip()]


def resolve(prompts_cfg: Any, dataset_templates: list[str]) -> list[str]:
    """The template list for a prompt-set config, validated to contain `{c}` each."""
    source = prompts_cfg.source
    if source == "dataset":
        templates = list(dataset_templates)
        if not templates:
            raise PipelineError("prompts=dataset, but the dataset ships no zeroshot_classification_templates.txt")
    elif source == "list":
        templates = list(prompts_cfg.templates)
    elif source == "open_clip":
        templates = _from_open_clip(prompts_cfg.attribute)
    elif source == "file":
        templates = _from_file(prompts_cfg.path)
    else:
        raise PipelineError(f"unknown prompts.source {source!r}; use dataset, list, open_clip or file")
    validate(templates, prompts_cfg.name)
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
