"""Classify stage: what a task computes from image and text embeddings (zero-shot logits, retrieval verdicts,
WinoGAViL choices, selection similarities; the task's `outputs`), and the products they are computed with.

Features come back in the dtype their tower produced, and each product runs under the autocast the
protocol puts it in, so the logits are the ones the reference code computes (see `pipeline/models/precision.py`).
Each product is the reference's own (the same operands and shapes, so the same rounding), and then equal texts or
images are given the first one's numbers (`ties.equalized`), so a tie among them is decided by the call the
reference makes (`ties.top_k`: torch.topk; argmax), never by rounding noise.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np

from pipeline.errors import PipelineError
from pipeline.models.precision import FP32_RECIPE, Recipe, autocast, normalized, restored
from pipeline.stages import StageContext, StageResult
from pipeline.stages.score import ties
from pipeline.store.artifacts import StageOutput
from pipeline.store.cache import cache_key

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


def normalized_pair(images: Mapping[str, np.ndarray], text: Mapping[str, np.ndarray], recipe: Recipe,
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, text) embeddings as the references multiply them: images normalized inside the image tower's
    autocast; texts were normalized when embedded."""
    import torch

    with torch.no_grad(), autocast(device, recipe.image):
        image_features = normalized(restored(images, "image_features", device))
    return image_features, restored(text, "text_features", device)


def product(left: torch.Tensor, right: torch.Tensor, recipe: Recipe, device: torch.device) -> np.ndarray:
    """`left @ right` under the logits' autocast; a float16 result stays float16, as DataComp's WinoGAViL hands a
    float16 array to `np.argsort` (whose tie order depends on the dtype); bfloat16, which numpy lacks, widens."""
    import torch

    with torch.no_grad(), autocast(device, recipe.logits):
        result = promoted_matmul(left, right)
    return result.cpu().numpy() if result.dtype == torch.float16 else result.float().cpu().numpy()


def equal_product(left: torch.Tensor, right: torch.Tensor, recipe: Recipe, device: torch.device) -> np.ndarray:
    """`product`, then equal rows of `left` (columns of `right`) given bit-equal numbers (`ties.equalized`)."""
    return ties.equalized(product(left, right, recipe, device), ties.first_equal(left.cpu()),
                          ties.first_equal(right.T.cpu()))


def caption_owners(images: StageResult, text: StageResult) -> tuple[np.ndarray, np.ndarray | None]:
    """Each caption's image among the images scored, and which encoded images those are (None: all). A webdataset
    reads the captions with the images; a multilingual set's captions name their images, found by name among the
    encoded ones (every language shares them), and only the images with a caption are scored."""
    if "caption_names" not in text.arrays:
        return images["caption_image"], None
    shown, owners = np.unique(image_rows(images, text["caption_names"]), return_inverse=True)
    return owners.astype(np.int64), shown


def image_rows(images: StageResult, names: np.ndarray) -> np.ndarray:
    """The rows of the encoded images the texts name (any shape), or one line saying the images changed."""
    row = {name: index for index, name in enumerate(images["image_names"])}
    missing = [name for name in names.ravel() if name not in row]
    if missing:
        raise PipelineError(f"{len(missing)} captioned images (e.g. {missing[0]}) are not among the encoded ones: the "
                            f"images changed since they were encoded; rerun with cache.force=true")
    return np.array([row[name] for name in names.ravel()], dtype=np.int64).reshape(names.shape)


def classify_key(task: str, logits_precision: str, image_key: str, text_key: str) -> str:
    return cache_key("classify", VERSION, {"task": task, "precision": logits_precision}, [image_key, text_key])


Outputs = Callable[[StageResult, StageResult, Recipe, "torch.device"], StageOutput]


def classify(ctx: StageContext, task: str, outputs: Outputs, images: StageResult, text: StageResult, recipe: Recipe,
             device: str | torch.device) -> StageResult:
    """What the task computes from the image and text features (`outputs`: zero-shot logits, retrieval verdicts,
    WinoGAViL choices, selection similarities), keyed by both embed keys and the logits' precision."""
    def compute() -> StageOutput:
        import torch

        return outputs(images, text, recipe, torch.device(device))

    name = f"classify:{ctx.tags.get('model')}:{ctx.tags.get('dataset')}:{ctx.tags.get('prompts')}"
    return ctx.run("classify", classify_key(task, recipe.logits, images.key, text.key), name, compute,
                   tags={"precision": recipe.logits})
