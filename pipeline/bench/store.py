"""Benchmark 6: what a cached job, a claims listing and the aggregate cost as a store grows to 1,000, 10,000 and
100,000 runs (SQLite).

The store holds one real sweep's runs (a job of the tiny model, cold, then timed cached) and is grown with bulk
inserts shaped like a lab's: per group of ten runs, a job run with its metrics and released claim tags, its
score, classify and image-embedding runs and six per-template embedding runs (most of a real store), each with
the tags the pipeline writes. Lookups are timed with and without the index on the tags' (key, value).
"""
from __future__ import annotations

import hashlib
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import sqlalchemy

from pipeline.bench.processes import PYTHON, seconds
from pipeline.reports import results
from pipeline.store import indexes, tracking
from pipeline.store.claims import Claims

RUNS_PER_GROUP = 10
_STAGES = ["job", "score", "classify", "embed"] + ["embed"] * 6


@dataclass(frozen=True)
class Costs:
    runs: int
    lookup_ms: float
    lookup_unindexed_ms: float
    claims_ms: float
    sweep_read_ms: float
    job_runs: int
    store_read_s: float
    cached_job_s: float


def _key(number: int) -> str:
    return hashlib.sha256(f"synthetic {number}".encode()).hexdigest()


def grow(uri: str, experiment_id: str, first: int, count: int) -> None:
    """Insert runs `first` .. `first + count - 1` (rounded to whole groups), FINISHED, in one transaction."""
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag

    runs, tags, params, metrics = [], [], [], []
    now = int(time.time() * 1000)
    for number in range(first, first + count):
        run_id = hashlib.md5(f"run {number}".encode()).hexdigest()
        group, stage = divmod(number, RUNS_PER_GROUP)
        kind = _STAGES[stage]
        runs.append({"run_uuid": run_id, "name": f"{kind}-{number}", "source_type": "LOCAL", "source_name": "",
                     "entry_point_name": "", "user_id": "bench", "status": "FINISHED", "start_time": now - number,
                     "end_time": now - number + 5, "source_version": "", "lifecycle_stage": "active",
                     "artifact_uri": f"/nowhere/{run_id}", "experiment_id": int(experiment_id)})
        labels = {"stage": kind, "mlflow.runName": f"{kind}-{number}", "model": f"model{group % 121}",
                  "pretrained": "tag", "dataset": f"dataset{group % 38}", "prompts": "dataset", "protocol": "datacomp"}
        if kind == "job":
            labels.update({"main_metric": "acc1", "source": "datacomp", "claim_group": _key(-group),
                           "claim_state": "released", "claim_keys": ",".join(_key(n) for n in range(4))})
            metrics += [{"key": name, "value": 0.5, "timestamp": now, "step": 0, "is_nan": False,
                         "run_uuid": run_id} for name in ("acc1", "acc5", "mean_per_class_recall")]
        else:
            labels.update({"cache_key": _key(number), "cache_store": "true",
                           "modality": "template" if stage > 3 else "image" if stage == 3 else "",
                           "template_set": _key(-group - 10**9)[:16], "template": f"a photo of a {{c}} {stage}"})
        tags += [{"key": key, "value": value, "run_uuid": run_id} for key, value in labels.items()]
        params += [{"key": f"param{p}", "value": str(p), "run_uuid": run_id} for p in range(8)]
    engine = sqlalchemy.create_engine(uri)
    with engine.begin() as connection:
        for model, rows in ((SqlRun, runs), (SqlTag, tags), (SqlParam, params), (SqlMetric, metrics),
                            (SqlLatestMetric, metrics)):
            if rows:
                connection.execute(model.__table__.insert(), rows)
    engine.dispose()


def _mean_ms(action: Callable[[], object], repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        timings.append(time.perf_counter() - start)
    return 1000 * statistics.mean(timings)


def lookup(store: tracking.TrackingStore, key: str) -> list:
    """The cache's lookup of one key (store/cache.py, `_search`)."""
    return tracking.search_all(store, f"tags.cache_key = '{key}' and tags.cache_store = 'true' and "
                                      f"attributes.status = 'FINISHED'", ["attributes.start_time DESC"], limit=10)


def _drop_index(uri: str) -> None:
    engine = sqlalchemy.create_engine(uri)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"DROP INDEX IF EXISTS {indexes.INDEX}")
    engine.dispose()


def measure(store: tracking.TrackingStore, total: int, job_command: list[str], env: dict[str, str],
            sweep_jobs: list[str]) -> Costs:
    keys = [_key(n) for n in range(1, total, max(1, total // 25)) if n % RUNS_PER_GROUP]
    claims = Claims(store)
    indexed = _mean_ms(lambda: [lookup(store, key) for key in keys], 1) / len(keys)
    listing = _mean_ms(lambda: claims.listed(_key(-3)), 10)
    sweep_read = _mean_ms(lambda: results.from_runs(store, sweep_jobs), 3)
    start = time.perf_counter()
    job_runs = len(results.latest_in_store(store))
    store_read = time.perf_counter() - start
    cached = min(seconds(job_command, env) for _ in range(2))
    _drop_index(store.uri)
    unindexed = _mean_ms(lambda: [lookup(store, key) for key in keys], 1) / len(keys)
    indexes.ensure(store.uri)
    return Costs(total, indexed, unindexed, listing, sweep_read, job_runs, store_read, cached)


def job_command(arguments: list[str]) -> list[str]:
    return [PYTHON, "-m", "pipeline", *arguments]


def sizes_for(largest: int) -> list[int]:
    return [size for size in (1_000, 10_000, 100_000, 1_000_000) if size <= largest]


def grow_to(store: tracking.TrackingStore, have: int, size: int) -> None:
    database = store.uri
    step = 50_000  # one transaction's rows stay within a few hundred MB
    for first in range(have, size, step):
        grow(database, store.experiment_id, first, min(step, size - first))


def open_store(outputs: Path) -> tracking.TrackingStore:
    return tracking.connect(f"sqlite:///{outputs}/mlflow.db", "clip-tables")
