"""Classify stage: turn embeddings into predictions — zero-shot logits, retrieval ranks, WinoGAViL choices.

Features come back in the dtype their tower produced, and each product runs under the autocast the
protocol puts it in, so the logits are the ones the reference code computes (see `pipeline/precision.py`).
Equal features are multiplied once (`ties.distinct`), so equal texts or images get bit-equal similarities and
their tie is broken by the one rule, the earlier index first, never by rounding noise.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from pipeline.errors import PipelineError
from pipeline.models.precision import FP32_RECIPE, Recipe, autocast, normalized, restored
from pipeline.stages import metrics, ties
from pipeline.stages.embed import Embedded
from pipeline.store.artifacts import StageOutput
from pipeline.store.cache import StageCache, StageRequest, cache_key

if TYPE_CHECKING:  # torch is imported where logits are computed: a served job computes none
    import torch

# 3: equal features give equal similarities, ties go to the earlier index, and each tie is recorded (issue 35)
VERSION = "3"
LOGIT_SCALE = 100.0


def normalize(features: np.ndarray) -> np.ndarray:
    return features / np.linalg.norm(features, axis=1, keepdims=True)


def zero_shot_logits(images: Mapping[str, np.ndarray], classifier: Mapping[str, np.ndarray],
                     recipe: Recipe = FP32_RECIPE, device: torch.device | None = None) -> np.ndarray:
    """`100 * normalize(image_features) @ classifier`, in the recipe's logits precision (clip_benchmark's
    run_classification: the normalization and the product share one autocast block)."""
    import torch

    device = device or torch.device("cpu")
    features = restored(images, "image_features", device)
    weights = restored(classifier, "classifier", device)
    classes = ties.distinct(weights.T.cpu())  # classes named alike (ImageNet's two "sunglasses") share a column
    if classes is not None:
        weights = weights[:, classes[0].to(weights.device)]
    with torch.no_grad(), autocast(device, recipe.logits):
        logits = promoted_matmul(LOGIT_SCALE * normalized(features), weights)
    logits = logits.float().cpu().numpy()
    return logits if classes is None else logits[:, classes[1].numpy()]


def promoted_matmul(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """`left @ right` in the dtype both operands promote to: outside autocast, torch refuses to multiply a
    bfloat16 matrix by a float32 one (a protocol may put one tower under autocast and leave the product in fp32)."""
    import torch

    dtype = torch.promote_types(left.dtype, right.dtype)
    return left.to(dtype) @ right.to(dtype)


def _normalized_pair(images: Mapping[str, np.ndarray], text: Mapping[str, np.ndarray], recipe: Recipe,
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, text) embeddings as the references multiply them: images normalized inside the image tower's
    autocast; texts were normalized when embedded."""
    import torch

    with torch.no_grad(), autocast(device, recipe.image):
        image_features = normalized(restored(images, "image_features", device))
    return image_features, restored(text, "text_features", device)


def _product(left: torch.Tensor, right: torch.Tensor, recipe: Recipe, device: torch.device) -> np.ndarray:
    """`left @ right` under the logits' autocast; a float16 result stays float16, as DataComp's WinoGAViL hands a
    float16 array to `np.argsort` (whose tie order depends on the dtype); bfloat16, which numpy lacks, widens."""
    import torch

    with torch.no_grad(), autocast(device, recipe.logits):
        product = promoted_matmul(left, right)
    return product.cpu().numpy() if product.dtype == torch.float16 else product.float().cpu().numpy()


def distinct_product(left: torch.Tensor, right: torch.Tensor, recipe: Recipe,
                     device: torch.device) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """`_product` of the distinct rows of `left` and the distinct columns of `right`, with each row's and each
    column's index into it (None where all differ: the product is then the plain one): equal features share one
    computed similarity."""
    rows, columns = ties.distinct(left.cpu()), ties.distinct(right.T.cpu())
    if rows is not None:
        left = left[rows[0].to(left.device)]
    if columns is not None:
        right = right[:, columns[0].to(right.device)]
    return (_product(left, right, recipe, device), None if rows is None else rows[1].numpy(),
            None if columns is None else columns[1].numpy())


def expanded(product: np.ndarray, rows: np.ndarray | None, columns: np.ndarray | None) -> np.ndarray:
    """The full matrix from a `distinct_product`."""
    product = product if rows is None else product[rows]
    return product if columns is None else product[:, columns]


def classification_outputs(images: Embedded, text: Embedded, recipe: Recipe, device: torch.device) -> StageOutput:
    logits = zero_shot_logits(images.arrays, text.arrays, recipe, device)
    return StageOutput(arrays={"logits": logits, "predictions": logits.argmax(axis=1).astype(np.int64)})


def retrieval_outputs(images: Embedded, text: Embedded, recipe: Recipe, device: torch.device) -> StageOutput:
    # The caption x image similarity matrix (25k x 5k for MSCOCO) is not stored; the ranks carry every metric.
    import torch

    image_features, text_features = _normalized_pair(images.arrays, text.arrays, recipe, device)
    owners, shown = caption_owners(images, text)
    if shown is not None:
        image_features = image_features[torch.as_tensor(shown, device=image_features.device)]
    scores = expanded(*distinct_product(text_features, image_features.T, recipe, device))
    return StageOutput(arrays={**ties.retrieval_ranks(scores, owners), "caption_image": owners})


def caption_owners(images: Embedded, text: Embedded) -> tuple[np.ndarray, np.ndarray | None]:
    """Each caption's image among the images scored, and which encoded images those are (None: all). A webdataset
    reads the captions with the images; a multilingual set's captions name their images, found by name among the
    encoded ones (every language shares them), and only the images with a caption are scored."""
    if "caption_names" not in text.arrays:
        return images["caption_image"], None
    shown, owners = np.unique(image_rows(images, text["caption_names"]), return_inverse=True)
    return owners.astype(np.int64), shown


def image_rows(images: Embedded, names: np.ndarray) -> np.ndarray:
    """The rows of the encoded images the texts name (any shape), or one line saying the images changed."""
    row = {name: index for index, name in enumerate(images["image_names"])}
    missing = [name for name in names.ravel() if name not in row]
    if missing:
        raise PipelineError(f"{len(missing)} captioned images (e.g. {missing[0]}) are not among the encoded ones: the "
                            f"images changed since they were encoded; rerun with cache.force=true")
    return np.array([row[name] for name in names.ravel()], dtype=np.int64).reshape(names.shape)


def winogavil_outputs(images: Embedded, text: Embedded, recipe: Recipe, device: torch.device) -> StageOutput:
    image_features, cue_features = _normalized_pair(images.arrays, text.arrays, recipe, device)
    chosen, tied, start = [], [], 0
    truth = images["associations"]
    for game, size in enumerate(images["game_sizes"]):
        # wino_eval.py:79: `text_features @ image_features.T` for one cue against its candidates; DataComp's own
        # `np.argsort` then orders their ties, and `tied` records each game whose choice fell on one
        similarities = expanded(*distinct_product(cue_features[game][None], image_features[start:start + size].T,
                                                  recipe, device))[0]
        n_chosen = int(truth[start:start + size].sum())
        chosen.append(metrics.winogavil_predictions(similarities, n_chosen))
        tied.append(ties.chosen_by_tie(similarities, n_chosen))
        start += size
    return StageOutput(arrays={"chosen": np.concatenate(chosen), "tied": np.array(tied, dtype=bool)})


def selection_outputs(images: Embedded, text: Embedded, recipe: Recipe, device: torch.device) -> StageOutput:
    """Each instance's (images, captions) similarities, (N, I, C), from the images it names and its captions (C per
    instance, in order), and its resampling unit: its first image (SugarCrepe's entries share images)."""
    import torch

    image_features, text_features = _normalized_pair(images.arrays, text.arrays, recipe, device)
    shown = text["instance_images"]
    rows = image_rows(images, shown)
    # clip_benchmark's image_caption_selection.py: `images_emb @ texts_emb.t()` per instance; here one product of
    # the distinct images shown and the distinct captions, each instance's block read from it, so a negative
    # caption equal to the caption gets exactly the caption's similarity (and argmax takes the caption, as there)
    used = np.unique(rows)
    product, image_index, caption_index = distinct_product(
        image_features[torch.as_tensor(used, device=image_features.device)], text_features.T, recipe, device)
    image_at = np.searchsorted(used, rows)                                       # (N, I) rows of `used`
    image_at = image_at if image_index is None else image_index[image_at]
    caption_at = np.arange(len(text_features)) if caption_index is None else caption_index
    caption_at = caption_at.reshape(len(shown), -1)                              # (N, C)
    scores = product[image_at[:, :, None], caption_at[:, None, :]].astype(np.float32)
    units = np.unique(rows[:, 0], return_inverse=True)[1].astype(np.int64)
    return StageOutput(arrays={"scores": scores, "units": units})


OUTPUTS: dict[str, Callable[[Embedded, Embedded, Recipe, torch.device], StageOutput]] = {
    "zeroshot_classification": classification_outputs,
    "multilabel_classification": classification_outputs,  # the same logits, scored per class
    "image_caption_selection": selection_outputs,
    "zeroshot_retrieval": retrieval_outputs,
    "winogavil": winogavil_outputs,
}


def classify_key(task: str, logits_precision: str, image_key: str, text_key: str) -> str:
    return cache_key("classify", VERSION, {"task": task, "precision": logits_precision}, [image_key, text_key])


def classify(cache: StageCache, task: str, images: Embedded, text: Embedded, recipe: Recipe,
             device: str | torch.device, *, tags: Mapping[str, str], params: Mapping[str, Any]) -> Embedded:
    key = classify_key(task, recipe.logits, images.key, text.key)
    request = StageRequest("classify", key, {**tags, "precision": recipe.logits}, params,
                           name=f"classify:{tags.get('model')}:{tags.get('dataset')}:{tags.get('prompts')}")

    def compute() -> StageOutput:
        import torch

        return OUTPUTS[task](images, text, recipe, torch.device(device))

    result = cache.get_or_compute(request, compute)
    return Embedded(result.output.arrays, key, result.run_id)
