import numpy as np
import torch
import torch.nn.functional as F

from pipeline.classify import zero_shot_logits


def test_zero_shot_logits_follow_the_definition():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(7, 16)).astype(np.float32) * 5
    classifier = F.normalize(torch.from_numpy(rng.normal(size=(16, 4)).astype(np.float32)), dim=0)
    expected = 100.0 * F.normalize(torch.from_numpy(features), dim=-1) @ classifier
    np.testing.assert_allclose(zero_shot_logits(features, classifier.numpy()), expected.numpy(), rtol=1e-5, atol=1e-4)


def test_logits_ignore_image_feature_scale():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(5, 8)).astype(np.float32)
    classifier = rng.normal(size=(8, 3)).astype(np.float32)
    np.testing.assert_allclose(zero_shot_logits(features, classifier), zero_shot_logits(features * 37, classifier),
                               rtol=1e-5)
