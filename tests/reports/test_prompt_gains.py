"""The analyses the aggregate step draws from records: prompt-engineering gains, ensembling curves, the heatmap
matrix, metrics over training, and the HTML report."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.reports import prompt_gains
from pipeline.reports.results import ScoreRecord
from tests.records import prompt_record, replicates_from


def test_prompt_gains_match_a_hand_computation():
    rng = np.random.default_rng(3)
    values = {("cars", "classname"): 0.50, ("cars", "dataset"): 0.58, ("pets", "classname"): 0.80,
              ("pets", "dataset"): 0.83}
    sizes = {"cars": 100, "pets": 300}
    records = [prompt_record(d, p, v, sizes[d]) for (d, p), v in values.items()]
    reps = {r.score_run: r.value("acc1") + rng.normal(0, 0.02, 1000) for r in records}
    table = prompt_gains.gains(records, "acc1", replicates_from(reps))

    rows = table.set_index("dataset")
    for dataset in ("cars", "pets"):
        gain = values[(dataset, "dataset")] - values[(dataset, "classname")]
        assert rows.loc[dataset, "gain"] == pytest.approx(gain)
        difference = reps[f"score-{dataset}-dataset-ViT-B-32"] - reps[f"score-{dataset}-classname-ViT-B-32"]
        assert rows.loc[dataset, "ci_low"] == pytest.approx(np.percentile(difference, 2.5))
        assert rows.loc[dataset, "ci_high"] == pytest.approx(np.percentile(difference, 97.5))
    mean = rows.loc["mean (2 datasets)"]
    assert mean["gain"] == pytest.approx(((0.58 - 0.50) + (0.83 - 0.80)) / 2)
    weighted = rows.loc["size-weighted mean (2 datasets)"]
    assert weighted["gain"] == pytest.approx(((0.58 - 0.50) * 100 + (0.83 - 0.80) * 300) / 400)
    assert set(table["prompts"]) == {"dataset"}


def test_prompt_gains_ignore_prompt_free_tasks_and_need_the_class_name_baseline():
    records = [prompt_record("cars", "classname", 0.5), prompt_record("cars", "dataset", 0.6),
               ScoreRecord("ViT-B-32", "openai", "flickr", "*", "mean_recall@1", {"mean_recall@1": 0.7, "n": 10},
                           source="datacomp", protocol="datacomp", task="zeroshot_retrieval", score_run="r")]
    reps = {r.score_run: np.full(1000, r.value("main")) for r in records}
    table = prompt_gains.gains(records, "main", replicates_from(reps))
    assert list(table["dataset"]) == ["cars"]  # no retrieval row, no mean over one dataset
    with pytest.raises(PipelineError, match="prompts=classname"):
        prompt_gains.gains(records[1:], "main", replicates_from(reps))


def test_prompt_gains_plot_is_written(tmp_path: Path):
    records = [prompt_record(d, p, v) for d in ("cars", "pets") for p, v in (("classname", 0.5), ("dataset", 0.6),
                                                                       ("a_photo_of", 0.55))]
    reps = {r.score_run: r.value("acc1") + np.linspace(-0.01, 0.01, 1000) for r in records}
    table = prompt_gains.gains(records, "acc1", replicates_from(reps))
    path = prompt_gains.plot(table, tmp_path / "gains.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"












def test_prompt_gains_average_over_every_copy_of_every_dataset(tmp_path: Path):
    """A dataset read from two copies is two datasets of one average, not two averages."""
    records = [replace(prompt_record(d, p, v), source=s) for d, s in (("cars", "datacomp"), ("cars", "clip_benchmark"),
                                                                ("pets", "datacomp"))
               for p, v in (("classname", 0.5), ("dataset", 0.6))]
    records = [replace(r, score_run=f"{r.score_run}-{r.source}") for r in records]
    reps = {r.score_run: np.full(1000, r.value("acc1")) for r in records}
    table = prompt_gains.gains(records, "acc1", replicates_from(reps))
    assert list(table["dataset"]) == ["cars (clip_benchmark)", "cars (datacomp)", "pets", "mean (3 datasets)",
                                      "size-weighted mean (3 datasets)"]
    assert prompt_gains.plot(table, tmp_path / "gains.png").stat().st_size > 1000
