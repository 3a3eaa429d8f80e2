"""The analyses the aggregate step draws from records: prompt-engineering gains, ensembling curves, the heatmap
matrix, metrics over training, and the HTML report."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.reports import training_curves
from pipeline.reports.results import ScoreRecord


def test_training_curves_table_and_plot(tmp_path: Path):
    def at(epoch: int, dataset: str, value: float) -> ScoreRecord:
        return ScoreRecord(
            "ViT-B-32", f"epoch_{epoch}.pt", dataset, "dataset", "acc1", {"acc1": value}, run_id=f"{epoch}{dataset}",
            source="local", protocol="datacomp", task="zeroshot_classification",
            tags={"checkpoint_epoch": str(epoch), "checkpoint_run": "run1"})

    records = [at(e, d, v) for e, values in ((2, (0.3, 0.5)), (1, (0.1, 0.2)), (10, (0.6, 0.9)))
               for d, v in zip(("cars", "pets"), values)]
    assert training_curves.applies(records)
    table = training_curves.frame(records, "acc1")
    assert list(table["epoch"]) == [1, 2, 10] and str(table["epoch"].dtype) == "Int64"  # a count, printed as one
    assert list(table["checkpoint"]) == ["epoch_1.pt", "epoch_2.pt", "epoch_10.pt"]
    assert table["mean"].tolist() == pytest.approx([0.15, 0.4, 0.75])
    assert training_curves.plot(table, "acc1", tmp_path / "curves.png").stat().st_size > 1000
    assert not training_curves.applies(records[:2])  # one checkpoint is no curve
