"""Class names and templates in other languages, from the files clip_benchmark ships: `<lang>_classnames.json`
and `<lang>_zeroshot_classification_templates.json` (ImageNet-1k in Arabic, Chinese, Italian, Japanese), and
Babel-ImageNet's `babel_imagenet.json` (per language: the ImageNet classes it names, and their names) with the
NLLB templates of `nllb_dist13b_prompts.json`. English (`en`) is every dataset's own names and templates."""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Sequence

from pipeline.errors import PipelineError

ENGLISH = "en"
BABEL = "babel_imagenet"  # the dataset whose classes depend on the language
TEMPLATE_FALLBACK = "imagenet1k"  # clip_benchmark's: a language's ImageNet templates serve its other datasets


@lru_cache(maxsize=None)
def shipped(name: str) -> dict:
    """One of clip_benchmark's data files, or {} where it ships none."""
    file = resources.files("clip_benchmark.datasets").joinpath(name)
    return json.loads(file.read_text()) if file.is_file() else {}


@lru_cache(maxsize=1)
def classname_languages() -> tuple[str, ...]:
    """The languages clip_benchmark ships class names for (`<lang>_classnames.json`)."""
    folder = resources.files("clip_benchmark.datasets")
    return tuple(sorted(entry.name.removesuffix("_classnames.json") for entry in folder.iterdir()
                        if entry.name.endswith("_classnames.json")))


def _lookup(mapping: dict, dataset_key: str):
    """clip_benchmark's keys: the full key, then the key without its `vtab/`-style prefix."""
    for key in (dataset_key, dataset_key.split("/", 1)[-1]):
        if key in mapping:
            return mapping[key]
    return None


def languages_of(dataset_key: str) -> list[str]:
    """The languages a dataset has class names in (English always: its own)."""
    if dataset_key == BABEL:
        return babel_languages()
    return sorted({ENGLISH} | {lang for lang in classname_languages()
                               if _lookup(shipped(f"{lang}_classnames.json"), dataset_key) is not None})


def localized(dataset_key: str, language: str, classnames: list[str], templates: list[str]) -> tuple[list[str], list[str]]:
    """The dataset's class names and templates in `language`; a language it has no names in is refused."""
    if language == ENGLISH:
        return classnames, templates
    names = _lookup(shipped(f"{language}_classnames.json"), dataset_key)
    if names is None:
        raise PipelineError(f"dataset {dataset_key} has no class names in language {language!r}; clip_benchmark ships "
                            f"them in {', '.join(languages_of(dataset_key))}")
    if len(names) != len(classnames):
        raise PipelineError(f"dataset {dataset_key}: clip_benchmark's {language} class names are {len(names)}, the "
                            f"copy read has {len(classnames)} classes")
    shipped_templates = shipped(f"{language}_zeroshot_classification_templates.json")
    return list(names), list(_lookup(shipped_templates, dataset_key) or shipped_templates.get(TEMPLATE_FALLBACK) or [])


# Prompt sources that carry no language of their own (the dataset's templates in the job's language, the user's).
NEUTRAL_PROMPTS = ("dataset", "list", "file")


def check(dataset_key: str, task: str, language: str, prompt_source: str, offered: Sequence[str] | None = None) -> None:
    """A job's language fits its dataset and prompt set, or one line says what does; `offered` are the languages of
    a multilingual dataset's own captions."""
    if offered is not None:
        if language not in offered:
            shown = ", ".join(offered[:12]) + (f", ... ({len(offered)} in all)" if len(offered) > 12 else "")
            raise PipelineError(f"dataset {dataset_key} has no captions in language {language!r}; it has {shown}")
        return
    if language == ENGLISH and dataset_key != BABEL:
        return
    if task != "zeroshot_classification":
        raise PipelineError(f"language={language} applies to zero-shot classification (imagenet1k, {BABEL}); "
                            f"dataset {dataset_key} is a {task} task")
    if language not in languages_of(dataset_key):
        raise PipelineError(f"dataset {dataset_key} has no class names in language {language!r}; it has them in "
                            f"{', '.join(languages_of(dataset_key))}")
    if prompt_source not in NEUTRAL_PROMPTS:
        raise PipelineError(f"prompts with source {prompt_source} are English templates; with language={language} use "
                            f"prompts=dataset (the language's templates), or a list or file of your own")


# -- Babel-ImageNet ----------------------------------------------------------------------------------------------
def babel_languages() -> list[str]:
    """Babel-ImageNet's languages that have both class names and NLLB templates (3 of its 93 have no templates)."""
    return sorted(code.lower() for code in shipped("babel_imagenet.json") if code in shipped("nllb_dist13b_prompts.json"))


def babel(language: str) -> tuple[list[int], list[str], list[str]]:
    """The ImageNet classes Babel-ImageNet names in `language` (their indices, in its order), their names, and
    the language's NLLB templates with `{c}` (clip_benchmark's builder.py, `babel_imagenet`)."""
    code = language.upper()
    names, templates = shipped("babel_imagenet.json").get(code), shipped("nllb_dist13b_prompts.json").get(code)
    if names is None or templates is None:
        missing = "class names" if names is None else "NLLB templates"
        raise PipelineError(f"Babel-ImageNet has no {missing} for language {language!r}; it has "
                            f"{len(babel_languages())} languages: language= one of {', '.join(babel_languages())}")
    indices, classnames = names
    return [int(i) for i in indices], list(classnames), [t.replace("{}", "{c}") for t in templates]
