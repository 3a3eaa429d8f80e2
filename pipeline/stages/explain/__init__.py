"""Explain stage: relevance maps of a ViT CLIP model for (image, caption) pairs, cached by key like every stage.

The key holds the model's fingerprint, the towers' effective precisions (the image tower's dtype shapes the
gradients), the images' content (file bytes, or the dataset's fingerprint and the sample indices), the captions
(or the template and class names they come from) and the method with its setting. The run (`stage=explain`)
holds the maps as arrays, each map as its own `.npy` and a PNG overlay for people."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from pipeline.errors import PipelineError
from pipeline.models.loading import LoadedModel, ModelLoader
from pipeline.stages import StageContext, StageResult
from pipeline.stages.embed import ModelKey
from pipeline.stages.explain import figures, inputs
from pipeline.stages.explain.attention import vit_blocks
from pipeline.stages.explain.inputs import ExplainSpec, Source
from pipeline.stages.explain.relevance import encode_captions, relevance_maps
from pipeline.store.artifacts import StageOutput
from pipeline.store.cache import cache_key

STAGE = "explain"
# 1: gradient-weighted attention rollout (Chefer et al., 2021) from the class token, logit = scale · cosine.
VERSION = "1"


def explain_key(image_model: ModelKey, text_precision: str, spec: ExplainSpec, source: Source) -> str:
    return cache_key(STAGE, VERSION, {**image_model.material(), "text_precision": text_precision,
                                      "images": source.identity, "captions": inputs.captions_material(spec, source),
                                      "method": spec.method_material()})


@dataclass(frozen=True)
class Prepared:
    """What a miss reads before its run exists: the images as the model sees them and the normalization the model
    applies after, the captions and their embeddings, and the (image, caption) pairs."""

    seen: torch.Tensor
    normalize: Callable[[torch.Tensor], torch.Tensor]
    captions: list[str]
    pairs: list[tuple[int, int]]
    texts: torch.Tensor


def prepare(loaded: LoadedModel, spec: ExplainSpec, source: Source, model_label: str, text_precision: str) -> Prepared:
    vit_blocks(loaded.model.visual, model_label)  # refuses other towers before any image is read
    view, normalize = inputs.split_preprocess(loaded.preprocess)
    seen, labels = inputs.read(source, view)
    classnames = source.dataset.classnames if source.dataset is not None else []
    captions, pairs = inputs.pairs(spec, len(seen), labels, classnames)
    return Prepared(seen, normalize, captions, pairs, encode_captions(loaded, captions, text_precision))


def compute(loaded: LoadedModel, spec: ExplainSpec, source: Source, prepared: Prepared, model_label: str,
            image_precision: str) -> StageOutput:
    """Every pair's map, a batch of pairs at a time under one progress bar."""
    pairs, relevance, logits = prepared.pairs, [], []
    with tqdm(total=len(pairs), desc=f"explain {model_label}", unit="map") as bar:
        for start in range(0, len(pairs), spec.batch_size):
            chunk = pairs[start:start + spec.batch_size]
            images = prepared.normalize(prepared.seen[[image for image, _ in chunk]])
            try:
                maps = relevance_maps(loaded, images, prepared.texts[[caption for _, caption in chunk]], model_label,
                                      image_precision, spec.start_layer)
            except torch.OutOfMemoryError as exc:
                raise PipelineError(f"out of memory on {loaded.device} explaining {len(chunk)} pairs with "
                                    f"{model_label}; lower explain.batch_size") from exc
            relevance.append(maps.relevance)
            logits.append(maps.logits)
            bar.update(len(chunk))
    arrays = {"relevance": np.concatenate(relevance), "logits": np.concatenate(logits),
              "pair_image": np.array([image for image, _ in pairs], dtype=np.int64),
              "pair_caption": np.array([caption for _, caption in pairs], dtype=np.int64),
              "captions": np.array(prepared.captions, dtype=str), "image_names": np.array(source.names, dtype=str),
              "images": (prepared.seen.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()}
    return StageOutput(arrays=arrays, metrics={"maps": float(len(pairs))}, figures=figures.pair_files(arrays))


def explain(ctx: StageContext, loader: ModelLoader, spec: ExplainSpec, source: Source, image_model: ModelKey,
            text_precision: str) -> StageResult:
    """The maps for `spec` on `source` with the loader's model: served by key, or computed in a `stage=explain` run."""
    label = f"{loader.spec.name}:{ctx.tags.get('pretrained', '')}"
    prepared: list[Prepared] = []

    def before() -> None:  # on a miss, reading fails before the stage's run exists
        prepared.append(prepare(loader.get(), spec, source, label, text_precision))

    return ctx.run(STAGE, explain_key(image_model, text_precision, spec, source), f"explain:{label}",
                   lambda: compute(loader.get(), spec, source, prepared[0], label, image_model.precision),
                   tags={"method": spec.method, "precision": image_model.precision,
                         "images": ", ".join(source.names)[:500]}, before=before)
