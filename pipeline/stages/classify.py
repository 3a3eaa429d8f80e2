"""Classify stage: turn embeddings into predictions — zero-shot logits, retrieval ranks, WinoGAViL choices.

Features come back in the dtype their tower produced, and each product runs under the autocast the
protocol puts it in, so the logits are the ones the reference code computes (see `pipeline/precision.py`).
Each product is the reference's own (the same operands and shapes, so the same rounding), and then equal texts or
images are given the first one's numbers (`ties.equalized`), so a tie among them is decided by the call the
reference makes (`ties.top_k`: torch.topk; argmax), never by rounding noise.
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

# 3: equal features give equal similarities, ties go to the earlier index, and each tie is recorded (issue 35);
# 4: the references' own products, equal features then equalized (the products over distinct rows rounded other
# numbers otherwise); selection one product per instance; retrieval keeps torch.topk's verdict per query and k
# (`image_found`, `text_found`); WinoGAViL chooses with DataComp's very expression
VERSION = "4"
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
    with torch.no_grad(), autocast(device, recipe.logits):
        logits = promoted_matmul(LOGIT_SCALE * normalized(features), weights)
    # classes named alike (ImageNet's two "sunglasses") get bit-equal columns
    return ties.equalized(logits.float().cpu().numpy(), columns=ties.first_equal(weights.T.cpu()))


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


def equal_product(left: torch.Tensor, right: torch.Tensor, recipe: Recipe, device: torch.device) -> np.ndarray:
    """`_product`, then equal rows of `left` (columns of `right`) given bit-equal numbers (`ties.equalized`)."""
    return ties.equalized(_product(left, right, recipe, device), ties.first_equal(left.cpu()),
                          ties.first_equal(right.T.cpu()))


def classification_outputs(images: Embedded, text: Embedded, recipe: Recipe, device: torch.device) -> StageOutput:
    logits = zero_shot_logits(images.arrays, text.arrays, recipe, device)
    # clip_benchmark's and DataComp's `pred = logits.argmax(axis=1)` (zeroshot_classification.py:225): the first maximum
    return StageOutput(arrays={"logits": logits, "predictions": logits.argmax(axis=1).astype(np.int64)})


def retrieval_outputs(images: Embedded, text: Embedded, recipe: Recipe, device: torch.device) -> StageOutput:
    # The caption x image similarity matrix (25k x 5k for MSCOCO) is not stored: torch.topk's verdicts and the ranks
    # carry every metric.
    import torch

    image_features, text_features = _normalized_pair(images.arrays, text.arrays, recipe, device)
    owners, shown = caption_owners(images, text)
    if shown is not None:
        image_features = image_features[torch.as_tensor(shown, device=image_features.device)]
    scores = equal_product(text_features, image_features.T, recipe, device)  # zeroshot_retrieval.py:66
    return StageOutput(arrays={**metrics.retrieval_outcomes(scores, owners), "caption_image": owners})


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
        # wino_eval.py: `text_features @ image_features.T` for one cue against its candidates; DataComp's own
        # `np.argsort` then orders their ties, and `tied` records each game whose choice fell on one
        similarities = equal_product(cue_features[game][None], image_features[start:start + size].T, recipe, device)[0]
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
    rows = image_rows(images, shown)                                             # (N, I)
    captions = text_features.reshape(len(shown), -1, text_features.shape[-1])  # (N, C, dim), in order
    pictures = image_features[torch.as_tensor(rows, device=image_features.device)]
    # clip_benchmark's image_caption_selection.py:184-190: one `images_emb @ texts_emb.t()` per instance, which torch
    # rounds otherwise than the same numbers inside one larger product (most of them at 512 dimensions); argmax
    # (l.193-194) then decides
    scores = np.stack([_product(pictures[m], captions[m].T, recipe, device)
                       for m in range(len(shown))]).astype(np.float32)
    # an instance's equal captions (a negative word for word the caption) or images get bit-equal similarities
    same_text, same_image = ties.distinct(text_features.cpu()), ties.distinct(image_features.cpu())
    if same_text is not None:
        first = ties.first_within(same_text[1].numpy().reshape(captions.shape[:2]))
        scores = np.take_along_axis(scores, first[:, None, :], axis=2)
    if same_image is not None:
        first = ties.first_within(same_image[1].numpy()[rows])
        scores = np.take_along_axis(scores, first[:, :, None], axis=1)
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
