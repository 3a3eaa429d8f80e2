"""Tables from score records: layouts, means, missing cells, external result files, and the MLflow aggregate run."""
import json

import pandas as pd
import pytest

from pipeline.aggregate import aggregate_run, log_files, select
from pipeline.data.prompts import PROMPT_FREE
from pipeline.reports import results, tables
from pipeline.reports.layouts import Request, write_layout
from pipeline.reports.results import ScoreRecord
from tests.conftest import run_pipeline
from tests.loopback import FakeHub
from tests.records import PUBLISHED, table_record, write_clip_benchmark_jsons


def test_select_keeps_one_prompt_set_and_one_protocol():
    records = [table_record("A", "d1", prompts="x", protocol="datacomp"), table_record("A", "d1", prompts="y", protocol="datacomp"),
               table_record("A", "d2", prompts=PROMPT_FREE, protocol="datacomp"),
               table_record("A", "d1", prompts="x", protocol="fp32"),
               ScoreRecord("B", "t", "d1", results.EXTERNAL_PROMPTS, "acc1", {"acc1": 0.1})]
    assert [(r.prompts, r.protocol) for r in select(records, "x", "datacomp")] == \
        [("x", "datacomp"), (PROMPT_FREE, "datacomp"), (results.EXTERNAL_PROMPTS, "")]
    assert len(select(records, None, None)) == 5 and len(select(records, None, "fp32")) == 2


def test_aggregate_cli_over_a_results_folder_never_touches_the_network(tmp_path, monkeypatch):
    """A published model's params (M) are the published figure; an unpublished one's are counted once offline
    (a Hugging Face text tower's only when its config is in the Hub cache, which is empty here)."""
    results_dir = tmp_path / "results"
    results_dir.mkdir()
    for name in ("RN50x64", "RN50x64-quickgelu", "mt5-base-ViT-B-32"):
        write_clip_benchmark_jsons(results_dir, PUBLISHED.iloc[2].replace({"RN50x64": name}))
    output = tmp_path / "openclip38.csv"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hub_cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with FakeHub({}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        proc = run_pipeline(tmp_path, f"results_dir={results_dir}", "layout=openclip38", f"output={output}",
                            module="pipeline.aggregate")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert hub.requests == []
    table = pd.read_csv(output, dtype=str, keep_default_na=False).set_index("name")
    assert table.loc["RN50x64", "ImageNet 1k"] == "0.7391"
    assert float(table.loc["RN50x64", "Average perf. on 38 datasets"]) == pytest.approx(float(PUBLISHED.iloc[2, 2]),
                                                                                          abs=6e-5)
    params, flops = tables.published_figures()["RN50x64"]
    assert tuple(table.loc["RN50x64", ["params (M)", "FLOPs (B)"]]) == (params, flops)
    assert float(table.loc["RN50x64-quickgelu", "params (M)"]) == float(params)  # counted: not a published name
    assert table.loc["RN50x64-quickgelu", "FLOPs (B)"] == ""
    assert tuple(table.loc["mt5-base-ViT-B-32", ["params (M)", "FLOPs (B)"]]) == ("", "")

    (results_dir / "bad.json").write_text("not json")
    proc = run_pipeline(tmp_path, f"results_dir={results_dir}", "layout=openclip38", module="pipeline.aggregate")
    assert proc.returncode != 0 and "bad.json" in proc.stderr


# -- the tracking store --------------------------------------------------------------------------------
def test_latest_records_and_the_aggregate_run(store, tmp_path):
    client = store.client
    for value in (0.25, 0.75):  # the newer run for the same cell wins
        run = client.create_run(store.experiment_id, tags={"stage": "job", "model": "A", "pretrained": "t",
                                                           "dataset": "d1", "prompts": "p", "main_metric": "acc1",
                                                           "source": "local", "protocol": "datacomp"})
        client.log_metric(run.info.run_id, "acc1", value)
        client.log_metric(run.info.run_id, "image_retrieval_recall_at_1", value)
        client.set_terminated(run.info.run_id, "FINISHED")
    records = results.latest_in_store(store)
    assert [r.metrics["acc1"] for r in records] == [0.75]
    assert records[0].metrics["image_retrieval_recall@1"] == 0.75  # MLflow's name mapped back
    written = write_layout("per_prompts", Request(records, "acc1", tmp_path))
    with aggregate_run(store, {"source": "test"}) as run_id:
        log_files(store, run_id, written.files)
    [run] = client.search_runs([store.experiment_id], "tags.stage = 'aggregate'")
    assert run.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"table.csv", "table.md", "intervals.csv", "table.png", "heatmap.png",
                                                                          "results.csv"}


def test_a_failing_aggregate_step_ends_the_sweep_with_status_1(tmp_path, capsys):
    """Hydra turns a callback's exception into a warning and exits 0; the sweep's aggregate step exits 1 instead."""
    from pipeline.aggregate import AggregateCallback
    from tests.conftest import compose_config

    sweep_dir = tmp_path / "sweep"
    config = compose_config(f"hydra.sweep.dir={sweep_dir}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                            f"tracking.artifact_location={tmp_path}/artifacts", return_hydra_config=True)
    callback = AggregateCallback()
    callback.on_multirun_start(config)
    (sweep_dir / "0").mkdir()
    (sweep_dir / "0" / "result.json").write_text(json.dumps({"job_run_id": "0" * 32}))  # no such run in the store
    with pytest.raises(SystemExit) as stopped:
        callback.on_multirun_end(config)
    assert stopped.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("Error: the MLflow tracking store failed")
    (sweep_dir / "0" / "result.json").write_text("{not json")  # a bug, not an input: said with its traceback
    with pytest.raises(SystemExit):
        callback.on_multirun_end(config)
    assert "Error: the sweep's aggregate step failed: JSONDecodeError" in capsys.readouterr().err
