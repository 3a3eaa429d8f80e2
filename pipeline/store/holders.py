"""Who holds a run or a claim, and whether that process is still alive: a killed worker's claims are taken over at
once and the runs it left RUNNING are closed, instead of waiting for a heartbeat timeout.

Every run this project creates carries its process's identity as tags: host, pid, the process's start time and the
machine's boot (so a reused pid is not mistaken for the holder), and under SLURM the job id and its restart count
(a requeued task is the same job, started again). Whether a holder is alive is answered on its own host by /proc,
and elsewhere by SLURM's state of its job; a holder on another host without SLURM cannot be checked (None), and
only its heartbeat can tell.
"""
from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping

HOST, PID, START, BOOT = "holder_host", "holder_pid", "holder_start", "holder_boot"
SLURM_JOB, SLURM_RESTARTS = "holder_slurm_job", "holder_slurm_restarts"
# SLURM states in which a job's processes run (or are stopped and will run again).
_LIVE_STATES = {"RUNNING", "SUSPENDED", "STOPPED"}


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    start: str = ""          # the process's start, in clock ticks since boot (/proc/<pid>/stat, field 22)
    boot: str = ""           # the machine's boot id
    slurm_job: str = ""      # SLURM_JOB_ID (unique per array task)
    slurm_restarts: int = 0  # SLURM_RESTART_COUNT: how often the job was requeued before this start

    @classmethod
    def current(cls) -> "Holder":
        pid = os.getpid()
        return cls(socket.gethostname(), pid, process_start(pid) or "", boot_id(), os.environ.get("SLURM_JOB_ID", ""),
                   int(os.environ.get("SLURM_RESTART_COUNT") or 0))

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> "Holder | None":
        """The holder a run's tags name; None for a run made before holders were recorded."""
        if HOST not in tags or not tags.get(PID, "").isdigit():
            return None
        restarts = tags.get(SLURM_RESTARTS, "0")
        return cls(tags[HOST], int(tags[PID]), tags.get(START, ""), tags.get(BOOT, ""), tags.get(SLURM_JOB, ""),
                   int(restarts) if restarts.isdigit() else 0)

    def tags(self) -> dict[str, str]:
        found = {HOST: self.host, PID: str(self.pid), START: self.start, BOOT: self.boot}
        if self.slurm_job:
            found.update({SLURM_JOB: self.slurm_job, SLURM_RESTARTS: str(self.slurm_restarts)})
        return found

    def describe(self) -> str:
        where = f"pid {self.pid} on {self.host}"
        return f"{where} (SLURM job {self.slurm_job})" if self.slurm_job else where


def current_tags() -> dict[str, str]:
    """The tags that name this process as a run's holder."""
    return Holder.current().tags()


def alive(holder: Holder, me: Holder | None = None) -> bool | None:
    """Whether `holder` is still running: True, False, or None when nothing here can tell."""
    me = me or Holder.current()
    if holder.slurm_job and holder.slurm_job == me.slurm_job and holder.slurm_restarts < me.slurm_restarts:
        return False  # this task's own earlier start, before it was requeued
    if holder.host == me.host:
        return _alive_here(holder, me)
    if holder.slurm_job:
        return slurm_alive(holder.slurm_job, holder.slurm_restarts)
    return None


def _alive_here(holder: Holder, me: Holder) -> bool:
    if holder.boot and me.boot and holder.boot != me.boot:
        return False  # the machine rebooted since
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    return not holder.start or process_start(holder.pid) in (None, holder.start)


def slurm_alive(job_id: str, restarts: int) -> bool | None:
    """From SLURM's controller (`scontrol`), else its accounting (`sacct`, for jobs the controller forgot)."""
    state = slurm_state(job_id)
    if state is None:
        return None
    name, count = state
    if name not in _LIVE_STATES:
        return False
    return count is None or count == restarts


def slurm_state(job_id: str) -> tuple[str, int | None] | None:
    """A job's state and restart count (None where only accounting knows the job), or None if SLURM cannot say."""
    try:
        said = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=20)
        if said.returncode == 0 and "JobState=" in said.stdout:
            fields = dict(item.split("=", 1) for item in said.stdout.split() if "=" in item)
            restarts = fields.get("Restarts", "0")
            return fields["JobState"], int(restarts) if restarts.isdigit() else 0
        said = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State"], capture_output=True,
                              text=True, timeout=20)
        states = said.stdout.split()
        if said.returncode == 0 and states:
            return states[-1].split()[0], None
    except (OSError, subprocess.SubprocessError):
        pass  # no SLURM client on this machine, or it does not answer
    return None


def process_start(pid: int) -> str | None:
    """A process's start time in clock ticks since boot: with the pid, it names one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses; the fields after its closing one are plain.
    return stat.rsplit(")", 1)[1].split()[19]


@lru_cache(maxsize=1)
def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""
