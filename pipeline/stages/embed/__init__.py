"""Embed stage: image features (with labels, captions or game layout) for (model, dataset), and text
embeddings for (model, strings): zero-shot classifiers, retrieval captions, WinoGAViL cues.

Zero-shot classifiers are assembled from per-template embeddings, each cached on its own, so prompt sets that
share templates encode each shared template once (`template_embeddings`)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

import numpy as np

from pipeline.data import datasets, prompts
from pipeline.models import precision
from pipeline.models.loading import ModelLoader
from pipeline.stages import StageContext, StageResult
from pipeline.store.artifacts import StageOutput
from pipeline.store.cache import StageRequest, cache_key

# The encoders (`images`, `texts`: torch, the readers) are imported where something is encoded, so a job that is
# served every stage never imports them.

# 3: texts that tokenize alike are encoded once, so they get equal features (issue 35), and a webdataset's captions
# come in the dataset's order.
VERSION = "3"
CLASSES_VERSION = "2"  # a view of the image stage's rows, whose key follows the image key
# 3: image runs also hold pre-projection features (issue 10), so older image runs are never served to a probe.
IMAGE_VERSION = "3"
# 4: a webdataset's samples in the dataset's order whatever batch_size and num_workers read them (issue 35); every
# other reader always read in that order, so their image keys stay what they were.
ORDERED_IMAGE_VERSIONS = {"wds": "4"}
TEMPLATE_SET_TAG = "template_set"


@dataclass(frozen=True)
class ModelKey:
    """What every embed key shares: the model's fingerprint, the effective precision, the feature libraries."""

    model: Mapping[str, Any]
    precision: str
    libraries: Mapping[str, str]
    tokenizer_language: str | None = None  # NLLB-CLIP's source language; None for every other tokenizer

    def material(self) -> dict[str, Any]:
        material = {"model": dict(self.model), "precision": self.precision, "libraries": dict(self.libraries)}
        # only where set, so the keys of every tokenizer without a language stay what they were
        return {**material, "tokenizer_language": self.tokenizer_language} if self.tokenizer_language else material


# -- keys: all computable from fingerprints and configs, before anything is read --------------------------
def image_key(model: ModelKey, dataset: datasets.DatasetInfo) -> str:
    # Features that lack skipped samples are never served to a run that did not ask to skip.
    version = ORDERED_IMAGE_VERSIONS.get(dataset.spec.format, IMAGE_VERSION)
    return cache_key("embed/image", version, {**model.material(), "dataset": dataset.image_identity,
                                              "task": dataset.spec.task, "skip_corrupt": dataset.spec.skip_corrupt})


def subset_key(image_key: str, classes: tuple[int, ...]) -> str:
    """The key of `class_subset`'s view of the images keyed `image_key`."""
    return cache_key("embed/classes", CLASSES_VERSION, {"classes": list(classes)}, [image_key])


def class_subset(images: StageResult, classes: tuple[int, ...]) -> StageResult:
    """The images of some classes only, relabelled by each class's position in `classes`: Babel-ImageNet's
    languages each name a subset of ImageNet's classes, and all read ImageNet's one cached image stage through this
    view (it is computed, not stored: a selection of rows costs less than a stage run)."""
    labels = images["labels"]
    position = np.full(max(int(labels.max()), max(classes)) + 1, -1, dtype=np.int64)
    position[list(classes)] = np.arange(len(classes))
    keep = position[labels] >= 0
    arrays = {name: value[keep] if name != "skipped_samples" and np.ndim(value) and len(value) == len(labels) else value
              for name, value in images.arrays.items()}
    return StageResult({**arrays, "labels": position[labels[keep]]}, subset_key(images.key, classes), images.run_id,
                       images.hit)


def classifier_key(model: ModelKey, classnames: list[str], class_prompts: prompts.Prompts) -> str:
    return cache_key("embed/text", VERSION, {**model.material(), "classnames": classnames, "prompts": class_prompts})


def template_set(model: ModelKey, classnames: list[str]) -> str:
    """The tag every per-template embedding of one (model, class list) shares."""
    return cache_key("embed/template-set", VERSION, {**model.material(), "classnames": classnames})


def template_key(model: ModelKey, classnames: list[str], template: str) -> str:
    return cache_key("embed/template", VERSION, {**model.material(), "classnames": classnames, "template": template})


def texts_key(model: ModelKey, dataset: datasets.DatasetInfo) -> str:
    """A dataset's own texts (captions, cues) are a function of its content, so they are keyed by it: the key is
    known before any image is read."""
    return cache_key("embed/texts", VERSION, {**model.material(), "dataset": dataset.fingerprint,
                                              "task": dataset.spec.task, "skip_corrupt": dataset.spec.skip_corrupt})


# -- the stage entry points ---------------------------------------------------------------------------
ImageEncoder = Callable[[ModelLoader, datasets.DatasetSpec, str, int, int], StageOutput]


def embed_images(ctx: StageContext, loader: ModelLoader, dataset: datasets.DatasetInfo, model: ModelKey,
                 encode: ImageEncoder, *, batch_size: int, num_workers: int) -> StageResult:
    """Image-side arrays for (model, dataset), independent of the prompt set: `encode` (the task's) reads every image
    through the image tower once, with what the task needs beside it (labels, caption owners, game layout)."""
    spec = dataset.spec
    tags = {"modality": "image", "prompts": prompts.PROMPT_FREE, "precision": model.precision, "split": spec.split}
    return ctx.run("embed", image_key(model, dataset), f"embed-image:{loader.spec.name}:{spec.name}/{spec.split}",
                   lambda: encode(loader, spec, model.precision, batch_size, num_workers), tags=tags)


def template_embeddings(ctx: StageContext, loader: ModelLoader, classnames: list[str], templates: list[str],
                        model: ModelKey) -> dict[str, Mapping[str, np.ndarray]]:
    """Each distinct template's (classes, dim) embeddings: served from its own run, or encoded with the others
    that are missing in one pass."""
    from pipeline.stages.embed import texts

    group = template_set(model, classnames)
    distinct = list(dict.fromkeys(templates))
    by_key = {template_key(model, classnames, template): template for template in distinct}
    run_tags = {**ctx.tags, "modality": "template", "prompts": prompts.PROMPT_FREE, "precision": model.precision,
                TEMPLATE_SET_TAG: group}
    requests = [StageRequest("embed", key, {**run_tags, "template": template}, {},
                             name=f"embed-template:{loader.spec.name}:{template}") for key, template in by_key.items()]
    results = ctx.cache.get_or_compute_many(
        requests, (TEMPLATE_SET_TAG, group), f"embed-templates:{loader.spec.name}:{ctx.tags.get('dataset')}",
        lambda missing: texts.encode_templates(loader.get(), classnames, [by_key[r.key] for r in missing],
                                               model.precision))
    return {by_key[request.key]: result.arrays for request, result in zip(requests, results)}


def encode_classifier(loader: ModelLoader, classnames: list[str], class_prompts: prompts.Prompts, text_precision: str,
                      per_template: Mapping[str, Mapping[str, np.ndarray]] | None = None) -> StageOutput:
    """Classifier weights, (dim, classes): assembled from per-template embeddings (encoded here when not given)
    under the text tower's autocast, as open_clip's builder computes them; CuPL's per-class sentences directly."""
    import torch

    from pipeline.stages.embed import texts

    if isinstance(class_prompts, dict):
        return StageOutput(arrays=precision.with_dtype(
            "classifier", texts.per_class_classifier(loader, classnames, class_prompts, text_precision)))
    if per_template is None:
        distinct = list(dict.fromkeys(class_prompts))
        encoded = texts.encode_templates(loader.get(), classnames, distinct, text_precision)
        per_template = {template: output.arrays for template, output in zip(distinct, encoded)}
    device = torch.device(loader.device)
    with torch.no_grad(), precision.autocast(device, text_precision):
        weights = texts.assemble_classifier([precision.restored(per_template[t], "embeddings", device)
                                             for t in class_prompts])
    return StageOutput(arrays=precision.with_dtype("classifier", weights))


def embed_classifier(ctx: StageContext, loader: ModelLoader, classnames: list[str], class_prompts: prompts.Prompts,
                     model: ModelKey) -> StageResult:
    """Zero-shot classifier weights, (dim, classes), one normalized column per class. On a miss its templates'
    embeddings are gathered first, so a new combination of known templates encodes nothing."""
    gathered: dict[str, Mapping[str, np.ndarray]] = {}

    def gather() -> None:
        if not isinstance(class_prompts, dict):
            gathered.update(template_embeddings(ctx, loader, classnames, class_prompts, model))

    def compute() -> StageOutput:
        output = encode_classifier(loader, classnames, class_prompts, model.precision, gathered or None)
        if isinstance(class_prompts, dict):
            return output
        # Which templates, in which order, and where their embeddings are cached: the aggregate step draws the
        # ensembling curve of this prompt set from them without encoding anything.
        return replace(output, arrays={**output.arrays, "templates": np.array(class_prompts, dtype=str)},
                       tags={TEMPLATE_SET_TAG: template_set(model, classnames)})

    name = f"embed-text:{loader.spec.name}:{ctx.tags.get('dataset')}:{ctx.tags.get('prompts')}"
    return ctx.run("embed", classifier_key(model, classnames, class_prompts), name, compute,
                   tags={"modality": "text", "precision": model.precision}, before=gather)


Texts = Callable[[], tuple[list[str], Mapping[str, np.ndarray]]]


def embed_texts(ctx: StageContext, loader: ModelLoader, dataset: datasets.DatasetInfo, texts: Texts,
                model: ModelKey) -> StageResult:
    """Embeddings of a dataset's own texts (retrieval captions, WinoGAViL cues, the captions of image-caption
    selection with the images each instance shows), cached like classifiers; `texts` gives the strings and any
    arrays kept beside their embeddings, and is only called when they have to be encoded."""
    def compute() -> StageOutput:
        from pipeline.stages.embed.texts import encode_texts

        strings, beside = texts()
        encoded = encode_texts(loader, strings, model.precision)
        return replace(encoded, arrays={**encoded.arrays, **beside})

    return ctx.run("embed", texts_key(model, dataset), f"embed-text:{loader.spec.name}:{ctx.tags.get('dataset')}",
                   compute, tags={"modality": "text", "precision": model.precision})
