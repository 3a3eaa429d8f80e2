"""Trimmed text encoding equals the model's own `encode_text`, and only causal towers pooled at the end token
are trimmed."""

import open_clip
import pytest
import torch

from pipeline.models.loading import LoadedModel, ModelLoader, ModelSpec
from pipeline.stages.embed import texts, trimmed
from tests.conftest import FIXTURES

TEST_CONFIGS = FIXTURES / "model_configs"
# Lengths from 1 word to past the context length (truncated: end token at the last position).
PROMPTS = ["a", "a photo of a red circle.", "a drawing of a blue square on a plain background, seen from far away",
           "itap of a {}.", "a bad photo of the big green cross.", " ".join(["word"] * 40), "red", "a photo of a cat."]


def random_model(arch: str) -> LoadedModel:
    if arch not in open_clip.list_models():
        open_clip.add_model_config(TEST_CONFIGS)
    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None).eval()
    return LoadedModel(model, None, open_clip.get_tokenizer(arch), torch.device("cpu"))


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint) -> LoadedModel:
    return ModelLoader(ModelSpec("tiny", "tiny-clip", str(tiny_checkpoint), "fp32"), torch.device("cpu")).get()


def reference(loaded: LoadedModel, prompts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model.encode_text(loaded.tokenizer(prompts), normalize=True)


def test_trimmed_clip_tower_equals_encode_text(tiny):
    tower = trimmed.causal_tower(tiny.model)
    assert isinstance(tiny.model, open_clip.CLIP) and tower is not None and tower.pool_type == "argmax"
    ends = trimmed.end_positions(tower, tiny.tokenizer(PROMPTS))
    assert ends[0] == 2 and ends[5] == tiny.tokenizer(PROMPTS).shape[1] - 1  # 1 word; truncated at the context
    with torch.no_grad():
        for prompt in PROMPTS:  # alone, each is trimmed to its own length
            single = trimmed.encode_trimmed(tower, tiny.tokenizer([prompt]), normalize=True)
            torch.testing.assert_close(single, reference(tiny, [prompt]), atol=1e-5, rtol=0)
    torch.testing.assert_close(texts.encode_strings(tiny, PROMPTS, "fp32"), reference(tiny, PROMPTS), atol=1e-5, rtol=0)


def test_sorted_batches_come_back_in_order(tiny, monkeypatch):
    monkeypatch.setattr(texts, "TEXT_BATCH", 3)  # several batches, each trimmed to a different length
    many = [f"{prompt} {i}" for i, prompt in enumerate(PROMPTS * 2)]
    torch.testing.assert_close(texts.encode_strings(tiny, many, "fp32"), reference(tiny, many), atol=1e-5, rtol=0)


def test_trimmed_under_autocast_within_bfloat16_tolerance(tiny):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = tiny.model.encode_text(tiny.tokenizer(PROMPTS), normalize=True)
    ours = texts.encode_strings(tiny, PROMPTS, "amp-bf16")
    assert ours.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), expected.float(), atol=2e-2, rtol=0)


def test_custom_text_tower_with_eos_pooling_and_linear_projection():
    loaded = random_model("tiny-custom-text")
    assert isinstance(loaded.model, open_clip.CustomTextCLIP)
    tower = trimmed.causal_tower(loaded.model)
    assert tower is not None and tower.pool_type == "eos" and isinstance(tower.projection, torch.nn.Linear)
    torch.testing.assert_close(texts.encode_strings(loaded, PROMPTS, "fp32"), reference(loaded, PROMPTS), atol=1e-5, rtol=0)


def test_bidirectional_tower_takes_the_unchanged_path():
    """`no_causal_mask: true, pool_type: last` (SigLIP-style): every position matters, so nothing is trimmed."""
    loaded = random_model("tiny-bidirectional")
    assert trimmed.causal_tower(loaded.model) is None
    tokens = loaded.tokenizer(PROMPTS)
    assert torch.equal(trimmed.length_order(loaded.model, tokens), torch.arange(len(PROMPTS)))
    with torch.no_grad():
        full = loaded.model.encode_text(tokens)
        assert torch.equal(trimmed.encode_tokens(loaded.model, tokens), full)
        # and trimming would be wrong here: the padding positions change the pooled feature
        cut = loaded.model.encode_text(tokens[:, :12])
    assert not torch.allclose(cut, full, atol=1e-3)
