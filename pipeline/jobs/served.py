"""The jobs a plan serves as they are: each gets the job run a job would have written (its labels, its config as
params, its cached score's metrics with the headline interval, the stage runs that score was computed from, the
datasets it read) and its folder in the sweep with the `result.json` the aggregate step reads, without a job
running: no Hydra per-job path, no model, no stage."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import yaml

from pipeline.jobs import job_run, sweep
from pipeline.jobs.plan import PlannedJob
from pipeline.stages import score
from pipeline.stages.score import uncertainty
from pipeline.store import bulk, holders
from pipeline.store.cache import mlflow_metric_name
from pipeline.store.index import IndexedRun, StoreIndex
from pipeline.store.tracking import JOB_STAGE, PARENT_TAG, TrackingStore

log = logging.getLogger(__name__)
SERVED_TAG = "served_by"  # on a served job's run: what served it ("plan")


def new_run(planned: PlannedJob, parent: str | None) -> bulk.NewRun:
    """The job run `scoring.run_job` would write for this job, its score served from the store."""
    job, scored = planned.job, planned.served_by
    metrics = dict(scored.metrics)
    for bound, prefix in (("ci_low", uncertainty.CI_LOW), ("ci_high", uncertainty.CI_HIGH)):
        metrics[bound] = metrics.get(mlflow_metric_name(prefix + job.spec.metric), float("nan"))
    used = {**score.inputs_of(scored), "score": scored.run_id}
    tags = {**job.labels, "stage": JOB_STAGE, **({PARENT_TAG: parent} if parent else {}), **holders.current_tags(),
            **{f"run.{stage}": run_id for stage, run_id in used.items()}, SERVED_TAG: "plan"}
    inputs = [job_run.dataset_input(info, context)
              for info, context in zip([job.info, *job.probe_infos], ("test", "train", "validation")) if info is not None]
    return bulk.NewRun(job_run.run_name(job.labels), tags, job.spec.params, metrics, inputs)


def serve(planned: Sequence[PlannedJob], store: TrackingStore, index: StoreIndex, sweep_dir: Path,
          parent: str | None) -> list[str]:
    """Record every served job's run and its folder; returns the job run ids."""
    runs = [new_run(job, parent) for job in planned]
    ids = bulk.write(store, runs)
    now = int(time.time() * 1000)
    index.add(IndexedRun(run_id, JOB_STAGE, "FINISHED", now, now, {**run.tags, "mlflow.runName": run.name},
                         {mlflow_metric_name(k): v for k, v in run.metrics.items()}) for run, run_id in zip(runs, ids))
    for job, run, run_id in zip(planned, runs, ids):
        folder = Path(sweep_dir) / str(job.number)
        (folder / ".hydra").mkdir(parents=True, exist_ok=True)
        (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(job.overrides)))
        metric = job.job.spec.metric
        sweep.write_result(folder, {"job_run_id": run_id, "score_run_id": job.served_by.run_id,
                                    "tracking_uri": store.uri, "metric": metric,
                                    "value": float(run.metrics.get(mlflow_metric_name(metric), float("nan"))),
                                    SERVED_TAG: "plan"})
    if planned:
        log.info("served %d job(s) from the store as they are (their job runs recorded, nothing computed)",
                 len(planned))
    return ids
