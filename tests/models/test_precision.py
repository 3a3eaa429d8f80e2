"""The per-tower precision recipe of each protocol, against a table re-derived from the reference code."""
import pytest
from omegaconf import OmegaConf

from pipeline.errors import PipelineError
from pipeline.models import precision
from tests.conftest import CONF

CLS, RET, WINO = "zeroshot_classification", "zeroshot_retrieval", "winogavil"
F32, F16, BF16 = "fp32", "amp-fp16", "amp-bf16"

EXPECTED = {
    ("datacomp", CLS, "cuda"): (F32, F16, F32),
    ("datacomp", RET, "cuda"): (F16, F16, F32),
    ("datacomp", WINO, "cuda"): (F16, F16, F16),
    ("datacomp", CLS, "cpu"): (F32, F32, F32),
    ("datacomp", RET, "cpu"): (F32, F32, F32),
    ("datacomp", WINO, "cpu"): (F32, F32, F32),
    ("clip_benchmark", CLS, "cuda"): (F16, F16, F16),
    ("clip_benchmark", RET, "cuda"): (F16, F16, F32),
    ("clip_benchmark", WINO, "cuda"): (F16, F16, F16),
    ("clip_benchmark", CLS, "cpu"): (BF16, BF16, BF16),
    ("clip_benchmark", RET, "cpu"): (BF16, BF16, BF16),
    ("clip_benchmark", WINO, "cpu"): (BF16, BF16, BF16),
    **{("fp32", task, device): (F32, F32, F32) for task in (CLS, RET, WINO) for device in ("cpu", "cuda")},
}


def protocol(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF / "protocol" / f"{name}.yaml"))


@pytest.mark.parametrize("protocol_name, task, device", sorted(EXPECTED))
def test_recipe_matches_the_references(protocol_name, task, device):
    """(image tower, text tower, logits) per (protocol, task, device type), re-derived from the references.

    DataComp (mlfoundations/datacomp@4a8df19, clip-benchmark 1.4.0 pinned):
    - eval_utils/wds_eval.py:81-90 (classification, WILDS, fairness): `zsc.zero_shot_classifier(...)` without
      `amp`, so amp=True: `torch.cuda.amp.autocast` around encode_text; then `zsc.run_classification(...,
      amp=False)`: images and logits in fp32.
    - eval_utils/retr_eval.py:56-58: `zsr.evaluate(..., amp=True)`: both towers and their F.normalize under autocast
      (CUDA autocast runs norm in fp32, so the embeddings are fp32); `scores = texts_emb @ images_emb.t()` outside.
    - eval_utils/wino_eval.py:75-79: encode_image, encode_text and `text_features @ image_features.T` in one
      `torch.cuda.amp.autocast()` block: fp16 similarities on CUDA.
    - `torch.cuda.amp.autocast` does nothing on CPU: fp32 throughout there.
    clip_benchmark 1.6.2 with its CLI's default amp (metrics/zeroshot_classification.py:40 and :111,
    metrics/zeroshot_retrieval.py:51): `torch.autocast(device)` around encode_text, around encode_image with the
    normalization and `100. * image_features @ classifier`, and around both retrieval towers, the score product
    outside; on CPU F.normalize keeps bfloat16, so that product of two bfloat16 matrices is bfloat16.
    """
    recipe = precision.recipe(protocol(protocol_name), task, device)
    assert (recipe.image, recipe.text, recipe.logits) == EXPECTED[(protocol_name, task, device)]


@pytest.mark.parametrize("protocol_name", ["datacomp", "clip_benchmark"])
def test_model_precision_fp32_forces_fp32_everywhere(protocol_name):
    for task in (CLS, RET, WINO):
        for device in ("cpu", "cuda"):
            assert precision.recipe(protocol(protocol_name), task, device, "fp32") == precision.FP32_RECIPE


def test_bad_precision_and_unknown_task_are_named():
    with pytest.raises(PipelineError, match="model.precision='half'"):
        precision.recipe(protocol("datacomp"), CLS, "cpu", "half")
    with pytest.raises(PipelineError, match="says nothing about task 'segmentation'"):
        precision.recipe(protocol("datacomp"), "segmentation", "cpu")


def test_a_protocol_mixing_tower_precisions_still_classifies():
    """One tower under CPU autocast, the other and the product in fp32 (clip-benchmark 1.6.2 itself crashes on
    this mix, "expected m1 and m2 to have the same dtype"): the product runs in the promoted dtype."""
    import numpy as np
    import torch

    from pipeline.models.precision import with_dtype
    from pipeline.stages.classify import zero_shot_logits

    mixed = {"name": "mixed", "autocast_devices": ["cpu"],
             "autocast": {CLS: {"image": False, "text": True, "logits": False}}}
    recipe = precision.recipe(mixed, CLS, "cpu")
    assert (recipe.image, recipe.text, recipe.logits) == (F32, BF16, F32)
    torch.manual_seed(0)
    features, classifier = torch.randn(4, 8), torch.nn.functional.normalize(torch.randn(8, 3), dim=0)
    logits = zero_shot_logits(with_dtype("image_features", features), with_dtype("classifier", classifier.bfloat16()),
                              recipe)
    expected = 100 * torch.nn.functional.normalize(features, dim=-1) @ classifier.bfloat16().float()
    np.testing.assert_allclose(logits, expected.numpy(), rtol=1e-5, atol=1e-4)
