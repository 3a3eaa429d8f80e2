"""The SLURM launcher on a real one-node SLURM cluster (`pipeline.lab.slurm`, Debian's packages, run as root):
preemption, a time-limit warning, `scancel`, Ctrl-C, requests the cluster cannot meet. Nothing is computed twice,
nothing waits on a dead claim, and every job that did not finish is reported with what SLURM did to its task."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

from pipeline.lab import slurm
from pipeline.store import tracking
from tests.conftest import REPO
from tests.lab.test_server import all_runs

# A claim whose holder could not be checked would be waited on this long: far beyond any test's time.
CLAIM_TIMEOUT = "cache.claim_timeout_s=900"
PROMPTS = "prompts=classname,dataset,a_photo_of,simple_imagenet"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A cluster of this module's own (its own folder and ports), up for the module, taken down by pid after."""
    if os.geteuid() != 0:
        pytest.skip("the one-node SLURM cluster runs its daemons as root; these tests run as root (as CI does)")
    if slurm.missing_programs():
        pytest.skip(f"SLURM is not installed ({', '.join(slurm.missing_programs())} missing): `make slurm-packages` "
                    f"installs Debian's {slurm.PACKAGES}")
    folder = Path(tempfile.mkdtemp(prefix="clip-tables-slurm-"))  # short: MariaDB's socket path has a limit
    folder.chmod(0o755)
    found = slurm.Cluster(folder, "cliptest", free_port(), free_port(), free_port(), free_port(), kill_wait_s=30,
                          grace_time_s=10)
    before = os.environ.get("SLURM_CONF")
    try:
        slurm.up(found)
        os.environ["SLURM_CONF"] = str(found.conf)
        yield found
    finally:
        slurm.down(found)
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Path:
    """Two stand-in datasets: `quick` (36 images) and `slow` (3,600, a few seconds of embedding to interrupt)."""
    from pipeline.bench.processes import Dataset, dataset_configs
    from tests import synthetic

    scratch = tmp_path_factory.mktemp("slurm_data")
    sets = [Dataset("quick", synthetic.write_wds_classification(scratch / "quick", per_class=3, seed=0)),
            Dataset("slow", synthetic.write_wds_classification(scratch / "slow", per_class=300, seed=1))]
    return dataset_configs(scratch, sets)


def sweep_args(conf: Path, checkpoint: Path, *extra: str) -> list[str]:
    """8 jobs in one task: quick x 4 prompt sets, then slow x 4 (the first of which embeds 3,600 images)."""
    return ["-m", f"hydra.searchpath=[file://{conf}]", "hydra/launcher=submitit_slurm_cpu", "model=tiny",
            f"model.pretrained={checkpoint}", "dataset=quick,slow", PROMPTS, "num_workers=2", CLAIM_TIMEOUT, *extra]


def start(workdir: Path, args: list[str]) -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CLIP_TABLES_OUTPUTS": str(workdir / "outputs"), "HYDRA_FULL_ERROR": "0"}
    # SIGINT as a terminal leaves it: a shell starts background commands ignoring it, and children inherit that
    return subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def finished_jobs(workdir: Path) -> int:
    """How many jobs the running sweep's tasks have finished (their progress files)."""
    return sum(len(path.read_text().splitlines())
               for path in (workdir / "outputs" / "multirun").glob("*/*/.submitit/progress/*.jsonl"))


def wait_for(condition, timeout_s: float = 300, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout_s} s for {what}"
        time.sleep(0.5)


def queue(*fields: str) -> list[list[str]]:
    said = subprocess.run(["squeue", "-h", "-o", "|".join(fields)], capture_output=True, text=True, check=True)
    return [line.split("|") for line in said.stdout.splitlines()]


def release_requeue_hold(sweep: subprocess.Popen) -> float:
    """SLURM holds a requeued job for 120 s (BeginTime); release it as an admin may, and return when it was seen."""
    held_at = None
    while sweep.poll() is None:
        for job, reason in queue("%i", "%r"):
            if reason == "BeginTime":
                held_at = held_at or time.monotonic()
                subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], check=True)
        time.sleep(0.5)
    return held_at or 0.0


def task_log(workdir: Path, task: str) -> str:
    """A task's stdout and stderr (submitit's own messages: warnings on stderr, the rest on stdout)."""
    return "".join(path.read_text() for path in (workdir / "outputs" / "multirun").glob(f"*/*/.submitit/{task}/*_log.*"))


def store_of(workdir: Path) -> tracking.TrackingStore:
    return tracking.connect(f"sqlite:///{workdir}/outputs/mlflow.db", "clip-tables")


def assert_every_job_finished_once(workdir: Path, job_runs: int = 8) -> None:
    """Every job was scored once (8 scores) under `job_runs` FINISHED job runs, no key was computed twice (a run a
    stop abandoned is KILLED, never FINISHED), nothing is left RUNNING, and every KILLED run says why."""
    runs = all_runs(store_of(workdir))
    finished = Counter(run.data.tags["stage"] for run in runs if run.info.status == "FINISHED")
    assert finished["job"] == job_runs and finished["score"] == 8, finished
    keys = Counter(run.data.tags["cache_key"] for run in runs if run.info.status == "FINISHED"
                   and "cache_key" in run.data.tags)
    assert max(keys.values()) == 1, [key for key, n in keys.items() if n > 1]
    assert not [run.info.run_name for run in runs if run.info.status == "RUNNING"]
    assert all(run.data.tags.get("killed_by") for run in runs if run.info.status == "KILLED")


@pytest.mark.slow
def test_a_preempted_task_requeues_and_resumes_computing_nothing_twice(cluster, datasets, tiny_checkpoint, tmp_path):
    """Preemption as SLURM does it: a job of a higher-priority partition needs the node, SLURM sends SIGTERM and
    requeues the task when its GraceTime ends. The task abandons the job in progress (its runs KILLED, its claims
    released), requeues itself, and its next start skips the 4 finished jobs and computes the other 4."""
    sweep = start(tmp_path, sweep_args(datasets, tiny_checkpoint))
    wait_for(lambda: finished_jobs(tmp_path) >= 4, what="4 finished jobs")
    [[task]] = queue("%i")
    signalled = time.monotonic()
    subprocess.run(["sbatch", "-p", "urgent", "-c", str(os.cpu_count()), "--mem=1G", "-o", "/dev/null",
                    "--wrap", "sleep 1"], check=True, capture_output=True)
    held = release_requeue_hold(sweep)
    out, err = sweep.communicate(timeout=60)
    ended = time.monotonic()
    assert sweep.returncode == 0, out[-2000:] + err[-2000:]
    assert held and ended - signalled < 60 + (held - signalled), (held - signalled, ended - signalled)
    assert_every_job_finished_once(tmp_path)
    assert f"preempted: requeued SLURM job {task}" in task_log(tmp_path, task)
    killed = [run for run in all_runs(store_of(tmp_path)) if run.info.status == "KILLED"]
    assert {run.data.tags["killed_by"] for run in killed} <= {
        "SIGTERM: the task was cancelled, preempted or reached its time limit"}


@pytest.mark.slow
def test_a_time_limit_warning_requeues_and_the_group_resumes(cluster, datasets, tiny_checkpoint, tmp_path):
    """submitit's warning before the time limit (USR2; with timeout_min=1 any moment counts as the limit's):
    the task checkpoints, requeues (one of max_num_timeout=3) and resumes where it stopped."""
    sweep = start(tmp_path, sweep_args(datasets, tiny_checkpoint, "hydra.launcher.timeout_min=1"))
    wait_for(lambda: finished_jobs(tmp_path) >= 2, what="2 finished jobs")
    [[task]] = queue("%i")
    subprocess.run(["scancel", "--signal=USR2", task], check=True)
    release_requeue_hold(sweep)
    out, err = sweep.communicate(timeout=60)
    assert sweep.returncode == 0, out[-2000:] + err[-2000:]
    assert_every_job_finished_once(tmp_path)
    assert "this job is timed-out" in task_log(tmp_path, task) and "Requeued job" in task_log(tmp_path, task)


@pytest.mark.slow
def test_a_cancelled_task_is_reported_and_the_rerun_waits_on_nothing(cluster, datasets, tiny_checkpoint, tmp_path):
    """`scancel` of a running task: the task stops at once (its runs KILLED, claims released); the sweep reports
    its unfinished jobs with SLURM's CANCELLED, builds the table of the others and exits 1. The same sweep again
    is served the finished jobs and computes the rest, waiting on no claim of the cancelled task."""
    args = sweep_args(datasets, tiny_checkpoint)
    sweep = start(tmp_path, args)
    wait_for(lambda: finished_jobs(tmp_path) >= 4, what="4 finished jobs")
    [[task]] = queue("%i")
    subprocess.run(["scancel", task], check=True)
    out, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 1 and "Traceback" not in err
    [lost, summary] = [line for line in err.splitlines() if line.startswith("Error:")]
    assert f"its SLURM task {task} ended CANCELLED" in lost and "of the 8 jobs of task tiny:" in lost
    unfinished = int(summary.split()[1])
    assert 0 < unfinished <= 4 and summary.endswith(f"the table holds the {8 - unfinished} that did")
    rerun = start(tmp_path, args)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, out[-2000:] + err[-2000:]
    logs = "".join(path.read_text() for path in (tmp_path / "outputs" / "multirun").glob("*/*/.submitit/*/*_log.*"))
    assert "WAIT" not in logs
    assert_every_job_finished_once(tmp_path, job_runs=8 + 8 - unfinished)


@pytest.mark.slow
def test_ctrl_c_cancels_the_sweeps_tasks_in_one_line(cluster, datasets, tiny_checkpoint, tmp_path):
    """The task's batch script sleeps before its jobs start (submitit's `setup` lines), so Ctrl-C reaches the sweep
    while it waits on a running task however fast the jobs are and however busy the machine."""
    sweep = start(tmp_path, sweep_args(datasets, tiny_checkpoint, "hydra.launcher.setup=[sleep 120]"))
    wait_for(lambda: any(state == "RUNNING" for [state] in queue("%T")), what="the task to run")
    sweep.send_signal(signal.SIGINT)
    out, err = sweep.communicate(timeout=60)
    assert sweep.returncode == 130 and "Traceback" not in err, err
    [line] = [line for line in err.splitlines() if line.startswith("Error")]
    assert line.startswith("Error: interrupted: cancelled the sweep's 1 task(s)")
    wait_for(lambda: not queue("%i"), timeout_s=60, what="the task to leave the queue")
    [sweep_run] = [run for run in all_runs(store_of(tmp_path)) if run.data.tags.get("stage") == "sweep"]
    assert sweep_run.info.status == "KILLED"


@pytest.mark.slow
def test_requests_the_cluster_cannot_meet_are_one_line(cluster, datasets, tiny_checkpoint, tmp_path):
    """A GPU on a node without one: sbatch refuses, in one line. More CPUs and memory than the node has: SLURM
    keeps the task PENDING (PartitionConfig) forever; the sweep cancels it and says so within about a minute."""
    gpu = start(tmp_path / "gpu", sweep_args(datasets, tiny_checkpoint, "hydra/launcher=submitit_slurm"))
    out, err = gpu.communicate(timeout=120)
    assert gpu.returncode == 1 and "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("Error:")]
    assert "refused the sweep's tasks" in line and "Invalid generic resource (gres) specification" in line
    started = time.monotonic()
    big = start(tmp_path / "big", sweep_args(datasets, tiny_checkpoint, "hydra.launcher.cpus_per_task=64",
                                              "hydra.launcher.mem_gb=4096"))
    out, err = big.communicate(timeout=180)
    assert big.returncode == 1 and time.monotonic() - started < 90 and "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("Error:")]
    assert line.startswith("Error: 8 of the 8 jobs of task tiny:tiny-clip did not finish")
    assert "PENDING (PartitionConfig)" in line and "cpus_per_task=64" in line and "cancelled it" in line
    assert not queue("%i")


def test_a_tasks_progress_keeps_each_finished_job_and_ignores_a_line_cut_short(tmp_path):
    from hydra_plugins.clip_tables.tasks import JobDone, JobFailed, Progress, progress_file

    progress = Progress(progress_file(tmp_path, 3))
    progress.add(3, JobDone(0.5))
    progress.add(4, JobFailed("dataset.root=/x does not exist"))
    with open(progress.path, "a") as file:
        file.write('{"job": 5, "val')  # killed while writing
    assert progress.read() == {3: JobDone(0.5), 4: JobFailed("dataset.root=/x does not exist")}


def test_tasks_are_named_after_their_model():
    from hydra_plugins.clip_tables.launcher import task_label

    assert task_label(["model=vit_b_32_openai", "dataset=cars"], "tiny") == "vit_b_32_openai"
    assert task_label(["model.pretrained=/runs/a/checkpoints/step_300.pt", "dataset=cars"], "tiny") == "tiny:step_300"
    assert task_label(["dataset=cars"], "tiny") == "tiny"


STOPPED = """
import multiprocessing, os, signal, sys, time
from hydra_plugins.clip_tables.tasks import StopSignals
from pipeline.errors import Interrupted

def worker(ready):
    ready.set()
    time.sleep(5)
    print("worker lived", flush=True)

stop = StopSignals()
stop.install()
ready = multiprocessing.get_context("fork").Event()
child = multiprocessing.get_context("fork").Process(target=worker, args=(ready,))
child.start()
ready.wait()
try:
    os.kill(child.pid, signal.SIGTERM)  # as SLURM signals every process of a task
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
    print("main went on", flush=True)
except Interrupted as exc:
    print(f"main stopped: {exc}", flush=True)
child.join()
"""


def test_only_the_tasks_main_process_answers_a_stop_signal():
    """SLURM signals every process of a task: a forked child (a DataLoader worker) inherits the handler and leaves
    the decision to the main process, which unwinds what it runs."""
    said = subprocess.run([sys.executable, "-c", STOPPED], capture_output=True, text=True, timeout=60)
    assert said.stdout.splitlines() == [
        "main stopped: SIGTERM: the task was cancelled, preempted or reached its time limit", "worker lived"], said


@pytest.mark.slow
def test_a_pending_tasks_reason_is_read_from_squeue(cluster):
    from hydra_plugins.clip_tables import watch

    said = subprocess.run(["sbatch", "--parsable", "-c", "64", "-o", "/dev/null", "--wrap", "true"], check=True,
                          capture_output=True, text=True)
    job = said.stdout.strip()
    try:
        wait_for(lambda: watch.pending_reasons([job]).get(job) == "PartitionConfig", timeout_s=30,
                 what="squeue to give the reason")
        assert "PartitionConfig" in watch.HOPELESS and watch.pending_reasons([]) == {}
    finally:
        subprocess.run(["scancel", job], check=True)
