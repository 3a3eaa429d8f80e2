"""Embed stage: image features (with labels, captions or game layout) for (model, dataset), and text
embeddings for (model, strings): zero-shot classifiers, retrieval captions, WinoGAViL cues."""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import open_clip
import torch
from tqdm import tqdm

from pipeline import PipelineError, datasets, one_line, prompts
from pipeline.cache import StageCache, StageOutput, StageRequest, cache_key
from pipeline.models import LoadedModel, ModelLoader
from pipeline.precision import with_dtype
from pipeline.readers import Batch, Unreadable

log = logging.getLogger(__name__)

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
    return PipelineError(f"reading dataset {spec.name} ({spec.root}, split {spec.split}) failed: {one_line(exc)}. "
                         f"A shard may be corrupt or truncated; re-download or regenerate it.")


def _unreadable_sample(spec: datasets.DatasetSpec, sample: Unreadable) -> PipelineError:
    if sample.missing:
        return PipelineError(f"dataset {spec.name}: sample {sample.key} in shard {sample.shard}: {sample.error}; "
                             f"is dataset.task={spec.task} right for this dataset?")
    return PipelineError(f"dataset {spec.name}: sample {sample.key} in shard {sample.shard} cannot be decoded "
                         f"({one_line(sample.error)}); the shard is corrupt or truncated: re-download it, "
                         f"or set dataset.skip_corrupt=true to skip such samples")


def _model_failure(loaded: LoadedModel, spec: datasets.DatasetSpec, images: torch.Tensor, exc: Exception) -> PipelineError:
    if isinstance(exc, torch.OutOfMemoryError):
        return PipelineError(f"out of memory on {loaded.device} encoding a batch of {len(images)} images of "
                             f"{spec.name}; lower batch_size")
    return PipelineError(f"the model failed encoding images of {spec.name} (a model error, not a data problem): "
                         f"{type(exc).__name__}: {one_line(exc)}")


def _encode_batches(loaded: LoadedModel, batches: Iterator[Batch], spec: datasets.DatasetSpec, precision: str,
                    collect: Callable[[Batch], None]) -> StageOutput:
    """Encode the images of every batch and hand each batch to `collect` for its other fields.

    Only a failure to read a batch is reported as a data problem; the model's own failures (out of memory
    included) are reported as what they are. Features keep the dtype the tower produced (`with_dtype`)."""
    features: list[torch.Tensor] = []
    skipped: list[Unreadable] = []
    with torch.no_grad(), loaded.autocast(precision), \
            tqdm(desc=f"embed {spec.name}/{spec.split}", unit="batch") as progress:
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except PipelineError:
                raise
            except Exception as exc:
                raise _read_failure(spec, exc) from exc
            missing = [sample for sample in batch.unreadable if sample.missing]
            if missing or (batch.unreadable and not spec.skip_corrupt):
                raise _unreadable_sample(spec, (missing or batch.unreadable)[0])
            skipped.extend(batch.unreadable)
            if batch.images is not None:
                try:
                    features.append(loaded.model.encode_image(batch.images.to(loaded.device)).cpu())
                except Exception as exc:
                    raise _model_failure(loaded, spec, batch.images, exc) from exc
                collect(batch)
            progress.update()
    if not features:
        raise PipelineError(f"dataset {spec.name} ({spec.root}, split {spec.split}) yielded no readable samples")
    arrays = with_dtype("image_features", torch.cat(features))
    if not spec.skip_corrupt:
        return StageOutput(arrays=arrays)
    if skipped:
        log.warning("dataset %s: skipped %d undecodable sample(s) (dataset.skip_corrupt=true), e.g. %s",
                    spec.name, len(skipped), skipped[0].describe())
    listed = np.array([f"{sample.shard}:{sample.key}" for sample in skipped], dtype=str)
    return StageOutput(arrays={**arrays, "skipped_samples": listed}, metrics={"skipped_samples": float(len(skipped))})


def encode_classification_images(loader: ModelLoader, spec: datasets.DatasetSpec, precision: str, batch_size: int,
                                 num_workers: int) -> StageOutput:
    loaded = loader.get()
    labels: list[int] = []
    metadata: list[np.ndarray] = []

    def collect(batch: Batch) -> None:
        labels.extend(int(label) for label in batch.fields["cls"])
        metadata.extend(batch.fields.get("npy", ()))

    batches = datasets.classification_batches(spec, loaded.preprocess, batch_size, num_workers)
    encoded = _encode_batches(loaded, batches, spec, precision, collect)
    arrays = {**encoded.arrays, "labels": np.array(labels, dtype=np.int64)}
    if metadata:
        arrays["metadata"] = np.stack(metadata).astype(np.int64)
    return StageOutput(arrays=arrays, metrics=encoded.metrics)


def encode_retrieval_images(loader: ModelLoader, spec: datasets.DatasetSpec, precision: str, batch_size: int,
                            num_workers: int) -> StageOutput:
    """Image features plus every caption and the index of its image (captions are embedded as text later)."""
    loaded = loader.get()
    captions: list[str] = []
    caption_image: list[int] = []
    image_ids = itertools.count()

    def collect(batch: Batch) -> None:
        for per_image in batch.fields["txt"]:
            image_id = next(image_ids)
            captions.extend(per_image)
            caption_image.extend([image_id] * len(per_image))

    batches = datasets.retrieval_batches(spec, loaded.preprocess, batch_size, num_workers)
    encoded = _encode_batches(loaded, batches, spec, precision, collect)
    return StageOutput(arrays={**encoded.arrays, "captions": np.array(captions, dtype=str),
                               "caption_image": np.array(caption_image, dtype=np.int64)}, metrics=encoded.metrics)


def winogavil_cue_text(cue: str) -> str:
    """DataComp's WinoGAViL prompt: "A {cue}" or "An {cue}", lower-cased."""
    cue = cue.lower()
    return f"An {cue}" if cue[:1] in "aeiou" else f"A {cue}"


def encode_winogavil_images(loader: ModelLoader, spec: datasets.DatasetSpec, precision: str, batch_size: int,
                            num_workers: int) -> StageOutput:
    """Every game's candidate images, flattened, with each game's size, true associations and cue text."""
    loaded = loader.get()
    sizes, truth, cues = [], [], []

    def collect(batch: Batch) -> None:
        [game] = batch.fields["game"]
        sizes.append(len(game.candidates))
        truth.extend(np.isin(game.candidates, game.associations))
        cues.append(winogavil_cue_text(game.cue))

    # One game per batch: its candidates are the images DataComp encodes together.
    games = (Batch(torch.stack([loaded.preprocess(image) for image in game.images]), {"game": [game]})
             for game in datasets.winogavil_instances(spec))
    encoded = _encode_batches(loaded, games, spec, precision, collect)
    return StageOutput(arrays={**encoded.arrays, "game_sizes": np.array(sizes, dtype=np.int64),
                               "associations": np.array(truth, dtype=bool), "cues": np.array(cues, dtype=str)},
                       metrics=encoded.metrics)


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
    # Features that lack skipped samples are never served to a run that did not ask to skip.
    return cache_key("embed/image", VERSION, {**model.material(), "dataset": dataset.fingerprint,
                                              "task": dataset.spec.task, "skip_corrupt": dataset.spec.skip_corrupt})


def classifier_key(model: ModelKey, classnames: list[str], class_prompts: prompts.Prompts) -> str:
    return cache_key("embed/text", VERSION, {**model.material(), "classnames": classnames, "prompts": class_prompts})


def texts_key(model: ModelKey, dataset: datasets.DatasetInfo) -> str:
    """A dataset's own texts (captions, cues) are a function of its content, so they are keyed by it: the key is
    known before any image is read."""
    return cache_key("embed/texts", VERSION, {**model.material(), "dataset": dataset.fingerprint,
                                              "task": dataset.spec.task, "skip_corrupt": dataset.spec.skip_corrupt})


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


def embed_texts(cache: StageCache, loader: ModelLoader, dataset: datasets.DatasetInfo, texts: Callable[[], list[str]],
                model: ModelKey, *, tags: Mapping[str, str], params: Mapping[str, Any]) -> Embedded:
    """Embeddings of a dataset's own texts (retrieval captions, WinoGAViL cues), cached like classifiers;
    `texts` is only called when they have to be encoded."""
    key = texts_key(model, dataset)
    request = StageRequest("embed", key, {**tags, "modality": "text", "precision": model.precision}, params,
                           name=f"embed-text:{loader.spec.name}:{tags.get('dataset')}")
    result = cache.get_or_compute(request, lambda: encode_texts(loader, texts(), model.precision))
    return Embedded(result.output.arrays, key, result.run_id)
