"""A one-node SLURM cluster inside this machine (`make slurm`), from Debian's packages: munge, MariaDB for the
accounting submitit needs (it polls `sacct`), slurmdbd, slurmctld and slurmd, all as root, all taken down by pid.

It is what the launcher's fault tests run on (preemption, time limits, `scancel`, dead workers), and a way to try
the SLURM launcher without a cluster. A container has neither systemd nor cgroup delegation, so processes are
tracked through /proc (`proctrack/linuxproc`, `task/none`, no accounting gatherer); everything else is a real
cluster: two partitions on the node, `main` (the default, preemptible: a preempted job is requeued) and `urgent`
(its jobs preempt `main`'s). Clients find it through `SLURM_CONF`, which `up` prints.
"""
from __future__ import annotations

import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
from omegaconf import DictConfig

from pipeline import CONF_DIR
from pipeline.errors import PipelineError, reported
from pipeline.lab.postgres import traversal_problem

log = logging.getLogger(__name__)

PACKAGES = "slurm-wlm munge slurmdbd mariadb-server"
DAEMONS = ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "mariadb-install-db", "sacctmgr")
DATABASE, DB_USER = "slurm_acct_db", "slurm"
STARTED = "started"  # the pid files of the daemons this folder started, one per line, in start order


@dataclass(frozen=True)
class Cluster:
    """Where a cluster lives and the ports it uses."""

    folder: Path
    name: str = "cliptables"
    ctld_port: int = 6817
    slurmd_port: int = 6818
    dbd_port: int = 6819
    db_port: int = 3307
    kill_wait_s: int = 30
    grace_time_s: int = 10

    @property
    def conf(self) -> Path:
        return self.folder / "etc" / "slurm.conf"

    def path(self, *parts: str) -> Path:
        return self.folder.joinpath(*parts)

    @property
    def env(self) -> dict[str, str]:
        """The environment a client (sbatch, squeue, submitit) needs to reach this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> "Cluster":
        ports = cfg.ports
        return cls(Path(cfg.folder), cfg.cluster, int(ports.slurmctld), int(ports.slurmd), int(ports.slurmdbd),
                   int(ports.mariadb), int(cfg.kill_wait_s), int(cfg.grace_time_s))


def missing_programs() -> list[str]:
    return [name for name in DAEMONS if not (shutil.which(name) or Path("/usr/sbin", name).exists())]


def node_line() -> str:
    """This node as slurmd sees it (`slurmd -C`): CPUs, sockets, cores and memory that slurmd will accept."""
    said = subprocess.run([_program("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    return next(line for line in said.splitlines() if line.startswith("NodeName="))


def slurm_conf(cluster: Cluster, node: str) -> str:
    host = node.split()[0].removeprefix("NodeName=")
    folder = cluster.folder
    return "\n".join([
        f"ClusterName={cluster.name}", f"SlurmctldHost={host}", "SlurmUser=root", "SlurmdUser=root",
        f"SlurmctldPort={cluster.ctld_port}", f"SlurmdPort={cluster.slurmd_port}", "AuthType=auth/munge",
        f"StateSaveLocation={folder / 'state'}", f"SlurmdSpoolDir={folder / 'spool'}",
        f"SlurmctldPidFile={folder / 'run' / 'slurmctld.pid'}", f"SlurmdPidFile={folder / 'run' / 'slurmd.pid'}",
        f"SlurmctldLogFile={folder / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={folder / 'log' / 'slurmd.log'}",
        # No systemd or cgroup delegation in a container: processes are found through /proc.
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core_Memory",
        # Without a default, a job that asks for no memory is given the whole node's, and the next one waits.
        "DefMemPerCPU=1024", "MpiDefault=none", "ReturnToService=2", "SchedulerType=sched/backfill",
        f"KillWait={cluster.kill_wait_s}", "InactiveLimit=0", "MinJobAge=300",
        "AccountingStorageType=accounting_storage/slurmdbd", "AccountingStorageHost=localhost",
        f"AccountingStoragePort={cluster.dbd_port}", "JobCompType=jobcomp/none",
        "PreemptType=preempt/partition_prio", "PreemptMode=REQUEUE",
        f"{node} State=UNKNOWN",
        f"PartitionName=main Nodes={host} Default=YES MaxTime=INFINITE State=UP PriorityTier=1 "
        f"PreemptMode=REQUEUE GraceTime={cluster.grace_time_s}",
        f"PartitionName=urgent Nodes={host} MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF",
        "",
    ])


def slurmdbd_conf(cluster: Cluster, password: str) -> str:
    folder = cluster.folder
    return "\n".join([
        "AuthType=auth/munge", "DbdHost=localhost", f"DbdPort={cluster.dbd_port}", "SlurmUser=root",
        f"PidFile={folder / 'run' / 'slurmdbd.pid'}", f"LogFile={folder / 'log' / 'slurmdbd.log'}",
        "StorageType=accounting_storage/mysql", "StorageHost=127.0.0.1", f"StoragePort={cluster.db_port}",
        f"StorageUser={DB_USER}", f"StoragePass={password}", f"StorageLoc={DATABASE}", "",
    ])


def up(cluster: Cluster) -> None:
    """Start every daemon this cluster lacks, then wait until its node takes jobs."""
    if os.geteuid() != 0:
        raise PipelineError("the test cluster runs its daemons as root; run `make slurm` as root (in a container)")
    missing = missing_programs()
    if missing:
        raise PipelineError(f"{', '.join(missing)} not found: install Debian's {PACKAGES} "
                            f"(`apt-get install {PACKAGES}`, or `make slurm-packages`)")
    if running(cluster):
        log.info("the cluster in %s is up already", cluster.folder)
        return
    _check_reachable(cluster.folder)
    for name in ("etc", "state", "spool", "run", "log"):
        cluster.path(name).mkdir(parents=True, exist_ok=True)
    cluster.path(STARTED).write_text("")
    _start_munge(cluster)
    password = _start_database(cluster)
    cluster.conf.write_text(slurm_conf(cluster, node_line()))
    dbd_conf = cluster.path("etc", "slurmdbd.conf")
    dbd_conf.write_text(slurmdbd_conf(cluster, password))
    dbd_conf.chmod(0o600)  # slurmdbd refuses a config others can read: it holds the database password
    _daemon(cluster, "slurmdbd", [_program("slurmdbd")], cluster.path("run", "slurmdbd.pid"))
    _wait_port(cluster.dbd_port, "slurmdbd", cluster.path("log", "slurmdbd.log"))
    _add_cluster(cluster)
    _daemon(cluster, "slurmctld", [_program("slurmctld"), "-f", str(cluster.conf)], cluster.path("run", "slurmctld.pid"))
    _daemon(cluster, "slurmd", [_program("slurmd"), "-f", str(cluster.conf)], cluster.path("run", "slurmd.pid"))
    _wait_idle(cluster)


def down(cluster: Cluster) -> int:
    """Stop the daemons this folder started, last started first, each by its pid; returns how many were running."""
    listed = cluster.path(STARTED)
    stopped = 0
    if listed.exists():
        for pid_file in reversed([Path(line) for line in listed.read_text().splitlines() if line]):
            pid = _pid(pid_file)
            if pid is not None and _stop(pid):
                stopped += 1
        listed.unlink()
    return stopped


def running(cluster: Cluster) -> bool:
    """Whether this folder's controller answers."""
    if not cluster.conf.exists() or _pid(cluster.path("run", "slurmctld.pid")) is None:
        return False
    said = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=cluster.env, timeout=30)
    return said.returncode == 0 and bool(said.stdout.strip())


def _program(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _check_reachable(folder: Path) -> None:
    """MariaDB runs as `mysql`, which must reach the cluster's folder."""
    user = pwd.getpwnam("mysql")
    blocked = traversal_problem(folder.resolve(), user)
    if blocked is not None:
        raise PipelineError(f"the database runs as user mysql, which cannot enter {blocked}: `chmod o+x {blocked}`, "
                            f"or put the cluster elsewhere with folder=")


def _start_munge(cluster: Cluster) -> None:
    """munged as user munge with Debian's key; one already running (the machine's own) is used as it is."""
    socket_dir = Path("/run/munge")
    if (socket_dir / "munge.socket.2").exists() and _pid(socket_dir / "munged.pid") is not None:
        return
    socket_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(socket_dir, "munge", "munge")
    for folder in (Path("/var/lib/munge"), Path("/var/log/munge")):
        folder.mkdir(parents=True, exist_ok=True)
        shutil.chown(folder, "munge", "munge")
    _daemon(cluster, "munged", ["runuser", "-u", "munge", "--", _program("munged")], socket_dir / "munged.pid")


def _start_database(cluster: Cluster) -> str:
    """MariaDB on 127.0.0.1 with the accounting database and its user; returns that user's password."""
    data = cluster.path("mysql")
    password_file = cluster.path("etc", "db_password")
    if not (data / "mysql").exists():
        data.mkdir(parents=True, exist_ok=True)
        shutil.chown(data, "mysql", "mysql")
        _run([_program("mariadb-install-db"), "--user=mysql", f"--datadir={data}", "--skip-test-db",
              "--auth-root-authentication-method=socket"], "mariadb-install-db")
        password_file.write_text(secrets.token_hex(16))
        password_file.chmod(0o600)
    # The server runs as mysql: its socket, pid file and log live in its own folder.
    sock, pid_file, log_file = data / "mysqld.sock", data / "mariadbd.pid", data / "mariadb.log"
    _daemon(cluster, "mariadbd",
            [_program("mariadbd"), "--user=mysql", f"--datadir={data}", f"--socket={sock}", f"--port={cluster.db_port}",
             "--bind-address=127.0.0.1", "--skip-name-resolve", f"--pid-file={pid_file}", f"--log-error={log_file}"],
            pid_file, background=True)
    _wait_port(cluster.db_port, "mariadbd", log_file)
    password = password_file.read_text().strip()
    statements = (f"CREATE DATABASE IF NOT EXISTS {DATABASE}; "
                  f"CREATE USER IF NOT EXISTS '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{password}'; "
                  f"GRANT ALL ON {DATABASE}.* TO '{DB_USER}'@'127.0.0.1'; FLUSH PRIVILEGES;")
    _run(["mariadb", f"--socket={sock}", "-u", "root", "-e", statements], "creating the accounting database")
    return password


def _add_cluster(cluster: Cluster) -> None:
    """Register the cluster with accounting once (`sacctmgr add cluster` fails when it exists)."""
    listed = subprocess.run(["sacctmgr", "-n", "-P", "list", "cluster", "format=cluster"], capture_output=True,
                            text=True, env=cluster.env, timeout=60)
    if cluster.name not in listed.stdout.split():
        _run(["sacctmgr", "-i", "add", "cluster", cluster.name], "sacctmgr add cluster", cluster.env)


def _daemon(cluster: Cluster, name: str, command: list[str], pid_file: Path, background: bool = False) -> None:
    """Start a daemon (it forks itself away; `background` for one that stays in the foreground) and record its pid
    file so `down` stops it."""
    log_file = cluster.path("log", f"{name}.out")
    with open(log_file, "ab") as out:
        started = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=cluster.env, start_new_session=True)
    if not background and started.wait(timeout=60) != 0:
        raise PipelineError(f"{name} did not start (exit {started.returncode}); see {log_file}")
    deadline = time.monotonic() + 30
    while _pid(pid_file) is None:
        if time.monotonic() > deadline or (background and started.poll() is not None):
            raise PipelineError(f"{name} did not start; see {log_file} and the logs in {cluster.path('log')}")
        time.sleep(0.1)
    with open(cluster.path(STARTED), "a") as listed:
        listed.write(f"{pid_file}\n")


def _run(command: list[str], what: str, env: dict[str, str] | None = None) -> None:
    said = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    if said.returncode != 0:
        last = (said.stderr or said.stdout).strip().splitlines()
        raise PipelineError(f"{what} failed: {last[-1] if last else f'exit {said.returncode}'}")


def _wait_port(port: int, name: str, log_file: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            probe.settimeout(1)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise PipelineError(f"{name} does not answer on port {port} after {timeout_s:.0f} s; see {log_file}")


def _wait_idle(cluster: Cluster, timeout_s: float = 60) -> None:
    """Until the node takes jobs (slurmd registered with the controller)."""
    deadline = time.monotonic() + timeout_s
    state = ""
    while time.monotonic() < deadline:
        said = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=cluster.env, timeout=30)
        state = said.stdout.strip()
        if said.returncode == 0 and state.split("\n")[0].rstrip("*") in ("idle", "mixed", "allocated"):
            return
        time.sleep(0.5)
    raise PipelineError(f"the node is {state or 'not registered'} after {timeout_s:.0f} s; see "
                        f"{cluster.path('log', 'slurmd.log')} and {cluster.path('log', 'slurmctld.log')}")


def _pid(pid_file: Path) -> int | None:
    """The pid in `pid_file` if that process is alive."""
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, IndexError):
        return None


def _stop(pid: int, timeout_s: float = 20) -> bool:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    return True


@hydra.main(config_path=str(CONF_DIR), config_name="slurm", version_base="1.3")
@reported
def main(cfg: DictConfig) -> None:
    cluster = Cluster.from_cfg(cfg)
    if cfg.action == "up":
        start = time.monotonic()
        up(cluster)
        print(f"SLURM cluster {cluster.name} up in {time.monotonic() - start:.0f} s (partitions main, urgent); "
              f"clients need: export SLURM_CONF={cluster.conf}", flush=True)
    elif cfg.action == "down":
        print(f"stopped {down(cluster)} daemon(s) of {cluster.folder}", flush=True)
    elif cfg.action == "status":
        print(f"SLURM cluster in {cluster.folder}: {'up' if running(cluster) else 'down'}", flush=True)
    else:
        raise PipelineError(f"action={cfg.action}: use up, down or status")


if __name__ == "__main__":
    main()
