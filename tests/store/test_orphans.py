"""Runs a dead process left RUNNING are closed KILLED with the reason; a live holder's runs are left alone. End to
end: a local sweep killed with `kill -9` mid-stage, then the same sweep again, which waits on none of its claims."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.store import orphans, tracking
from pipeline.store.holders import Holder
from tests.store.test_holders import exited_process


def test_runs_of_a_dead_process_are_killed_and_a_live_ones_left_alone(store):
    client = store.client
    me = Holder.current()
    dead = Holder(me.host, exited_process(), "", me.boot)
    gone = client.create_run(store.experiment_id, tags={"stage": "embed", **dead.tags()}).info.run_id
    held = client.create_run(store.experiment_id, tags={"stage": "job", "claim_state": "held", "claim_group": "g",
                                                        **dead.tags()}).info.run_id
    live = client.create_run(store.experiment_id, tags={"stage": "embed", **Holder.current().tags()}).info.run_id
    unknown = client.create_run(store.experiment_id, tags={"stage": "embed"}).info.run_id  # made before holders
    assert orphans.close_dead_runs(store) == 2
    for run_id in (gone, held):
        run = client.get_run(run_id)
        assert run.info.status == "KILLED" and f"pid {dead.pid}" in run.data.tags["killed_by"]
    assert client.get_run(held).data.tags["claim_state"] == "expired" and not client.get_run(held).data.tags[
        "claim_group"]
    assert client.get_run(live).info.status == "RUNNING" and client.get_run(unknown).info.status == "RUNNING"


@pytest.mark.slow
def test_a_sweep_killed_outright_is_closed_by_the_next_which_waits_on_none_of_its_claims(tmp_path, tiny_checkpoint):
    """`kill -9` of a local sweep's process group while it embeds: its sweep, job and stage runs stay RUNNING, its
    claims held. The same sweep again closes them KILLED at its start, takes the claims over without waiting (the
    claims' timeout is 15 minutes here), and computes only what the killed sweep had not finished."""
    from pipeline.bench.processes import Dataset, dataset_configs
    from tests import synthetic

    sets = [Dataset("quick", synthetic.write_wds_classification(tmp_path / "quick", per_class=3, seed=0)),
            Dataset("slow", synthetic.write_wds_classification(tmp_path / "slow", per_class=300, seed=1))]
    args = [sys.executable, "-m", "pipeline", "-m", f"hydra.searchpath=[file://{dataset_configs(tmp_path, sets)}]",
            "model=tiny", f"model.pretrained={tiny_checkpoint}", "dataset=quick,slow", "prompts=classname,dataset",
            "num_workers=2", "cache.claim_timeout_s=900"]
    env = {**os.environ, "CLIP_TABLES_OUTPUTS": str(tmp_path / "outputs"), "HYDRA_FULL_ERROR": "0"}
    killed = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True)
    sweeps = tmp_path / "outputs" / "multirun"
    deadline = time.monotonic() + 300
    while len(list(sweeps.glob("*/*/*/result.json"))) < 2:  # the quick jobs are done; the slow one embeds
        assert time.monotonic() < deadline and killed.poll() is None
        time.sleep(0.2)
    time.sleep(1.0)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    store = tracking.connect(f"sqlite:///{tmp_path}/outputs/mlflow.db", "clip-tables")
    left = {run.info.run_id for run in tracking.search_all(store, "attributes.status = 'RUNNING'")}
    assert left  # the killed sweep's run at least

    started = time.monotonic()
    again = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert time.monotonic() - started < 120  # a wait on the killed claims would take 900 s
    log = "".join(path.read_text() for path in sweeps.glob("*/*/*/*.log"))
    assert "WAIT" not in log
    for run_id in left:
        run = store.client.get_run(run_id)
        assert run.info.status == "KILLED" and "is gone" in run.data.tags["killed_by"], run.info.run_name
    runs = tracking.search_all(store, "attributes.status = 'FINISHED'")
    keys = [run.data.tags["cache_key"] for run in runs if "cache_key" in run.data.tags]
    assert len(keys) == len(set(keys))
    assert sum(run.data.tags["stage"] == "score" for run in runs) == 4
