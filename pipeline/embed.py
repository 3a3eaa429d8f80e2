"""Embed stage: image features (with labels, captions or game layout) for (model, dataset), and text
embeddings for (model, strings): zero-shot classifiers, retrieval captions, WinoGAViL cues."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import open_clip
import torch
from tqdm import tqdm

from pipeline import PipelineError, datasets, prompts
from pipeline.cache import StageCache, StageOutput, StageRequest, cache_key
from pipeline.models import LoadedModel, ModelLoader
from pipeline.precision import with_dtype

VERSION = "2"
TEXT_BATCH = 256


@dataclass(frozen=True)
class Embedded:
    """A stage's arrays with the cache key and MLflow run that produced them."""

    arrays: Mapping[str, np.ndarray]
    key: str
    run_id: str

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]


def _read_failure(spec: datasets.DatasetSpec, exc: Exception) -> PipelineError:
    return PipelineError(f"reading dataset {spec.name} ({spec.root}, split {spec.split}) failed: {exc}. "
                         f"A shard may be corrupt or truncated; re-download or regenerate it.")


def _encode_batches(loaded: LoadedModel, batches: Iterable, spec: datasets.DatasetSpec, precision: str,
                    collect: Callable[[tuple], None]) -> dict[str, np.ndarray]:
    """Encode the images of every batch (first element) and hand the rest of each batch to `collect`.

    The features keep the dtype the tower produced (see `precision.with_dtype`)."""
    features: list[torch.Tensor] = []
    try:
        with torch.no_grad(), loaded.autocast(precision):
            for batch in tqdm(batches, desc=f"embed {spec.name}/{spec.split}", unit="batch"):
                features.append(loaded.model.encode_image(batch[0].to(loaded.device)).cpu())
                collect(batch[1:])
    except (PipelineError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise _read_failure(spec, exc) from exc
    if not features:
        raise PipelineError(f"dataset {spec.name} ({spec.root}, split {spec.split}) yielded no samples")
    return with_dtype("image_features", torch.cat(features))


def encode_classification_images(loader: ModelLoader, spec: datasets.DatasetSpec, precision: str, batch_size: int,
                                 num_workers: int) -> StageOutput:
    loaded = loader.get()
    labels: list[torch.Tensor] = []
    metadata: list[torch.Tensor] = []

    def collect(rest: tuple) -> None:
        labels.append(torch.as_tensor(rest[0]))
        if rest[1] is not None:
            metadata.append(torch.as_tensor(rest[1]))

    batches = datasets.classification_batches(spec, loaded.preprocess, batch_size, num_workers)
    arrays = {**_encode_batches(loaded, batches, spec, precision, collect),
              "labels": torch.cat(labels).numpy().astype(np.int64)}
    if metadata:
        arrays["metadata"] = torch.cat(metadata).numpy().astype(np.int64)
    return StageOutput(arrays=arrays)


def encode_retrieval_images(loader: ModelLoader, spec: datasets.DatasetSpec, precision: str, batch_size: int,
                            num_workers: int) -> StageOutput:
    """Image features plus every caption and the index of its image (captions are embedded as text later)."""
    loaded = loader.get()
    captions: list[str] = []
    caption_image: list[int] = []
    image_ids = itertools.count()

    def collect(rest: tuple) -> None:
        for per_image in rest[0]:
            image_id = next(image_ids)
            captions.extend(per_image)
            caption_image.extend([image_id] * len(per_image))

    batches = datasets.retrieval_batches(spec, loaded.preprocess, batch_size, num_workers)
    features = _encode_batches(loaded, batches, spec, precision, collect)
    return StageOutput(arrays={**features, "captions": np.array(captions, dtype=str),
                               "caption_image": np.array(caption_image, dtype=np.int64)})


def winogavil_cue_text(cue: str) -> str:
    """DataComp's WinoGAViL prompt: "A {cue}" or "An {cue}", lower-cased."""
    cue = cue.lower()
    return f"An {cue}" if cue[:1] in "aeiou" else f"A {cue}"


def encode_winogavil_images(loader: ModelLoader, spec: datasets.DatasetSpec, precision: str, batch_size: int,
                            num_workers: int) -> StageOutput:
    """Every game's candidate images, flattened, with each game's size, true associations and cue text."""
    loaded = loader.get()
    sizes, truth, cues = [], [], []

    def collect(rest: tuple) -> None:
        game = rest[0]
        sizes.append(len(game.candidates))
        truth.extend(np.isin(game.candidates, game.associations))
        cues.append(winogavil_cue_text(game.cue))

    # One game per batch: its candidates are the images DataComp encodes together.
    games = ((torch.stack([loaded.preprocess(image) for image in game.images]), game)
             for game in datasets.winogavil_instances(spec))
    features = _encode_batches(loaded, games, spec, precision, collect)
    return StageOutput(arrays={**features, "game_sizes": np.array(sizes, dtype=np.int64),
                               "associations": np.array(truth, dtype=bool), "cues": np.array(cues, dtype=str)})


IMAGE_ENCODERS: dict[str, Callable[..., StageOutput]] = {
    "zeroshot_classification": encode_classification_images,
    "zeroshot_retrieval": encode_retrieval_images,
    "winogavil": encode_winogavil_images,
}


def encode_classifier(loader: ModelLoader, classnames: list[str], class_prompts: prompts.Prompts,
                      precision: str) -> StageOutput:
    loaded = loader.get()
    with torch.no_grad(), loaded.autocast(precision):
        if isinstance(class_prompts, dict):
            weights = _per_class_classifier(loaded, classnames, class_prompts)
        else:
            weights = open_clip.build_zero_shot_classifier(
                loaded.model, loaded.tokenizer, classnames, prompts.fillers(class_prompts),
                device=loaded.device, use_tqdm=True,
            )
    return StageOutput(arrays=with_dtype("classifier", weights))


def _per_class_classifier(loaded: LoadedModel, classnames: list[str], sentences: dict[str, list[str]]) -> torch.Tensor:
    # open_clip's builder applies the same templates to every class; CuPL has different sentences per
    # class, so each class is averaged here with the same normalize-mean-normalize recipe.
    columns = []
    for classname in tqdm(classnames, desc="per-class prompts", unit="class"):
        embeddings = loaded.model.encode_text(loaded.tokenizer(sentences[classname]).to(loaded.device), normalize=True)
        mean = embeddings.mean(dim=0)
        columns.append(mean / mean.norm())
    return torch.stack(columns, dim=1)


def encode_texts(loader: ModelLoader, texts: list[str], precision: str) -> StageOutput:
    """L2-normalized text embeddings, in batches, normalized inside the tower as clip_benchmark's retrieval does."""
    loaded = loader.get()
    chunks = []
    with torch.no_grad(), loaded.autocast(precision):
        for start in tqdm(range(0, len(texts), TEXT_BATCH), desc="embed texts", unit="batch"):
            tokens = loaded.tokenizer(texts[start:start + TEXT_BATCH]).to(loaded.device)
            chunks.append(loaded.model.encode_text(tokens, normalize=True).cpu())
    return StageOutput(arrays=with_dtype("text_features", torch.cat(chunks)))


# -- the stage entry points ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelKey:
    """What every embed key shares: the model's fingerprint, the effective precision, the feature libraries."""

    model: Mapping[str, Any]
    precision: str
    libraries: Mapping[str, str]

    def material(self) -> dict[str, Any]:
        return {"model": dict(self.model), "precision": self.precision, "libraries": dict(self.libraries)}


def image_key(model: ModelKey, dataset: datasets.DatasetInfo) -> str:
    return cache_key("embed/image", VERSION, {**model.material(), "dataset": dataset.fingerprint,
                                              "task": dataset.spec.task})


def classifier_key(model: ModelKey, classnames: list[str], class_prompts: prompts.Prompts) -> str:
    return cache_key("embed/text", VERSION, {**model.material(), "classnames": classnames, "prompts": class_prompts})


def texts_key(model: ModelKey, texts: list[str]) -> str:
    digest = cache_key("texts", VERSION, {"texts": texts})
    return cache_key("embed/texts", VERSION, {**model.material(), "texts": digest})


def embed_images(cache: StageCache, loader: ModelLoader, dataset: datasets.DatasetInfo, model: ModelKey, *,
                 tags: Mapping[str, str], params: Mapping[str, Any], batch_size: int, num_workers: int) -> Embedded:
    """Image-side arrays for (model, dataset); independent of the prompt set."""
    spec = dataset.spec
    key = image_key(model, dataset)
    request = StageRequest("embed", key, {**tags, "modality": "image", "prompts": "*", "precision": model.precision},
                           params, name=f"embed-image:{loader.spec.name}:{spec.name}")
    encode = IMAGE_ENCODERS[spec.task]
    result = cache.get_or_compute(request, lambda: encode(loader, spec, model.precision, batch_size, num_workers))
    return Embedded(result.output.arrays, key, result.run_id)


def embed_classifier(cache: StageCache, loader: ModelLoader, classnames: list[str], class_prompts: prompts.Prompts,
                     model: ModelKey, *, tags: Mapping[str, str], params: Mapping[str, Any]) -> Embedded:
    """Zero-shot classifier weights, (dim, classes), one normalized column per class."""
    key = classifier_key(model, classnames, class_prompts)
    request = StageRequest("embed", key, {**tags, "modality": "text", "precision": model.precision}, params,
                           name=f"embed-text:{loader.spec.name}:{tags.get('dataset')}:{tags.get('prompts')}")
    result = cache.get_or_compute(request, lambda: encode_classifier(loader, classnames, class_prompts, model.precision))
    return Embedded(result.output.arrays, key, result.run_id)


def embed_texts(cache: StageCache, loader: ModelLoader, texts: list[str], model: ModelKey, *,
                tags: Mapping[str, str], params: Mapping[str, Any]) -> Embedded:
    """Embeddings of a dataset's own texts (retrieval captions, WinoGAViL cues), cached like classifiers."""
    key = texts_key(model, texts)
    request = StageRequest("embed", key, {**tags, "modality": "text", "precision": model.precision}, params,
                           name=f"embed-text:{loader.spec.name}:{tags.get('dataset')}")
    result = cache.get_or_compute(request, lambda: encode_texts(loader, texts, model.precision))
    return Embedded(result.output.arrays, key, result.run_id)
