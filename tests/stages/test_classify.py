"""Zero-shot logits: the definition, scale invariance, and each precision as the references compute it."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import PipelineError
from pipeline.models.precision import Recipe, with_dtype
from pipeline.stages.classify import zero_shot_logits
from pipeline.stages import StageResult


def test_zero_shot_logits_follow_the_definition():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(7, 16)).astype(np.float32) * 5
    classifier = F.normalize(torch.from_numpy(rng.normal(size=(16, 4)).astype(np.float32)), dim=0)
    expected = 100.0 * F.normalize(torch.from_numpy(features), dim=-1) @ classifier
    logits = zero_shot_logits({"image_features": features}, {"classifier": classifier.numpy()})
    np.testing.assert_allclose(logits, expected.numpy(), rtol=1e-5, atol=1e-4)


def test_logits_ignore_image_feature_scale():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(5, 8)).astype(np.float32)
    classifier = {"classifier": rng.normal(size=(8, 3)).astype(np.float32)}
    np.testing.assert_allclose(zero_shot_logits({"image_features": features}, classifier),
                               zero_shot_logits({"image_features": features * 37}, classifier), rtol=1e-5)


def test_bf16_features_round_trip_through_storage_to_the_same_logits():
    """Features and classifier produced in bfloat16, stored as float32 with their dtype, give back the bits that
    `with torch.autocast("cpu"): 100. * F.normalize(features) @ classifier` gives on the originals."""
    torch.manual_seed(0)
    features = torch.randn(9, 32).bfloat16()
    classifier = F.normalize(torch.randn(32, 5), dim=0).bfloat16()
    with torch.autocast("cpu"):
        expected = (100.0 * F.normalize(features, dim=-1) @ classifier).float().numpy()
    logits = zero_shot_logits(with_dtype("image_features", features), with_dtype("classifier", classifier),
                              Recipe("amp-bf16", "amp-bf16", "amp-bf16"))
    np.testing.assert_array_equal(logits, expected)
    # the same values multiplied in fp32 are not what clip_benchmark reports under amp
    fp32 = zero_shot_logits({"image_features": features.float().numpy()}, {"classifier": classifier.float().numpy()})
    assert not np.array_equal(fp32, expected) and np.allclose(fp32, expected, atol=1.0)


def test_captions_find_their_images_by_name_and_only_captioned_images_are_scored():
    """A multilingual set's captions name their images: the rows follow the names, whatever the encoding order."""
    from pipeline.stages.classify import caption_owners

    images = StageResult({"image_names": np.array(["c.jpg", "a.jpg", "b.jpg"])}, "k", "r")
    text = StageResult({"caption_names": np.array(["a.jpg", "c.jpg"])}, "k", "r")
    owners, shown = caption_owners(images, text)
    assert list(shown) == [0, 1] and list(owners) == [1, 0]  # b.jpg has no caption: not scored
    with pytest.raises(PipelineError, match="1 captioned images .*d.jpg.* are not among the encoded ones"):
        caption_owners(images, StageResult({"caption_names": np.array(["d.jpg"])}, "k", "r"))
