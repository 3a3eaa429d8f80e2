"""The analyses the aggregate step draws from records: prompt-engineering gains, ensembling curves, the heatmap
matrix, metrics over training, and the HTML report."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.reports import ensembling


def test_ensembling_curve_matches_a_hand_computation(monkeypatch):
    rng = np.random.default_rng(0)
    images, labels = rng.normal(size=(40, 8)), rng.integers(0, 3, 40)
    templates = [rng.normal(size=(3, 8)) for _ in range(4)]
    monkeypatch.setattr(ensembling, "IMAGE_CHUNK_ELEMENTS", 4 * 3 * 7)  # chunks of 7 images must change nothing
    [curve] = ensembling.accuracy_curves(images, labels, templates, [[2, 0, 3, 1]])
    for n in range(1, 5):
        chosen = [templates[i] / np.linalg.norm(templates[i], axis=1, keepdims=True) for i in [2, 0, 3, 1][:n]]
        mean = np.mean(chosen, axis=0)
        classifier = mean / np.linalg.norm(mean, axis=1, keepdims=True)
        expected = ((images / np.linalg.norm(images, axis=1, keepdims=True)) @ classifier.T).argmax(1) == labels
        assert curve[n - 1] == pytest.approx(expected.mean())
    table = ensembling.curves(images, labels, templates, orders=5)
    assert list(table["templates"]) == [1, 2, 3, 4]
    assert (table["random_min"] <= table["random_mean"]).all() and (table["random_mean"] <= table["random_max"]).all()
    # Every order averages the same templates in the end.
    assert table["random_min"].iloc[-1] == pytest.approx(table["listed_order"].iloc[-1])
