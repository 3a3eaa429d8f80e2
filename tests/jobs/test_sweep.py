"""The sweep's run: started before the jobs, found by every job through the sweep folder, closed by the aggregate
step or marked FAILED when the multirun dies; the jobs' results read back in job order."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.jobs import sweep
from pipeline.store import tracking


def test_a_sweep_run_is_recorded_in_its_folder_and_closed(store: tracking.TrackingStore, tmp_path: Path):
    sweep_dir = tmp_path / "multirun" / "2026-12-02" / "10-00-00"
    run_id = sweep.start(store, sweep_dir)
    run = store.client.get_run(run_id)
    assert run.info.status == "RUNNING" and run.data.tags["stage"] == sweep.SWEEP_STAGE
    assert run.info.run_name == "sweep:2026-12-02/10-00-00"
    assert sweep.parent_of(sweep_dir, store) == run_id and sweep.parent_of(None, store) is None
    sweep.finish(store, run_id)
    assert store.client.get_run(run_id).info.status == "FINISHED"


def test_a_sweep_that_dies_is_marked_failed_and_another_store_never_adopts_it(store, tmp_path: Path):
    sweep_dir = tmp_path / "sweep"
    run_id = sweep.start(store, sweep_dir)
    sweep._end_if_running(store, run_id, sweep_dir)  # the exit hook, when the multirun never reached its aggregate
    assert store.client.get_run(run_id).info.status == "FAILED"
    other = tracking.connect(f"sqlite:///{tmp_path}/other.db", "test", str(tmp_path / "other"))
    assert sweep.recorded(sweep_dir, other) is None


def test_job_results_come_in_job_order_by_kind(tmp_path: Path):
    for number, kind in ((2, "score"), (10, "score"), (1, "explain"), (0, None)):
        (tmp_path / str(number)).mkdir()
        payload = {"job_run_id": f"run{number}", **({"kind": kind} if kind else {})}
        (tmp_path / str(number) / sweep.RESULT_FILE).write_text(json.dumps(payload))
    assert [job["job_run_id"] for job in sweep.job_results(tmp_path, "score")] == ["run0", "run2", "run10"]
    assert [job["job_run_id"] for job in sweep.job_results(tmp_path, "explain")] == ["run1"]


def test_an_interrupted_sweep_is_marked_killed(store, tmp_path: Path):
    """The launcher says the sweep was interrupted (Ctrl-C) in its failures file; the exit hook marks it KILLED."""
    import json

    from pipeline.errors import FAILURES_FILE

    sweep_dir = tmp_path / "sweep"
    run_id = sweep.start(store, sweep_dir)
    (sweep_dir / FAILURES_FILE).write_text(json.dumps({"lines": [], "unfinished": 3, "interrupted": True}))
    sweep._end_if_running(store, run_id, sweep_dir)
    run = store.client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["killed_by"] == "interrupted (Ctrl-C)"
    assert sweep.failures(sweep_dir)["unfinished"] == 3
