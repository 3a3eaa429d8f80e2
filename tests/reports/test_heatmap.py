"""The analyses the aggregate step draws from records: prompt-engineering gains, ensembling curves, the heatmap
matrix, metrics over training, and the HTML report."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.reports import heatmap, tables
from tests.records import prompt_record


def test_heatmap_matrix_labels_rows_by_what_varies_and_ends_with_the_mean(tmp_path: Path):
    records = [prompt_record("cars", "dataset", 0.5), prompt_record("pets", "dataset", 0.7),
               prompt_record("cars", "dataset", 0.6, model="ViT-L-14"), prompt_record("pets", "dataset", 0.9, model="ViT-L-14")]
    values = heatmap.matrix(tables.build_tables(records, "acc1"))
    assert list(values.columns) == ["cars", "pets", "mean"]
    assert list(values.index) == ["ViT-B-32 / openai", "ViT-L-14 / openai"]
    assert values.loc["ViT-L-14 / openai", "mean"] == pytest.approx(0.75)
    path = heatmap.plot(values, "acc1", tmp_path / "heatmap.png")
    assert path.stat().st_size > 1000
