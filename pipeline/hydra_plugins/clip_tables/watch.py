"""Waiting for a sweep's submitted tasks, and saying what became of each: its jobs' outcomes when it returns; when it
dies without returning, SLURM's account of why (CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, ...) for the jobs its
progress file does not list as done; a task SLURM will never start (PENDING for a reason that waiting cannot
clear) is cancelled and said so within about a minute, instead of waiting forever.

submitit's `results()` blocks on one task at a time and asks SLURM's accounting at most every few minutes once a
sweep is old; this loop looks at every task at once, and asks SLURM every `SQUEUE_S` seconds.
"""
from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from pipeline.errors import one_line

from hydra_plugins.clip_tables.tasks import JobFailed, Outcome, Progress

log = logging.getLogger(__name__)

# SLURM's reasons for a pending job that waiting does not clear: the request exceeds what the partition, its nodes,
# the account or the QOS allow, or names nodes or features that are not there.
HOPELESS = {
    "PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "ReqNodeNotAvail", "BadConstraints",
    "InvalidAccount", "InvalidQOS", "QOSMaxCpuPerJobLimit", "QOSMaxGRESPerJob", "QOSMaxMemoryPerJob",
    "QOSMaxNodePerJobLimit", "QOSMaxWallDurationPerJobLimit", "AssocMaxCpuPerJobLimit", "AssocMaxGRESPerJob",
    "AssocMaxMemPerJob", "AssocMaxNodesPerJob", "AssocMaxWallDurationPerJobLimit", "PartitionInactive",
    "DependencyNeverSatisfied",
}
# SLURM's end states of a task that was stopped from outside, which therefore leaves no result file.
KILLED = {"CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
POLL_S = 2.0     # how often the tasks' result files are looked for
SQUEUE_S = 10.0  # how often SLURM is asked for the pending tasks' reasons


@dataclass
class Task:
    """One submitted task: its submitit job, its jobs' numbers, where it records progress, how it is named."""

    job: Any
    numbers: list[int]
    progress: Progress
    name: str
    slurm: bool = True
    outcomes: list[Outcome] | None = None
    cause: str = ""  # why its unfinished jobs did not finish, when it died
    pending_since: dict[str, float] = field(default_factory=dict)  # a hopeless reason -> first seen

    @property
    def log_path(self) -> str:
        return str(self.job.paths.stderr)


def wait(tasks: Sequence[Task], slurm: bool, give_up_pending_s: float, request: str) -> None:
    """Until every task has returned or died; fills each task's `outcomes` (and `cause`)."""
    waiting = list(tasks)
    asked = 0.0
    while waiting:
        if slurm and time.monotonic() - asked >= SQUEUE_S:
            asked = time.monotonic()
            waiting[0].job.watcher.update()  # one `sacct` for every task: a task that died is seen within seconds
            for task in hopeless(waiting, give_up_pending_s, request):
                task.job.cancel(check=False)
                waiting.remove(task)
        for task in [task for task in waiting if task.job.done()]:
            collect(task)
            waiting.remove(task)
        if waiting:
            time.sleep(POLL_S)


def collect(task: Task, cause: str | None = None) -> None:
    """A task's outcomes: as it returned them, or, when it died, the progress it recorded and why it died."""
    if cause is None and task.slurm and not task.job.paths.result_pickle.exists():
        state = task.job.watcher.get_state(task.job.job_id, mode="cache")
        if state.split()[0] in KILLED:  # nothing to wait for (submitit waits 15 s for a result file on slow disks)
            cause = f"its SLURM task {task.job.job_id} ended {state}"
    if cause is None:
        try:
            task.outcomes = list(task.job.results()[0])
            return
        except Exception as exc:  # the task itself died (killed, out of memory) or raised outside any job
            cause = death(task, exc)
    task.cause = cause
    done = task.progress.read()
    task.outcomes = [done.get(number, JobFailed(cause)) for number in task.numbers]


def death(task: Task, exc: BaseException) -> str:
    """Why a task died: SLURM's state when it was stopped from outside, else the last `Error:` line it wrote (the
    task's own last words come after any job's), else the end of its traceback."""
    state = ""
    if task.slurm:
        try:
            state = str(task.job.get_info(mode="force").get("State", "")).strip()
        except Exception as error:  # accounting does not answer
            log.debug("no SLURM state for task %s: %s", task.job.job_id, error)
    if state.split(" ")[0] in KILLED:
        return f"its SLURM task {task.job.job_id} ended {state}"
    stderr = task.job.paths.stderr
    text = stderr.read_text(errors="replace") if stderr.exists() else ""
    errors = [line for line in text.splitlines() if line.startswith("Error: ")]
    return errors[-1].removeprefix("Error: ") if errors else one_line(exc)


def hopeless(tasks: Sequence[Task], give_up_s: float, request: str) -> list[Task]:
    """The tasks that have been PENDING for a reason waiting cannot clear for `give_up_s`; each gets its cause."""
    reasons = pending_reasons([task.job.job_id for task in tasks])
    now = time.monotonic()
    given_up = []
    for task in tasks:
        reason = reasons.get(str(task.job.job_id))
        if reason not in HOPELESS:
            task.pending_since.clear()
            continue
        since = task.pending_since.setdefault(reason, now)
        if now - since >= give_up_s:
            collect(task, f"SLURM cannot start its task {task.job.job_id}: PENDING ({reason}) for {now - since:.0f} s "
                          f"with {request}; cancelled it. Ask for what the partition's nodes have "
                          f"(hydra.launcher.partition, cpus_per_task, mem_gb, gpus_per_node, timeout_min), or see "
                          f"`scontrol show partition`")
            given_up.append(task)
    return given_up


def pending_reasons(job_ids: Sequence[str]) -> dict[str, str]:
    """SLURM's reason for each pending job among `job_ids` (`squeue`)."""
    if not job_ids:
        return {}
    try:
        said_ = subprocess.run(["squeue", "-h", "-r", "-t", "PENDING", "-o", "%i|%r", "-j", ",".join(map(str, job_ids))],
                               capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("squeue did not answer: %s", exc)
        return {}
    reasons = {}
    for line in said_.stdout.splitlines():
        job_id, _, reason = line.partition("|")
        reasons[job_id.strip()] = reason.split(",")[0].strip()  # "ReqNodeNotAvail, UnavailableNodes:..."
    return reasons
