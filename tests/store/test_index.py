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
    grow(store.uri, store.experiment_id, 0, 300)  # a store of 300 runs, 30 of them job runs, as a lab's
    index = StoreIndex.of(store, tmp_path / "index")
    index.refresh()
    assert results.latest_in_store(store) == results.latest_in_store_searched(store)
    assert len(index.job_runs()) == 30

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
