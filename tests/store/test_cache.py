"""The stage cache against a real SQLite MLflow store."""
import math
from pathlib import Path

import numpy as np
import pytest

from pipeline.store import tracking
from pipeline.store.artifacts import StageOutput
from pipeline.store.cache import StageCache, StageRequest, cache_key
from pipeline.store.claims import CLAIM_STAGE, RELEASED, STATE_TAG


def request(key: str = "k1") -> StageRequest:
    return StageRequest("embed", key, {"model": "m", "dataset": "d", "prompts": "p"}, {"a.b": 1}, name="test")


class Counting:
    def __init__(self, output: StageOutput):
        self.output, self.calls = output, 0

    def __call__(self) -> StageOutput:
        self.calls += 1
        return self.output


OUTPUT = StageOutput(arrays={"x": np.arange(6, dtype=np.float32).reshape(2, 3)},
                     metrics={"acc1": 0.5, "acc5": math.nan})


def finished_runs(store, key):
    return store.client.search_runs([store.experiment_id], f"tags.cache_key = '{key}' and attributes.status = 'FINISHED'")


def test_key_depends_on_config_inputs_and_version_only():
    base = cache_key("embed", "1", {"a": 1, "b": [1, 2]}, ["x"])
    assert base == cache_key("embed", "1", {"b": [1, 2], "a": 1}, ["x"])  # key order is irrelevant
    assert base != cache_key("embed", "2", {"a": 1, "b": [1, 2]}, ["x"])
    assert base != cache_key("embed", "1", {"a": 2, "b": [1, 2]}, ["x"])
    assert base != cache_key("embed", "1", {"a": 1, "b": [1, 2]}, ["y"])


def test_miss_then_hit_round_trips_arrays_and_metrics(store):
    cache = StageCache(store)
    compute = Counting(OUTPUT)
    first = cache.get_or_compute(request(), compute)
    second = cache.get_or_compute(request(), compute)
    assert compute.calls == 1 and not first.hit and second.hit and second.run_id == first.run_id
    np.testing.assert_array_equal(second.arrays["x"], OUTPUT.arrays["x"])
    assert second.metrics["acc1"] == 0.5 and math.isnan(second.metrics["acc5"])
    run = store.client.get_run(first.run_id)
    assert run.data.tags["stage"] == "embed" and run.data.tags["cache_key"] == "k1"
    assert run.data.params["a.b"] == "1" and run.data.metrics["acc1"] == 0.5


def test_artifacts_are_plain_npy_without_pickle(store, tmp_path):
    result = StageCache(store).get_or_compute(request(), Counting(OUTPUT))
    local = store.client.download_artifacts(result.run_id, "x.npy", str(tmp_path))
    np.testing.assert_array_equal(np.load(local, allow_pickle=False), OUTPUT.arrays["x"])


def test_corrupt_artifact_is_detected_and_recomputed(store, tmp_path, caplog):
    cache = StageCache(store)
    compute = Counting(OUTPUT)
    first = cache.get_or_compute(request(), compute)
    artifact = Path(store.client.get_run(first.run_id).info.artifact_uri.removeprefix("file://")) / "x.npy"
    artifact.write_bytes(artifact.read_bytes()[:-4] + b"\0\0\0\1")
    again = cache.get_or_compute(request(), compute)
    assert compute.calls == 2 and not again.hit and again.run_id != first.run_id
    assert "corrupt" in caplog.text
    assert store.client.get_run(first.run_id).data.tags["cache_store"] == "false"
    assert cache.get_or_compute(request(), compute).run_id == again.run_id  # the fresh run is served next


def test_failed_stage_is_never_served(store):
    cache = StageCache(store)

    def explode() -> StageOutput:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        cache.get_or_compute(request(), explode)
    failed = store.client.search_runs([store.experiment_id], "tags.cache_key = 'k1'")
    assert [r.info.status for r in failed] == ["FAILED"]
    compute = Counting(OUTPUT)
    assert not cache.get_or_compute(request(), compute).hit and compute.calls == 1


def test_interrupted_stage_is_killed_not_finished(store):
    def interrupt() -> StageOutput:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        StageCache(store).get_or_compute(request(), interrupt)
    runs = store.client.search_runs([store.experiment_id], "")
    assert [r.info.status for r in runs if r.data.tags.get("stage") != CLAIM_STAGE] == ["KILLED"]
    assert [r.data.tags[STATE_TAG] for r in runs if r.data.tags.get("stage") == CLAIM_STAGE] == [RELEASED]
    assert finished_runs(store, "k1") == []


def test_force_recomputes_and_new_run_is_served(store):
    compute = Counting(OUTPUT)
    first = StageCache(store).get_or_compute(request(), compute)
    forced = StageCache(store, force=True).get_or_compute(request(), compute)
    assert compute.calls == 2 and forced.run_id != first.run_id
    assert StageCache(store).get_or_compute(request(), compute).run_id == forced.run_id


def test_disabled_cache_neither_serves_nor_feeds(store):
    compute = Counting(OUTPUT)
    StageCache(store, enabled=False).get_or_compute(request(), compute)
    StageCache(store, enabled=False).get_or_compute(request(), compute)
    assert compute.calls == 2
    assert not StageCache(store).get_or_compute(request(), compute).hit


def test_missing_artifact_is_not_served_again(store):
    cache = StageCache(store)
    compute = Counting(OUTPUT)
    first = cache.get_or_compute(request(), compute)
    (Path(store.client.get_run(first.run_id).info.artifact_uri.removeprefix("file://")) / "x.npy").unlink()
    again = cache.get_or_compute(request(), compute)
    assert compute.calls == 2 and not again.hit
    assert store.client.get_run(first.run_id).data.tags["cache_store"] == "false"


@pytest.mark.slow
def test_transient_download_failure_is_retried_and_the_run_stays_servable(tmp_path, monkeypatch, caplog):
    """A real `mlflow server` with proxied artifacts, reached through a proxy that answers 503 to one artifact
    download: the download is retried and served, and the run is not marked unservable."""
    from tests.loopback import FlakyProxy, mlflow_server

    # MLflow's client retries 5xx itself by default; switched off so a single 503 reaches the cache.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setattr("pipeline.store.artifacts.DOWNLOAD_BACKOFF_S", 0.05)
    with mlflow_server(tmp_path) as server, FlakyProxy(server, "/mlflow-artifacts/") as proxy:
        store = tracking.connect(proxy.url, "test")
        cache = StageCache(store)
        compute = Counting(OUTPUT)
        first = cache.get_or_compute(request(), compute)
        proxy.arm(failures=1)
        again = cache.get_or_compute(request(), compute)
        assert proxy.failed == 1 and "retrying (2/4)" in caplog.text
        assert again.hit and again.run_id == first.run_id and compute.calls == 1
        np.testing.assert_array_equal(again.arrays["x"], OUTPUT.arrays["x"])
        assert store.client.get_run(first.run_id).data.tags["cache_store"] == "true"

        proxy.arm(failures=10)  # a server down for longer than the retries: recompute, but keep the run servable
        third = cache.get_or_compute(request(), compute)
        assert not third.hit and compute.calls == 2
        assert store.client.get_run(first.run_id).data.tags["cache_store"] == "true"
