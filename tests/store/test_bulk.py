"""Runs written many at once are the runs MLflow's client writes one by one: the same info, tags, params, metrics
and dataset inputs, on a SQL store and on a tracking server."""
from __future__ import annotations

import math

from mlflow.entities import Dataset, DatasetInput, InputTag

from pipeline.store import bulk


def dataset_input(name: str) -> DatasetInput:
    return DatasetInput(Dataset(name=name, digest="d1", source_type="local", source='{"uri": "/x"}'),
                        tags=[InputTag("mlflow.data.context", "test")])


def runs(count: int) -> list[bulk.NewRun]:
    return [bulk.NewRun(f"job:{n}", {"stage": "job", "model": f"m{n}"}, {"batch_size": 64, "long": "x" * 7000},
                        {"acc1": 0.5 + n / 100, "recall@1": 0.25, "ci_low": math.nan}, [dataset_input("shapes")])
            for n in range(count)]


def comparable(run) -> tuple:
    data = run.data
    return (run.info.status, run.info.lifecycle_stage, run.info.run_name, dict(data.tags), dict(data.params),
            {k: (round(v, 12) if not math.isnan(v) else "nan") for k, v in data.metrics.items()},
            [(i.dataset.name, i.dataset.digest, [(t.key, t.value) for t in i.tags]) for i in run.inputs.dataset_inputs])


def test_runs_written_at_once_equal_runs_written_by_the_client(store):
    written = bulk.write(store, runs(3))
    one = runs(1)[0]
    bulk._write_client(store, one)
    by_client = store.client.get_run(one.run_id)
    at_once = store.client.get_run(written[0])
    assert comparable(at_once) == comparable(by_client)
    assert at_once.info.artifact_uri.endswith(f"{written[0]}/artifacts") and at_once.info.end_time
    found = store.client.search_runs([store.experiment_id], "tags.stage = 'job' and metrics.acc1 > 0.505")
    assert {run.info.run_id for run in found} == set(written[1:])


def test_a_tracking_server_gets_them_through_its_client(tmp_path):
    from pipeline.store import tracking
    from tests.loopback import mlflow_server

    with mlflow_server(tmp_path) as url:
        store = tracking.connect(url, "bulk")
        written = bulk.write(store, runs(4))
        assert sorted(store.client.get_run(run_id).info.run_name for run_id in written) == [
            "job:0", "job:1", "job:2", "job:3"]
        bulk.tag(store, {written[0]: {"table_row": "00001"}, written[1]: {"table_row": "00000"}})
        assert store.client.get_run(written[1]).data.tags["table_row"] == "00000"


def test_tags_set_at_once_are_the_tags_set_one_by_one(store):
    """A row tag set again (a sweep aggregated twice) replaces the old value, as `set_tag` does; other tags stay."""
    at_once, one_by_one = bulk.write(store, runs(2))
    for run_id in (at_once, one_by_one):
        store.client.set_tag(run_id, "table_row", "00007")
    bulk.tag(store, {at_once: {"table_row": "00002", "extra": "x"}})
    store.client.set_tag(one_by_one, "table_row", "00002")
    store.client.set_tag(one_by_one, "extra", "x")
    tags = [store.client.get_run(run_id).data.tags for run_id in (at_once, one_by_one)]
    bulk.tag(store, {at_once: {"only_here": "1"}, one_by_one: {"table_row": "00003"}})  # each run its own keys
    after = [store.client.get_run(run_id).data.tags for run_id in (at_once, one_by_one)]
    assert after[0]["table_row"] == "00002" and after[0]["only_here"] == "1" and after[1]["table_row"] == "00003"
    assert "only_here" not in after[1] and after[1]["extra"] == "x"
    own = ("model", "mlflow.runName")  # the two runs' own names
    assert tags[0]["table_row"] == "00002" and {k: v for k, v in tags[0].items() if k not in own} == {
        k: v for k, v in tags[1].items() if k not in own}
