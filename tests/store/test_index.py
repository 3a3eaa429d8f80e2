"""The store's index against the store itself: after runs are added, finished, deleted and quarantined, a refresh
gives what MLflow's own search gives, and the table built from it is the table built run by run."""
from __future__ import annotations

import time

import numpy as np

from pipeline.bench.store import grow
from pipeline.reports import results
from pipeline.store import artifacts
from pipeline.store.index import StoreIndex
from pipeline.store.tracking import search_all


def job_run(store, model: str, dataset: str, acc1: float, finish: bool = True) -> str:
    client = store.client
    run_id = client.create_run(store.experiment_id, tags={"stage": "job", "model": model, "pretrained": "tag",
                                                            "dataset": dataset, "prompts": "dataset",
                                                            "main_metric": "acc1"}).info.run_id
    client.log_metric(run_id, "acc1", acc1)
    if finish:
        client.set_terminated(run_id, "FINISHED")
    return run_id


def test_a_refreshed_index_gives_the_stores_own_table(store, tmp_path, monkeypatch):
    """Without the overlap (as if every clock agreed), a run still running at one refresh is read again at the next
    by its id, however many runs started after it."""
    from pipeline.store import index as index_module

    monkeypatch.setattr(index_module, "OVERLAP_MS", 0)
    grow(store.uri, store.experiment_id, 0, 3000)  # a store of 3,000 runs, 300 of them job runs, as a lab's
    index = StoreIndex.of(store, tmp_path / "index")
    index.refresh()
    assert results.latest_in_store(store) == results.latest_in_store_searched(store)
    assert len(index.job_runs()) == 300

    running = job_run(store, "model9", "dataset1", 0.7, finish=False)
    time.sleep(0.01)
    kept = job_run(store, "model0", "dataset0", 0.9)     # newer than the grown ones: it replaces their row
    gone = [run.info.run_id for run in search_all(store, "tags.stage = 'job'")[5:8]]
    for run_id in gone:
        store.client.delete_run(run_id)
    index.refresh()
    assert {run.run_id for run in index.job_runs()} == {run.info.run_id for run in search_all(
        store, "tags.stage = 'job' and attributes.status = 'FINISHED'")}
    assert kept in {run.run_id for run in index.job_runs()} and not set(gone) & {r.run_id for r in index.job_runs()}
    store.client.set_terminated(running, "FINISHED")  # a run that was running at the last refresh finishes
    index.refresh()
    assert running in {run.run_id for run in index.job_runs()}
    assert sorted(results.latest_in_store(store), key=lambda r: r.run_id) == sorted(
        results.latest_in_store_searched(store), key=lambda r: r.run_id)


def test_a_quarantined_run_is_no_longer_served_by_the_index(store, tmp_path):
    from pipeline.store.artifacts import StageOutput
    from pipeline.store.cache import StageCache, StageRequest

    cache = StageCache(store)
    made = cache.get_or_compute(StageRequest("embed", "k1", {}, {}, "embed:k1"),
                                lambda: StageOutput({"x": np.arange(3.0)}))
    index = StoreIndex.of(store, tmp_path / "index")
    index.refresh()
    assert index.servable(["k1"])["k1"].run_id == made.run_id
    time.sleep(0.01)
    artifacts.mark_corrupt(store.client, made.run_id, "x.npy does not match its checksum")
    index.refresh()
    assert index.servable(["k1"]) == {}


def test_a_sql_stores_runs_read_from_its_tables_are_what_mlflows_search_gives(store):
    """The index reads a SQL store's tables itself (without params); every run, whatever its state and metrics, is
    what MLflow's search presents: attributes, tags and latest metrics, NaN and infinities as MLflow keeps them."""
    from pipeline.store import sql

    grow(store.uri, store.experiment_id, 0, 40)
    odd = job_run(store, "model1", "dataset1", float("nan"))
    store.client.log_metric(odd, "acc5", float("inf"))
    store.client.log_metric(odd, "acc1", 0.25, step=1)  # the latest value is the one the index keeps
    store.client.log_param(odd, "batch_size", "64")
    running = job_run(store, "model2", "dataset2", 0.5, finish=False)
    store.client.delete_run(job_run(store, "model3", "dataset3", 0.5))
    searched = {run.info.run_id: run for run in search_all(store, "", view="ALL")}
    read = {attributes["run_uuid"]: (attributes, tags, metrics) for attributes, tags, metrics in sql.runs(store)}
    assert read.keys() == searched.keys() and len(read) == 43
    for run_id, (attributes, tags, metrics) in read.items():
        info = searched[run_id].info
        assert (attributes["status"], attributes["lifecycle_stage"], attributes["start_time"], attributes["end_time"],
                attributes["artifact_uri"]) == (info.status, info.lifecycle_stage, info.start_time, info.end_time,
                                                info.artifact_uri)
        assert tags == searched[run_id].data.tags
        assert metrics.keys() == searched[run_id].data.metrics.keys()
        assert np.allclose(list(metrics.values()), list(searched[run_id].data.metrics.values()), equal_nan=True)
    assert read[odd][2]["acc1"] == 0.25 and read[running][0]["status"] == "RUNNING"
    by_id = sql.runs(store, run_ids=[odd, running])
    assert {attributes["run_uuid"] for attributes, _, _ in by_id} == {odd, running}
    assert sql.states(store)[running] == ("RUNNING", "active")


def test_an_index_of_a_tracking_server_follows_its_runs_through_its_search(tmp_path, monkeypatch):
    """A server has no tables to list: new runs by start time (here with no overlap, as if every clock agreed),
    the runs running at the last refresh by id, deletions by its deleted runs."""
    from pipeline.store import index as index_module
    from pipeline.store import tracking
    from tests.loopback import mlflow_server

    monkeypatch.setattr(index_module, "OVERLAP_MS", 0)
    with mlflow_server(tmp_path) as url:
        store = tracking.connect(url, "indexed")
        first = [job_run(store, f"model{n}", "dataset0", 0.5 + n / 10) for n in range(3)]
        running = job_run(store, "model9", "dataset1", 0.7, finish=False)
        index = StoreIndex.of(store, tmp_path / "index")
        assert index.refresh() == 4
        time.sleep(0.01)
        later = job_run(store, "model0", "dataset0", 0.95)  # replaces first[0]'s row in the table
        store.client.delete_run(first[1])
        store.client.set_terminated(running, "FINISHED")
        index.refresh()
        assert {run.run_id for run in index.job_runs()} == {first[2], running, later, first[0]}
        store.client.restore_run(first[1])  # started long before the watermark: found again by its id
        index.refresh()
        assert first[1] in {run.run_id for run in index.job_runs()}
        assert sorted(results.latest_in_store(store), key=lambda r: r.run_id) == sorted(
            results.latest_in_store_searched(store), key=lambda r: r.run_id)


def test_a_run_indexed_while_running_is_read_again_when_asked_for(store, tmp_path):
    """Another process's refresh saw a sweep's job run still running: the sweep's own table asks for it by id and
    gets it finished, with its metric, not the row of the refresh."""
    index = StoreIndex.of(store, tmp_path / "index")
    running = job_run(store, "model1", "dataset1", 0.5, finish=False)
    index.refresh()
    assert index.runs([running])[running].status == "RUNNING"
    store.client.log_metric(running, "acc5", 0.75)
    store.client.set_terminated(running, "FINISHED")
    run = index.fetched([running])[running]
    assert run.status == "FINISHED" and run.metrics["acc5"] == 0.75 and run.artifact_uri
