"""What one submitted task runs: a group of jobs one after another in one process, what each job's outcome was,
and what the task does when the scheduler tells it to stop.

Each finished job's outcome is appended to the task's progress file in the sweep's folder (a JSON line), so a
requeued task skips what it already did, and the launcher knows which jobs finished when a task dies without
returning (cancelled, out of memory, a lost node). Outcomes are plain values: a task's return is pickled back to
the launcher, and a Hydra `JobReturn` holds the whole config and, for a failed job, an exception that may hold a
lock (`TypeError: cannot pickle '_thread.lock' object`).

submitit answers its preemption or time-limit signal (USR2) by raising `SystemExit` from wherever the task is, and
ignores SIGTERM until SLURM's SIGKILL; forked children (DataLoader workers) inherit its handlers and race for its
checkpoint file. Here the task's main process alone answers either signal, by unwinding the job in progress
(`Interrupted`: its runs end KILLED, its claims are released); then USR2 goes on to submitit's own handler, which
checkpoints this task and requeues it (or says it timed out too often), and SIGTERM ends the task (SLURM requeues
a preempted job by itself).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from hydra.core.utils import JobReturn, JobStatus

from pipeline.errors import Interrupted, one_line
from pipeline.store import holders

PROGRESS_DIR = "progress"  # under the sweep's .submitit folder: one file per task


@dataclass(frozen=True)
class JobDone:
    """A job that finished: its task function's return value (the score, or None)."""

    value: Any = None


@dataclass(frozen=True)
class JobFailed:
    """A job that did not finish: what it said (its `Error: ...` line), or what became of its task."""

    message: str


Outcome = JobDone | JobFailed


def outcome_of(returned: JobReturn) -> Outcome:
    """A job's outcome from what Hydra's per-job path returned (an unexpected error is caught there)."""
    if returned.status == JobStatus.FAILED:
        error = returned._return_value
        return JobFailed(f"{type(error).__name__}: {one_line(error)}")
    return JobDone(returned._return_value if isinstance(returned._return_value, (int, float, str, type(None)))
                   else None)


@dataclass(frozen=True)
class Progress:
    """The outcomes of one task's jobs so far, by job number, one JSON line each."""

    path: Path

    def read(self) -> dict[int, Outcome]:
        found: dict[int, Outcome] = {}
        if not self.path.exists():
            return found
        for line in self.path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill: that job did not finish
                continue
            number = int(entry.pop("job"))
            found[number] = JobFailed(entry["message"]) if "message" in entry else JobDone(**entry)
        return found

    def add(self, number: int, outcome: Outcome) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as file:  # one small write: a line is whole or cut short, never interleaved
            file.write(json.dumps({"job": number, **asdict(outcome)}) + "\n")


def progress_file(sweep_dir: Path, first_job: int) -> Path:
    return Path(sweep_dir) / ".submitit" / PROGRESS_DIR / f"{first_job}.jsonl"


class StopSignals:
    """SIGTERM and submitit's USR2 in a task's main process while it runs its jobs: the first one unwinds the job in
    progress; `finish` then requeues (USR2, through submitit's handler) or ends the task."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.usr = _usr_signal()
        self.submitit_handler = signal.getsignal(self.usr)  # checkpoint and requeue, where submitit runs the task
        self.received: list[int] = []

    def install(self) -> None:
        for signum in (signal.SIGTERM, self.usr):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if os.getpid() != self.pid:  # a forked child (a DataLoader worker): the task's main process decides
            return
        self.received.append(signum)
        if len(self.received) == 1:
            # SLURM signals every process of the task: DataLoader workers die of SIGTERM (torch's own handler), and
            # torch's SIGCHLD handler would then raise in the middle of this unwinding; the task is ending anyway.
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            raise Interrupted(_reason(signum, signum == self.usr))

    def finish(self) -> None:
        """After the job in progress has unwound: requeue through submitit if it asked (it checkpoints this task,
        requeues it and exits; past `max_num_timeout` it raises, which reports the task as timed out). A SIGTERM
        while SLURM still counts the task as running is a preemption's warning: SLURM requeues only a task still
        running when its GraceTime ends, and records one that exits first as FAILED, so the task requeues itself
        (as submitit does on USR2). Otherwise (cancelled, past its time limit, not under SLURM) it ends."""
        sys.stderr.flush()
        if self.usr in self.received and callable(self.submitit_handler):
            try:
                self.submitit_handler(self.usr, None)
            except Exception:  # submitit's UncompletedJobError: timed out once more than max_num_timeout allows
                print("Error: the task reached its time limit more often than hydra.launcher.max_num_timeout allows; "
                      "raise hydra.launcher.timeout_min (per job) or max_num_timeout", file=sys.stderr, flush=True)
                raise
        job = os.environ.get("SLURM_JOB_ID")
        if job and self.received[0] == signal.SIGTERM and (holders.slurm_state(job) or ("",))[0] == "RUNNING":
            said = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
            print(f"preempted: requeued SLURM job {job}" if said.returncode == 0 else
                  f"preempted: SLURM refused to requeue job {job}: {said.stderr.strip()}", file=sys.stderr, flush=True)
        raise SystemExit(128 + self.received[0])


def _usr_signal() -> int:
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


def _reason(signum: int, requeue: bool) -> str:
    name = signal.Signals(signum).name
    if requeue:
        return f"{name}: the scheduler's preemption or time-limit warning; the task requeues"
    return f"{name}: the task was cancelled, preempted or reached its time limit"


class GroupTask:
    """What one submitit task runs: its jobs one after another through `run_one` (the launcher's per-job path)."""

    def __init__(self, run_one: Callable[..., JobReturn]) -> None:
        self.run_one = run_one

    def __call__(self, jobs: Sequence[tuple], progress_path: Path) -> list[Outcome]:
        stop = StopSignals()
        stop.install()
        progress = Progress(Path(progress_path))
        outcomes = progress.read()  # a requeued task: what it did before
        try:
            for arguments in jobs:
                number = arguments[2]
                if number in outcomes:
                    continue
                outcome = self._run(arguments)
                # A job that failed once the task was told to stop failed of the stop, whatever it raised on the way
                # out; one that finished (the signal came as it returned) is done.
                if stop.received and not isinstance(outcome, JobDone):
                    break
                outcomes[number] = outcome
                progress.add(number, outcome)
                if stop.received:
                    break
        except Interrupted:
            pass  # told to stop between two jobs
        if stop.received:
            stop.finish()
        return [outcomes[arguments[2]] for arguments in jobs]

    def _run(self, arguments: tuple) -> Outcome:
        import submitit

        stderr = Path(submitit.JobEnvironment().paths.stderr)
        sys.stderr.flush()
        start = stderr.stat().st_size if stderr.exists() else 0
        try:
            return outcome_of(self.run_one(*arguments))
        except Exception as exc:  # this job is reported; the next one runs
            if not isinstance(exc, JobExited):  # its whole story goes to the task's log (it said its own line)
                traceback.print_exc()
            sys.stderr.flush()
            text = stderr.read_bytes()[start:].decode(errors="replace") if stderr.exists() else ""
            return JobFailed(said(text) or f"{type(exc).__name__}: {one_line(exc)}")

    def checkpoint(self, jobs: Sequence[tuple], progress_path: Path) -> Any:
        """Requeued (preempted, or warned of its time limit): the same group; the progress file says what is done."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, jobs, progress_path)


class JobExited(RuntimeError):
    """A job ended with `SystemExit` (a bad input, already reported on its stderr)."""


def said(text: str) -> str:
    """The last `Error: ...` line of a log, else its last line."""
    lines = text.splitlines()
    errors = [line.removeprefix("Error: ") for line in lines if line.startswith("Error: ")]
    return (errors[-1] if errors else next((line for line in reversed(lines) if line.strip()), "")).strip()
