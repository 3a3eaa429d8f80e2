"""The sweep run: one MLflow run per multirun, the parent of its job runs and of its aggregate run, so the UI shows
a sweep as one row that opens onto its jobs.

The multirun callback starts it before any job and records its id in the sweep folder (`sweep_run.json`), where
every job finds it, whichever launcher started the job (a subprocess, a SLURM node sharing the folder). It ends
FINISHED with the aggregate step when every job finished; FAILED when some did not (the launcher's
`errors.FAILURES_FILE` says which), or when the multirun process exits without reaching it; KILLED when the sweep
was interrupted. A multirun process killed outright leaves it RUNNING, naming its holder, until the next sweep's
start closes it (`store.orphans`).
"""
from __future__ import annotations

import atexit
import json
import logging
from pathlib import Path

from pipeline.errors import FAILURES_FILE
from pipeline.store import holders
from pipeline.store.tracking import EXPERIMENT_KIND, KILLED_BY, TrackingStore, run_tags

log = logging.getLogger(__name__)

SWEEP_STAGE = "sweep"
SWEEP_FILE = "sweep_run.json"
# What each job leaves in its folder for the aggregate step (Hydra gives the multirun callback no job results),
# and the kinds of job that leave one.
RESULT_FILE = "result.json"
SCORE_KIND, EXPLAIN_KIND = "score", "explain"


def start(store: TrackingStore, sweep_dir: Path) -> str:
    """Create the sweep's run (RUNNING) and record its id in `sweep_dir`; it is marked FAILED should the process
    exit before `finish`."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    store.client.set_experiment_tag(store.experiment_id, *EXPERIMENT_KIND)  # an experiment made before the tag existed
    name = f"sweep:{sweep_dir.parent.name}/{sweep_dir.name}"
    tags = {"stage": SWEEP_STAGE, "sweep_dir": str(sweep_dir), **holders.current_tags()}
    run_id = store.client.create_run(store.experiment_id, run_name=name, tags=tags).info.run_id
    (sweep_dir / SWEEP_FILE).write_text(json.dumps({"run_id": run_id, "tracking_uri": store.uri}))
    atexit.register(_end_if_running, store, run_id, sweep_dir)
    return run_id


def finish(store: TrackingStore, run_id: str, status: str = "FINISHED") -> None:
    store.client.set_terminated(run_id, status)


def failures(sweep_dir: Path) -> dict | None:
    """What the launcher reported as not finished (`lines`, `interrupted`), if anything."""
    path = Path(sweep_dir) / FAILURES_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _end_if_running(store: TrackingStore, run_id: str, sweep_dir: Path) -> None:
    try:
        if store.client.get_run(run_id).info.status == "RUNNING":
            reported = failures(sweep_dir) or {}
            if reported.get("interrupted"):
                store.client.log_batch(run_id, tags=run_tags({KILLED_BY: "interrupted (Ctrl-C)"}))
            store.client.set_terminated(run_id, "KILLED" if reported.get("interrupted") else "FAILED")
    except Exception as exc:  # the store is gone at exit: the run stays RUNNING, which the UI shows as such
        log.debug("sweep run %s not closed: %s", run_id, exc)


def parent_of(sweep_dir: Path | None, store: TrackingStore) -> str | None:
    """The sweep run a job of `sweep_dir` belongs to; None outside a multirun, for a sweep started by a version
    without sweep runs, or when the job writes to another store than its sweep's run."""
    return recorded(sweep_dir, store) if sweep_dir is not None else None


def write_result(output_dir: Path, payload: dict) -> None:
    """A job's `result.json`, whole or not at all (a job killed while writing leaves none, and is not done)."""
    path = Path(output_dir) / RESULT_FILE
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, indent=2))
    partial.replace(path)


def job_results(sweep_dir: Path, kind: str) -> list[dict]:
    """The `result.json` of every job of one kind (`score`, or `explain`) in `sweep_dir`, in job order."""
    paths = sorted(Path(sweep_dir).glob(f"*/{RESULT_FILE}"), key=lambda path: _job_number(path.parent.name))
    found = [json.loads(path.read_text()) for path in paths]
    return [job for job in found if job.get("kind", SCORE_KIND) == kind]


def _job_number(name: str) -> tuple[int, str]:
    return (int(name), "") if name.isdigit() else (1 << 30, name)


def recorded(sweep_dir: Path, store: TrackingStore) -> str | None:
    """The sweep run id recorded in `sweep_dir`, if it is in `store`."""
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.is_file():
        return None
    found = json.loads(path.read_text())
    return found["run_id"] if found.get("tracking_uri") == store.uri else None

