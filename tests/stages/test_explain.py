"""The explain stage: rerouted attention equals open_clip's, the rollout is Chefer et al.'s rule, the tiny model's
maps point at the object, runs are cached, and the sweep draws the grid of images × models."""
from __future__ import annotations

import json
import random
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from open_clip.transformer import ResidualAttentionBlock
from PIL import Image
from torch import nn

from pipeline.errors import PipelineError
from pipeline.jobs.explaining import EXPLAIN_JOB_STAGE, run_explain_job
from pipeline.models.loading import ModelSpec, load_model
from pipeline.offline import shapes
from pipeline.reports import relevance, results
from pipeline.stages.explain import STAGE, figures, inputs
from pipeline.stages.explain.attention import ExposedAttention, rerouted, vit_blocks, vit_depth
from pipeline.stages.explain.figures import Column
from pipeline.stages.explain.relevance import rollout
from pipeline.store import tracking
from tests import synthetic
from tests.conftest import TRAINING_RUN, compose_config, run_pipeline

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return load_model(ModelSpec("tiny", "tiny-clip", str(tiny_checkpoint)), torch.device("cpu"))


# -- the rerouted attention -----------------------------------------------------------------------------------
def test_rerouted_blocks_give_open_clips_outputs_and_are_restored(tiny):
    torch.manual_seed(0)
    model = tiny.model
    cases = [(model.visual.transformer.resblocks, torch.randn(3, 17, 64), None),        # the image tower
             (model.transformer.resblocks, torch.randn(3, 20, 64), model.attn_mask),   # the text tower's causal mask
             ([ResidualAttentionBlock(768, 12).eval()], torch.randn(2, 50, 768), None),  # ViT-B/32's block shape
             ([ResidualAttentionBlock(64, 4, batch_first=False).eval()], torch.randn(9, 2, 64), None)]
    for blocks, tokens, mask in cases:
        originals = [block.attn for block in blocks]
        with torch.no_grad():
            expected = [block(tokens, attn_mask=mask) for block in blocks]
            with rerouted(list(blocks)) as exposed:
                rerouted_out = [block(tokens, attn_mask=mask) for block in blocks]
                assert all(isinstance(block.attn, ExposedAttention) for block in blocks)
        for want, got, module in zip(expected, rerouted_out, exposed):
            assert (want - got).abs().max() <= TOLERANCE
            heads = module.wrapped.num_heads
            assert module.probs.shape[1] == heads and torch.allclose(module.probs.sum(-1), torch.ones(()))
        assert [block.attn for block in blocks] == originals


def test_exposed_attention_applies_boolean_and_padding_masks_like_multihead_attention():
    torch.manual_seed(1)
    attention = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    tokens = torch.randn(2, 6, 32)
    blocked = torch.rand(6, 6) > 0.6
    blocked.fill_diagonal_(False)
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[1, 5] = True
    want, want_weights = attention(tokens, tokens, tokens, key_padding_mask=padding, attn_mask=blocked)
    got, got_weights = ExposedAttention(attention)(tokens, tokens, tokens, key_padding_mask=padding, attn_mask=blocked)
    assert (want - got).abs().max() <= TOLERANCE and (want_weights - got_weights).abs().max() <= TOLERANCE


def test_probabilities_are_on_the_autograd_path_unlike_multihead_attention_weights(tiny):
    """The reason for rerouting: the weights nn.MultiheadAttention returns do not lead to its output."""
    block = tiny.model.visual.transformer.resblocks[0]
    tokens = torch.randn(1, 17, 64)
    output, weights = block.attn(tokens, tokens, tokens, need_weights=True)
    with pytest.raises(RuntimeError, match="not have been used in the graph"):
        torch.autograd.grad(output.sum(), weights)
    with rerouted([block]) as (exposed,):
        gradient, = torch.autograd.grad(block(tokens).sum(), exposed.probs)
    assert gradient.abs().sum() > 0


# -- the rule -------------------------------------------------------------------------------------------------
def test_rollout_is_chefer_et_al_rule():
    """R = I; for each block R += mean_h((∇A ⊙ A)⁺) R; the class token's row over the patches (eq. 5-6)."""
    generator = torch.Generator().manual_seed(2)
    probs = [torch.rand(1, 2, 3, 3, generator=generator).softmax(-1) for _ in range(2)]
    grads = [torch.randn(1, 2, 3, 3, generator=generator) for _ in range(2)]
    weighted = [np.clip(g[0].numpy() * a[0].numpy(), 0, None).mean(axis=0) for a, g in zip(probs, grads)]
    after_first = np.eye(3) + weighted[0]
    every_block = after_first + weighted[1] @ after_first
    np.testing.assert_allclose(rollout(probs, grads)[0].numpy(), every_block[0, 1:], rtol=1e-6)
    np.testing.assert_allclose(rollout(probs, grads, start_layer=-1)[0].numpy(), weighted[1][0, 1:], rtol=1e-6)


def test_other_towers_are_refused_with_a_clear_message(tiny):
    for arch, why in (("RN50-quickgelu", "image tower is a ResNet"), ("convnext_base", "image tower is a timm model"),
                      ("ViT-L-14-CLIPA", "pools with an attentional pooler or by averaging"),
                      ("coca_ViT-B-32", "pools with an attentional pooler")):
        with pytest.raises(PipelineError, match=f"{why}.*do not apply"):
            vit_depth(arch, arch)
    assert vit_depth("ViT-B-32-quickgelu", "b32") == 12 and vit_depth("tiny-clip", "tiny") == 2
    with pytest.raises(PipelineError, match="image tower is a ResNet"):
        vit_blocks(nn.Module.__new__(type("ModifiedResNet", (nn.Module,), {})), "rn")
    assert len(vit_blocks(tiny.model.visual, "tiny")) == 2


@pytest.mark.parametrize("setting, message", [
    ({"images": 0}, "explain.images=0"),
    ({"images": 6.0}, "explain.images=6.0"),
    ({"images": ["a.png", 3]}, "mixes kinds"),
    ({"images": [2, 5, 2]}, "sample 2 more than once"),
    ({"images": ["a.png"]}, "carry no label"),
    ({"captions": [""]}, "non-empty strings"),
    ({"captions": 5}, "a list of strings"),
    ({"template": "a photo"}, "must hold {c}"),
    ({"template": "a {c} of {}"}, "no other braces"),
    ({"start_layer": "last"}, "must be a whole number"),
    ({"batch_size": 0}, "at least 1"),
])
def test_malformed_explain_settings_are_refused(setting, message):
    cfg = compose_config("explain=relevance").explain
    for key, value in setting.items():
        cfg[key] = value
    with pytest.raises(PipelineError, match=re.escape(message)):
        inputs.ExplainSpec.from_cfg(cfg)


def test_start_layer_is_a_block_of_the_tower_and_negative_counts_from_the_last():
    spec = inputs.ExplainSpec.from_cfg(compose_config("explain=relevance", "explain.start_layer=-1").explain)
    assert spec.for_depth(12, "b32").start_layer == 11  # one setting, one cache key
    with pytest.raises(PipelineError, match="has 2 blocks"):
        replace(spec, start_layer=2).for_depth(2, "tiny")


def test_files_are_keyed_by_their_bytes_and_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = Image.new("RGB", (8, 8), (200, 10, 10))
    for name in ("cat.png", "kitten.png"):
        image.save(tmp_path / name)
    (tmp_path / "truncated.png").write_bytes((tmp_path / "cat.png").read_bytes()[:40])
    cat, kitten = inputs.file_source(("cat.png",)), inputs.file_source(("kitten.png",))
    assert cat.identity["files"] == kitten.identity["files"] and cat.identity != kitten.identity
    assert inputs.file_source(("cat.png", "cat.png")).names == ("cat", "cat-2")
    with pytest.raises(PipelineError, match="truncated.png is not a readable image"):
        inputs.file_source(("truncated.png",))
    with pytest.raises(PipelineError, match="nope.png does not exist"):
        inputs.file_source(("nope.png",))


# -- the tiny model on objects in one quadrant ----------------------------------------------------------------
def object_mass(relevance: np.ndarray, quadrant: tuple[int, int]) -> float:
    """The share of a map's relevance in the object's quadrant (a 2×2 block of the 4×4 patch grid)."""
    rows, columns = relevance.shape
    column, row = quadrant
    inside = relevance[row * rows // 2:(row + 1) * rows // 2, column * columns // 2:(column + 1) * columns // 2]
    return float(inside.sum() / relevance.sum())


def test_tiny_models_maps_point_at_the_object_and_a_second_run_is_served(tmp_path, tiny_checkpoint):
    quadrants = synthetic.write_quadrant_folder(tmp_path / "quadrants")
    overrides = ["explain=relevance", "explain.images=12", "dataset=shapes", "dataset.format=folder",
                 f"dataset.root={tmp_path / 'quadrants'}", f"model.pretrained={tiny_checkpoint}", "device=cpu",
                 f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifact_location={tmp_path}/artifacts"]
    first = run_explain_job(compose_config(*overrides), tmp_path / "job")
    arrays = first.explained.arrays
    assert arrays["relevance"].shape == (12, 4, 4) and not first.explained.hit
    captions = [str(arrays["captions"][c]) for c in arrays["pair_caption"]]
    classes = [caption.removeprefix("a photo of a ").removesuffix(".") for caption in captions]
    assert sorted(classes) == sorted(quadrants)  # every image with its own label's prompt
    share = np.mean([object_mass(m, quadrants[c]) for m, c in zip(arrays["relevance"], classes)])
    area = 0.25
    print(f"mean relevance mass in the object's patches: {share:.3f} ({share / area:.2f}x the area fraction)")
    assert share >= 1.5 * area

    second = run_explain_job(compose_config(*overrides), tmp_path / "again")
    assert second.explained.hit and second.explained.run_id == first.explained.run_id
    np.testing.assert_array_equal(second.explained.arrays["relevance"], arrays["relevance"])
    store = tracking.connect(f"sqlite:///{tmp_path}/mlflow.db", "clip-tables")
    stages = sorted(r.data.tags["stage"] for r in store.client.search_runs([store.experiment_id]))
    assert stages == sorted([STAGE, EXPLAIN_JOB_STAGE, EXPLAIN_JOB_STAGE])
    written = sorted(p.relative_to(tmp_path / "again" / "relevance").parts[0] for p in
                     (tmp_path / "again" / "relevance").rglob("*.*"))
    assert written == ["maps"] * 12 + ["overlays"] * 12
    assert json.loads((tmp_path / "again" / "result.json").read_text())["explain_run_id"] == first.explained.run_id

    with pytest.raises(PipelineError, match="asks for sample 99 of shapes, which has 12 samples"):
        run_explain_job(compose_config(*overrides, "explain.images=[3,99]"))
    explain_runs = store.client.search_runs([store.experiment_id], f"tags.stage = '{STAGE}'")
    assert len(explain_runs) == 1  # the refused miss left no stage run behind


def test_overlay_marks_the_most_relevant_patch():
    image = np.full((32, 32, 3), 128, dtype=np.uint8)
    relevance = np.zeros((4, 4), dtype=np.float32)
    relevance[3, 0] = 1.0
    picture = figures.overlay(image, relevance)
    assert picture.shape[:2] == figures.display_size(image) == (224, 224)
    red = picture[..., 0].astype(int) - picture[..., 2].astype(int)  # jet: hot is red, cold is blue
    hottest = np.unravel_index(red.argmax(), red.shape)
    assert hottest[0] > 168 and hottest[1] < 56  # the bottom-left patch


@pytest.mark.slow
def test_sweep_over_models_draws_the_grid(tmp_path, tiny_checkpoint):
    """Two checkpoints of the tiny model, two image files, one caption: the aggregate draws images × models."""
    images = []
    for name, quadrant in (("top-left", (0, 0)), ("bottom-right", (1, 1))):
        path = tmp_path / f"{name}.png"
        shapes.draw_shape(0, random.Random(3), region=(16 * quadrant[0], 16 * quadrant[1], 16)).save(path)
        images.append(str(path))
    checkpoints = [str(TRAINING_RUN / "step_600.pt"), str(tiny_checkpoint)]
    proc = run_pipeline(tmp_path, "-m", "explain=relevance", f"explain.images=[{','.join(images)}]",
                        "explain.captions=['a photo of a red circle.']", f"model.pretrained={','.join(checkpoints)}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep_dir, = (tmp_path / "outputs" / "multirun").glob("*/*")
    grid = sweep_dir / "relevance_a-photo-of-a-red-circle.png"
    with Image.open(grid) as picture:
        assert picture.size[0] > picture.size[1]  # 3 columns (image + 2 models) by 2 rows
    assert "Relevance maps" in (sweep_dir / "report.html").read_text()
    store = tracking.connect(f"sqlite:///{tmp_path}/outputs/mlflow.db", "clip-tables")
    assert results.latest_in_store(store) == []  # explain jobs never reach the tables
    aggregate, = store.client.search_runs([store.experiment_id], "tags.stage = 'aggregate'")
    assert grid.name in [a.path for a in store.client.list_artifacts(aggregate.info.run_id)]
    explain_runs = store.client.search_runs([store.experiment_id], f"tags.stage = '{STAGE}'")
    assert len(explain_runs) == 2
    overlays = store.client.list_artifacts(explain_runs[0].info.run_id, "overlays")
    assert len(overlays) == 2 and all(a.path.endswith(".png") for a in overlays)


@pytest.mark.slow
def test_a_resnet_model_is_refused_before_any_run(tmp_path):
    proc = run_pipeline(tmp_path, "explain=relevance", "model=rn50_openai", "explain.images=[x.png]",
                        "explain.captions=[a dog]")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "Error: model rn50_openai (RN50-quickgelu): its image tower is a ResNet, so relevance maps")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs" / "mlflow.db").exists()


def test_the_sweeps_grid_is_one_figure_per_caption_with_distinct_file_names():
    def column(captions: list[str], pairs: list[tuple[int, int]]) -> Column:
        return Column("m", {"image_names": np.array(["a.png", "b.png"]), "captions": np.array(captions),
                            "pair_image": np.array([i for i, _ in pairs]), "pair_caption": np.array([c for _, c in pairs])})

    per_caption = relevance.figures_for([column(["A dog.", "a dog"], [(0, 0), (1, 0), (0, 1), (1, 1)])])
    assert [stem for stem, _, _ in per_caption] == ["relevance_a-dog", "relevance_a-dog-2"]  # slug alike, kept apart
    assert per_caption[0][1] == [("a.png", "A dog."), ("b.png", "A dog.")]
    own = relevance.figures_for([column(["a cat", "a dog"], [(0, 0), (1, 1)])])  # each image its class prompt
    assert [(stem, rows) for stem, rows, _ in own] == [("relevance", [("a.png", "a cat"), ("b.png", "a dog")])]
