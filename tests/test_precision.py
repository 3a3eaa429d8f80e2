"""The per-tower precision recipe of each protocol, against a table re-derived from the reference code."""
import pytest
from omegaconf import OmegaConf

from pipeline import PipelineError, precision
from tests.conftest import CONF

CLS, RET, WINO = "zeroshot_classification", "zeroshot_retrieval", "winogavil"
F32, F16, BF16 = "fp32", "amp-fp16", "amp-bf16"

# (protocol, task, device type) -> (image tower, text tower, logits), re-derived from the references:
# - DataComp (mlfoundations/datacomp@4a8df19, with clip-benchmark 1.4.0): eval_utils/wds_eval.py calls
#   zero_shot_classifier without `amp` (so amp=True: torch.cuda.amp.autocast around the text tower,
#   clip_benchmark/metrics/zeroshot_classification.py) and run_classification(..., amp=False): images and logits fp32.
#   eval_utils/retr_eval.py calls zeroshot_retrieval.evaluate with amp=True: both towers and their F.normalize under
#   autocast, `scores = texts_emb @ images_emb.t()` outside it, on fp32 embeddings (CUDA autocast runs norm in fp32).
#   eval_utils/wino_eval.py:75-79 puts encode_image, encode_text and `text_features @ image_features.T` in one
#   torch.cuda.amp.autocast() block: fp16 similarities. torch.cuda.amp.autocast does nothing on CPU: fp32 throughout.
# - clip_benchmark 1.6.2 (its CLI's default --amp): torch.autocast(device, enabled=amp) around encode_text in
#   zero_shot_classifier, around encode_image, F.normalize and `100. * image_features @ classifier` in
#   run_classification, and around both towers in zeroshot_retrieval.evaluate (the score product outside; on CPU
#   F.normalize keeps bfloat16, so the product of two bfloat16 matrices is bfloat16).
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
