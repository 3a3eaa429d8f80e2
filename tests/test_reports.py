"""The analyses the aggregate step draws from records: prompt-engineering gains, ensembling curves, the heatmap
matrix, metrics over training, and the HTML report."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import PipelineError, ensembling, heatmap, job_run, prompt_gains, report, tables, training_curves
from pipeline.results import Bootstrap, ScoreRecord


def record(dataset: str, prompts: str, acc1: float, n: int = 100, model: str = "ViT-B-32", **extra) -> ScoreRecord:
    return ScoreRecord(model, "openai", dataset, prompts, "acc1", {"acc1": acc1, "n": n}, run_id=f"{dataset}-{prompts}",
                       source="datacomp", protocol="datacomp", task="zeroshot_classification",
                       score_run=f"score-{dataset}-{prompts}-{model}", **extra)


def replicates_from(table: dict[str, np.ndarray]):
    return lambda r: Bootstrap({"acc1": table[r.score_run]}, order="same")


def test_prompt_gains_match_a_hand_computation():
    rng = np.random.default_rng(3)
    values = {("cars", "classname"): 0.50, ("cars", "dataset"): 0.58, ("pets", "classname"): 0.80,
              ("pets", "dataset"): 0.83}
    sizes = {"cars": 100, "pets": 300}
    records = [record(d, p, v, sizes[d]) for (d, p), v in values.items()]
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
    records = [record("cars", "classname", 0.5), record("cars", "dataset", 0.6),
               ScoreRecord("ViT-B-32", "openai", "flickr", "*", "mean_recall@1", {"mean_recall@1": 0.7, "n": 10},
                           source="datacomp", protocol="datacomp", task="zeroshot_retrieval", score_run="r")]
    reps = {r.score_run: np.full(1000, r.value("main")) for r in records}
    table = prompt_gains.gains(records, "main", replicates_from(reps))
    assert list(table["dataset"]) == ["cars"]  # no retrieval row, no mean over one dataset
    with pytest.raises(PipelineError, match="prompts=classname"):
        prompt_gains.gains(records[1:], "main", replicates_from(reps))


def test_prompt_gains_plot_is_written(tmp_path: Path):
    records = [record(d, p, v) for d in ("cars", "pets") for p, v in (("classname", 0.5), ("dataset", 0.6),
                                                                       ("a_photo_of", 0.55))]
    reps = {r.score_run: r.value("acc1") + np.linspace(-0.01, 0.01, 1000) for r in records}
    table = prompt_gains.gains(records, "acc1", replicates_from(reps))
    path = prompt_gains.plot(table, tmp_path / "gains.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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


def test_heatmap_matrix_labels_rows_by_what_varies_and_ends_with_the_mean(tmp_path: Path):
    records = [record("cars", "dataset", 0.5), record("pets", "dataset", 0.7),
               record("cars", "dataset", 0.6, model="ViT-L-14"), record("pets", "dataset", 0.9, model="ViT-L-14")]
    values = heatmap.matrix(tables.build_tables(records, "acc1"))
    assert list(values.columns) == ["cars", "pets", "mean"]
    assert list(values.index) == ["ViT-B-32 / openai", "ViT-L-14 / openai"]
    assert values.loc["ViT-L-14 / openai", "mean"] == pytest.approx(0.75)
    path = heatmap.plot(values, "acc1", tmp_path / "heatmap.png")
    assert path.stat().st_size > 1000


def test_checkpoint_position_from_the_file_name_or_the_checkpoint(tmp_path: Path):
    run = tmp_path / "logs" / "my-run" / "checkpoints"
    run.mkdir(parents=True)
    assert job_run.checkpoint_position(run / "epoch_7.pt") == {"checkpoint_epoch": "7", "checkpoint_run": "my-run"}
    assert job_run.checkpoint_position(tmp_path / "step-1200.pt")["checkpoint_step"] == "1200"
    saved = tmp_path / "latest.pt"
    torch.save({"epoch": 3, "step": 900, "state_dict": {"w": torch.zeros(2)}}, saved)
    assert job_run.checkpoint_position(saved) == {"checkpoint_epoch": "3", "checkpoint_step": "900",
                                                  "checkpoint_run": tmp_path.name}
    plain = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, plain)
    assert job_run.checkpoint_position(plain) == {}
    assert job_run.checkpoint_position(tmp_path / "clip_multistep2.pt") == {}  # a name, not a position


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
    assert list(table["epoch"]) == [1, 2, 10]
    assert list(table["checkpoint"]) == ["epoch_1.pt", "epoch_2.pt", "epoch_10.pt"]
    assert table["mean"].tolist() == pytest.approx([0.15, 0.4, 0.75])
    assert training_curves.plot(table, "acc1", tmp_path / "curves.png").stat().st_size > 1000
    assert not training_curves.applies(records[:2])  # one checkpoint is no curve


def test_report_embeds_tables_and_plots_and_links_runs(tmp_path: Path):
    pd.DataFrame({"model": ["ViT-B-32"], "cars": [0.51234]}).to_csv(tmp_path / "table.csv", index=False)
    heatmap.plot(pd.DataFrame({"cars": [0.5], "mean": [0.5]}, index=["m"]), "acc1", tmp_path / "heatmap.png")
    records = [record("cars", "dataset", 0.51234)]
    links = report.Links("http://127.0.0.1:5000", "7", sweep_run="sweep1", aggregate_run="agg1")
    page = report.write(tmp_path / "report.html", "Sweep", [report.Section("Results", [tmp_path / "table.csv",
                                                                           tmp_path / "heatmap.png"])], records, links)
    text = page.read_text()
    assert "<h2>Results</h2>" in text and "0.5123" in text
    assert "data:image/png;base64," in text
    assert "#/experiments/7/runs/agg1" in text and "#/experiments/7/runs/sweep1" in text
    assert "#/experiments/7/runs/cars-dataset" in text  # the job run's own link


def test_prompt_gains_average_over_every_copy_of_every_dataset(tmp_path: Path):
    """A dataset read from two copies is two datasets of one average, not two averages."""
    records = [replace(record(d, p, v), source=s) for d, s in (("cars", "datacomp"), ("cars", "clip_benchmark"),
                                                                ("pets", "datacomp"))
               for p, v in (("classname", 0.5), ("dataset", 0.6))]
    records = [replace(r, score_run=f"{r.score_run}-{r.source}") for r in records]
    reps = {r.score_run: np.full(1000, r.value("acc1")) for r in records}
    table = prompt_gains.gains(records, "acc1", replicates_from(reps))
    assert list(table["dataset"]) == ["cars (clip_benchmark)", "cars (datacomp)", "pets", "mean (3 datasets)",
                                      "size-weighted mean (3 datasets)"]
    assert prompt_gains.plot(table, tmp_path / "gains.png").stat().st_size > 1000
