"""Tables from score records: layout, means, missing cells, files, and the MLflow aggregate run."""
import math

import pandas as pd
import pytest

from pipeline.aggregate import ScoreRecord, aggregate, build_table, build_tables, latest_scores, write_tables


def record(model, dataset, prompts="p", acc1=0.5, main="acc1", start=0, **extra):
    return ScoreRecord(model, "tag", dataset, prompts, main, {"acc1": acc1, "mean_per_class_recall": acc1 / 2, **extra},
                       f"{model}-{dataset}-{prompts}", start)


def test_rows_are_models_columns_datasets_plus_mean():
    table = build_table([record("A", "d1", acc1=0.2), record("A", "d2", acc1=0.6), record("B", "d1", acc1=0.4),
                         record("B", "d2", acc1=0.8)], "acc1")
    assert list(table.columns) == ["model", "pretrained", "d1", "d2", "mean"]
    assert table.set_index("model")["mean"].to_dict() == pytest.approx({"A": 0.4, "B": 0.6})


def test_main_metric_is_taken_per_dataset():
    table = build_table([record("A", "d1", acc1=0.2), record("A", "d2", acc1=0.6, main="mean_per_class_recall")], "main")
    assert table.loc[0, "d1"] == pytest.approx(0.2) and table.loc[0, "d2"] == pytest.approx(0.3)


def test_missing_dataset_leaves_cell_and_mean_empty():
    table = build_table([record("A", "d1"), record("A", "d2"), record("B", "d1")], "acc1").set_index("model")
    assert math.isnan(table.loc["B", "d2"]) and math.isnan(table.loc["B", "mean"])
    assert table.loc["A", "mean"] == pytest.approx(0.5)


def test_one_table_per_prompt_set():
    tables = build_tables([record("A", "d1", "x", 0.1), record("A", "d1", "y", 0.9)], "acc1")
    assert set(tables) == {"x", "y"} and tables["y"].loc[0, "d1"] == pytest.approx(0.9)


def test_files_written(tmp_path):
    tables = build_tables([record("A", "d1", "x", 0.1), record("B", "d1", "y", 0.9)], "acc1")
    paths = write_tables(tables, "acc1", tmp_path)
    assert [p.name for p in paths] == ["table.csv", "table.md", "table.png"]
    csv = pd.read_csv(tmp_path / "table.csv")
    assert list(csv.columns) == ["prompts", "model", "pretrained", "d1", "mean"] and len(csv) == 2
    assert "### acc1 — prompts: x" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "table.png").read_bytes()[:4] == b"\x89PNG"


def test_aggregate_logs_an_aggregate_run_and_latest_scores_reads_the_store(store, tmp_path):
    client = store.client
    for value, dataset in [(0.25, "d1"), (0.75, "d1")]:  # the newer run for the same cell wins
        run = client.create_run(store.experiment_id, tags={"stage": "score", "model": "A", "pretrained": "t",
                                                           "dataset": dataset, "prompts": "p", "main_metric": "acc1"})
        client.log_metric(run.info.run_id, "acc1", value)
        client.set_terminated(run.info.run_id, "FINISHED")
    records = latest_scores(store)
    assert [r.metrics["acc1"] for r in records] == [0.75]
    aggregate(store, records, "acc1", tmp_path, {"source": "test"})
    runs = client.search_runs([store.experiment_id], "tags.stage = 'aggregate'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id)} == {"table.csv", "table.md", "table.png"}
