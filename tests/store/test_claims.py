"""Claims on cache keys, in a real SQLite store: concurrent misses compute once, a killed claimant is taken over."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
from mlflow.entities import ViewType

from pipeline.store.artifacts import StageOutput
from pipeline.store.cache import StageCache, StageRequest
from pipeline.store.claims import CLAIM_ID_TAG, CLAIM_STAGE, RELEASED, STATE_TAG, Claims
from tests.conftest import REPO


def request(key: str) -> StageRequest:
    return StageRequest("embed", key, {"modality": "image"}, {"a": 1}, name=f"embed:{key}")


def all_runs(store, query: str = ""):
    return store.client.search_runs([store.experiment_id], query, run_view_type=ViewType.ALL, max_results=1000)


def miss_together(store, key: str, jobs: int) -> tuple[list[int], list]:
    """`jobs` threads, each with its own cache object, miss `key` at the same moment; (who computed, results)."""
    computed: list[int] = []
    barrier = threading.Barrier(jobs)
    results = [None] * jobs

    def job(index: int) -> None:
        def compute() -> StageOutput:
            computed.append(index)
            time.sleep(0.3)  # long enough for every other job to find the claim
            return StageOutput({"x": np.arange(3.0)})

        barrier.wait()
        results[index] = StageCache(store, claim_timeout_s=30).get_or_compute(request(key), compute)

    threads = [threading.Thread(target=job, args=(i,)) for i in range(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return computed, results


def test_jobs_missing_one_key_at_once_compute_it_once(store):
    """Six jobs miss a key together, five times over. Ordering claims by start time computed some keys twice
    here (a claim stamped earlier but committed later); the bakery tickets never do."""
    for round_ in range(5):
        computed, results = miss_together(store, f"k{round_}", jobs=6)
        assert len(computed) == 1, f"round {round_}: computed by {computed}"
        assert len({result.run_id for result in results}) == 1 and sum(not r.hit for r in results) == 1
    stage_runs = all_runs(store, "tags.stage = 'embed'")
    assert len(stage_runs) == 5 and {run.info.status for run in stage_runs} == {"FINISHED"}
    assert all(run.data.tags[CLAIM_ID_TAG] for run in stage_runs)
    # released claims are ended, never deleted (a worker needs no more than EDIT); none is left live, and none
    # ever carried a stage's name or a cache key
    assert not all_runs(store, f"tags.stage = '{CLAIM_STAGE}' and attributes.status = 'RUNNING'")
    claims = all_runs(store, f"tags.stage = '{CLAIM_STAGE}'")
    assert len(claims) == 30 and all(run.info.lifecycle_stage == "active" for run in claims)
    assert {(run.info.status, run.data.tags[STATE_TAG], run.data.tags["claim_group"]) for run in claims} == \
        {("FINISHED", RELEASED, "")}
    assert not any("cache_key" in run.data.tags for run in claims)


def test_a_key_finished_while_a_waiter_looks_it_up_is_served_not_recomputed(store):
    """The owner finishes and releases its claim right after a waiting job's lookup returned nothing. Deciding
    ownership after that lookup would find the key unclaimed and compute it again; it is decided before."""
    computing, finish = threading.Event(), threading.Event()

    def slow() -> StageOutput:
        computing.set()
        finish.wait(30)
        return StageOutput({"x": np.arange(3.0)})

    owner = threading.Thread(target=lambda: StageCache(store, claim_timeout_s=30).get_or_compute(request("k"), slow))
    owner.start()
    assert computing.wait(30)

    searches = []

    class Waiter(StageCache):
        def _search(self, condition, limit=None):
            runs = super()._search(condition, limit)
            searches.append(condition)
            if len(searches) == 2:  # the first lookup under the waiter's claim: the owner finishes just after it
                finish.set()
                owner.join(30)
            return runs

    recomputed = []
    result = Waiter(store, claim_timeout_s=30).get_or_compute(
        request("k"), lambda: recomputed.append(1) or StageOutput({"x": np.zeros(1)}))
    assert not recomputed and result.hit
    np.testing.assert_array_equal(result.arrays["x"], np.arange(3.0))


def test_when_the_computing_job_fails_a_waiting_job_takes_the_key_over(store):
    calls: list[int] = []

    def flaky() -> StageOutput:
        calls.append(1)
        time.sleep(0.3)
        if len(calls) == 1:
            raise RuntimeError("the first attempt fails")
        return StageOutput({"x": np.arange(3.0)})

    barrier, outcomes = threading.Barrier(3), []

    def job() -> None:
        barrier.wait()
        try:
            outcomes.append(StageCache(store, claim_timeout_s=30).get_or_compute(request("k"), flaky).run_id)
        except RuntimeError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=job) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(calls) == 2 and sorted(outcomes).count("the first attempt fails") == 1
    statuses = sorted(run.info.status for run in all_runs(store, "tags.stage = 'embed'"))
    assert statuses == ["FAILED", "FINISHED"]
    assert len({outcome for outcome in outcomes if outcome != "the first attempt fails"}) == 1


def test_earliest_live_claim_owns_each_key(store):
    claims = Claims(store, timeout_s=30)
    with claims.hold(["a", "b"], "g", "first") as first, claims.hold(["b", "c"], "g", "second") as second:
        assert first.owners() == {"a": first.run_id, "b": first.run_id}
        assert second.owners() == {"b": first.run_id, "c": second.run_id}
    with claims.hold(["b", "c"], "g", "alone") as alone:
        assert alone.owners() == {"b": alone.run_id, "c": alone.run_id}


HOLDER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from pipeline.store import tracking
    from pipeline.store.artifacts import StageOutput
    from pipeline.store.cache import StageCache, StageRequest

    store = tracking.connect(sys.argv[1], "test")

    def compute():
        # A partial artifact, as if the worker died while uploading; then it hangs until it is killed.
        [run] = store.client.search_runs([store.experiment_id], "tags.stage = 'embed' and attributes.status = 'RUNNING'")
        partial = sys.argv[2]
        np.save(partial, np.zeros(2))
        store.client.log_artifact(run.info.run_id, partial)
        print("computing", flush=True)
        time.sleep(600)

    StageCache(store, claim_timeout_s=float(sys.argv[3])).get_or_compute(
        StageRequest("embed", "k", {"modality": "image"}, {}, name="embed:k"), compute)
""")


def killed_claimant(store, tmp_path, timeout_s: float):
    """A worker SIGKILLed while computing under its claim, its stage run left RUNNING with a partial artifact."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, store.uri, str(tmp_path / "image_features.npy"),
                               str(timeout_s)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "computing"
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    [zombie] = all_runs(store, "tags.stage = 'embed'")
    assert zombie.info.status == "RUNNING"
    return holder.pid, zombie


def test_a_killed_claimant_is_taken_over_at_once_and_its_run_marked_killed(store, tmp_path):
    """A worker SIGKILLed while computing under its claim, on this host: its pid is gone, so the next job takes the
    key over without waiting for the heartbeat timeout, marks the stage run it left RUNNING as KILLED, computes
    the key itself, and what the killed worker wrote is never served."""
    timeout_s = 60.0
    pid, zombie = killed_claimant(store, tmp_path, timeout_s)
    started = time.monotonic()
    result = StageCache(store, claim_timeout_s=timeout_s).get_or_compute(
        request("k"), lambda: StageOutput({"image_features": np.arange(4.0)}))
    assert not result.hit and result.run_id != zombie.info.run_id and time.monotonic() - started < 10
    killed = store.client.get_run(zombie.info.run_id)
    assert killed.info.status == "KILLED"
    assert killed.data.tags["killed_by"] == f"claim expired: its holder, pid {pid} on {socket.gethostname()}, is gone"
    served = StageCache(store).get_or_compute(request("k"), lambda: StageOutput({"image_features": np.zeros(1)}))
    assert served.hit and served.run_id == result.run_id
    assert np.array_equal(served.arrays["image_features"], np.arange(4.0))
    assert not all_runs(store, f"tags.stage = '{CLAIM_STAGE}' and attributes.status = 'RUNNING'")


def test_a_holder_that_cannot_be_checked_is_taken_over_when_its_heartbeat_stops(store, tmp_path):
    """A claim whose holder is on another host without SLURM (its tags say so): nothing here can tell whether it
    runs, so the next job waits until its heartbeat has stood still for the timeout, then takes it over."""
    timeout_s = 3.0
    _, zombie = killed_claimant(store, tmp_path, timeout_s)
    [claim] = all_runs(store, f"tags.stage = '{CLAIM_STAGE}'")
    store.client.set_tag(claim.info.run_id, "holder_host", "node-without-slurm")
    started = time.monotonic()
    result = StageCache(store, claim_timeout_s=timeout_s).get_or_compute(
        request("k"), lambda: StageOutput({"image_features": np.arange(4.0)}))
    assert not result.hit and time.monotonic() - started >= timeout_s - 1.0
    killed = store.client.get_run(zombie.info.run_id)
    assert killed.info.status == "KILLED" and killed.data.tags["killed_by"].startswith("claim expired: no heartbeat")


def test_a_waiting_job_names_the_live_holder(store, caplog):
    """A job waiting for a key another live process computes says whose claim it waits for and that it is alive."""
    with Claims(store, timeout_s=30).hold(["k"], "g", "other") as other:
        with Claims(store, timeout_s=30).hold(["k"], "g", "me") as mine:
            assert mine.owners() == {"k": other.run_id}
            said = mine.describe(other.run_id)
    assert said == f"claim {other.run_id} of pid {os.getpid()} on {socket.gethostname()}, which is alive"


def test_a_claimant_notices_when_its_claim_was_taken_over(store):
    """Another job deleted this claim (it took it for a dead worker's): the next heartbeat fails on the deleted run,
    and the claimant marks its claim lost instead of counting on it."""
    with Claims(store, timeout_s=1.0).hold(["k"], "g", "taken") as claim:
        store.client.delete_run(claim.run_id)
        assert claim.lost.wait(5)


def test_a_jobs_claim_lives_on_its_job_run_and_adds_no_run(store):
    """A job's claim is a set of tags on its own job run: released by a tag, so nothing is deleted (a worker needs
    EDIT only) and no run accumulates."""
    job = store.client.create_run(store.experiment_id, tags={"stage": "job"}).info.run_id
    claims = Claims(store, timeout_s=30, host_run=job)
    with claims.hold(["a", "b"], "g", "job") as claim:
        assert claim.run_id == job and claim.owners() == {"a": job, "b": job}
        tags = store.client.get_run(job).data.tags
        assert (tags[STATE_TAG], tags["claim_group"], tags["claim_keys"]) == ("held", "g", "a,b")
        assert [info.run_id for info in claims.listed("g")] == [job]
    run = store.client.get_run(job)
    assert run.info.status == "RUNNING" and run.data.tags[STATE_TAG] == RELEASED and run.data.tags["claim_group"] == ""
    assert claims.listed("g") == [] and len(all_runs(store)) == 1


def test_a_job_whose_claim_expired_is_marked_killed_and_knows_it(store):
    job = store.client.create_run(store.experiment_id, tags={"stage": "job"}).info.run_id
    with Claims(store, timeout_s=30, host_run=job).hold(["k"], "g", "job") as claim:
        [info] = Claims(store, timeout_s=30).listed("g")
        Claims(store, timeout_s=30).reap(info, "no heartbeat for 31 s")  # what another job does once it stood still
        assert claim._taken_over()
        claim.lost.set()  # as its heartbeat sets it on noticing: a lost claim is not released again
    run = store.client.get_run(job)
    assert run.info.status == "KILLED" and run.data.tags[STATE_TAG] == "expired"
