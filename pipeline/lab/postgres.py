"""A private PostgreSQL cluster in a folder of the project's own, as the tracking server's backend store.

Debian's PostgreSQL 15 provides `initdb` and `pg_ctl` (on the PATH, or under `pg_config --bindir`). As root they
must run as an unprivileged user (`postgres`), which then has to reach the cluster's folder. The cluster listens
on loopback TCP only (no Unix socket, whose path length and directory vary), with password authentication; the
password lives in a pgpass file readable by the invoking user alone, handed to clients through `PGPASSFILE`.
"""
from __future__ import annotations

import fcntl
import grp
import logging
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

DATABASE = "mlflow"
ROLE = "mlflow"
# pg_ctl starts the server through /bin/sh with the data folder in the command line; a folder name that a shell
# would read as anything but a path is refused instead.
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./@+,=-]+$")
_SETTINGS = "clip_tables.conf"


def bindir() -> Path:
    """Where `initdb` and `pg_ctl` are: on the PATH, else `pg_config --bindir`."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        folder = Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True).stdout.strip())
        if (folder / "initdb").exists():
            return folder
    raise PipelineError("PostgreSQL's initdb and pg_ctl were not found (on the PATH or under `pg_config --bindir`); "
                        "install PostgreSQL (Debian: `apt-get install postgresql`) or pass server.backend_store_uri= "
                        "to use a PostgreSQL server you already run")


def traversal_problem(folder: Path, user: pwd.struct_passwd) -> Path | None:
    """The first folder on the way to `folder` that `user` may not enter (no search permission), if any."""
    groups = {user.pw_gid} | {group.gr_gid for group in grp.getgrall() if user.pw_name in group.gr_mem}
    for parent in [*reversed(folder.parents), folder]:
        if not parent.exists():
            return None
        info = parent.stat()
        bit = (stat.S_IXUSR if info.st_uid == user.pw_uid else stat.S_IXGRP if info.st_gid in groups
               else stat.S_IXOTH)
        if user.pw_uid != 0 and not info.st_mode & bit:
            return parent
    return None


@dataclass(frozen=True)
class Cluster:
    """The cluster under `folder` (data in `folder/pgdata`), listening on 127.0.0.1:`port`."""

    folder: Path
    port: int
    os_user: str = "postgres"  # who runs initdb/pg_ctl when this process is root

    def __post_init__(self) -> None:
        # initdb and pg_ctl run from / (a folder the `postgres` user can always enter), so the path must not be relative.
        object.__setattr__(self, "folder", Path(self.folder).expanduser().resolve())

    @property
    def data(self) -> Path:
        return self.folder / "pgdata"

    @property
    def passfile(self) -> Path:
        return self.folder / "pgpass"

    @property
    def uri(self) -> str:
        """The SQLAlchemy URI MLflow uses (the password comes from PGPASSFILE, so it never shows in a process list)."""
        return f"postgresql+psycopg://{ROLE}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def client_env(self) -> dict[str, str]:
        return {"PGPASSFILE": str(self.passfile)}

    # -- who runs the binaries ----------------------------------------------------------------------------
    def _runner(self) -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(self.os_user)
        except KeyError:
            raise PipelineError(f"initdb refuses to run as root and there is no user {self.os_user!r} to run it as; "
                                f"create one or set server.postgres.os_user= to an existing unprivileged user") from None

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        runner = self._runner()
        kwargs = {"user": runner.pw_uid, "group": runner.pw_gid, "extra_groups": []} if runner else {}
        return subprocess.run([str(bindir() / args[0]), *args[1:]], capture_output=True, text=True, cwd="/",
                              **kwargs)

    def check_folder(self) -> None:
        if not _SAFE_PATH.match(str(self.folder)):
            raise PipelineError(f"server folder {self.folder} has characters PostgreSQL's pg_ctl would pass to a "
                                f"shell; choose a folder of letters, digits and ._-/ (server.folder=...)")
        runner = self._runner()
        blocked = traversal_problem(self.folder, runner) if runner else None
        if blocked is not None:
            raise PipelineError(f"user {runner.pw_name} cannot enter {blocked}, on the way to the PostgreSQL cluster "
                                f"{self.data}; run `chmod o+x {blocked}` or choose another folder (server.folder=...)")

    # -- lifecycle ----------------------------------------------------------------------------------------
    def ensure(self) -> None:
        """initdb once: a role `mlflow` with a random password, kept in the pgpass file."""
        self.check_folder()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.check_folder()  # again: folders just made under a restrictive umask count too
        if (self.data / "PG_VERSION").exists():
            return
        runner = self._runner()
        password = secrets.token_urlsafe(24)
        # Kept before initdb runs, so a crash in between never leaves a cluster whose password is lost.
        write_private(self.passfile, f"127.0.0.1:*:*:{ROLE}:{password}\n")
        pwfile = self.folder / ".initdb-password"
        write_private(pwfile, password + "\n")
        self.data.mkdir(mode=0o700, exist_ok=True)
        if runner:
            os.chown(pwfile, runner.pw_uid, runner.pw_gid)
            os.chown(self.data, runner.pw_uid, runner.pw_gid)
        try:
            done = self._run("initdb", "-D", str(self.data), "-U", ROLE, f"--pwfile={pwfile}",
                             "--auth=scram-sha-256", "-E", "UTF8", "--locale=C")
        finally:
            pwfile.unlink()
        if done.returncode != 0:
            shutil.rmtree(self.data, ignore_errors=True)  # a half-made cluster is never started
            said = (done.stderr or done.stdout).strip().splitlines() or [f"exit status {done.returncode}"]
            raise PipelineError(f"initdb failed: {said[-1]}")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\ninclude_if_exists = '{_SETTINGS}'\n")

    def _write_settings(self) -> None:
        settings = self.data / _SETTINGS
        settings.write_text(f"port = {int(self.port)}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n")
        runner = self._runner()
        if runner:
            os.chown(settings, runner.pw_uid, runner.pw_gid)

    @property
    def log_path(self) -> Path:
        return self.folder / "postgres.log"

    def start(self) -> None:
        """Start the cluster (made first if need be); the caller holds the folder's lock (see `running`)."""
        self.ensure()
        if self._run("pg_ctl", "status", "-D", str(self.data)).returncode == 0:
            self.stop()  # left by a session that died (it no longer holds the lock); restarted on the port asked for
        self._write_settings()
        self.log_path.touch()
        runner = self._runner()
        if runner:
            os.chown(self.log_path, runner.pw_uid, runner.pw_gid)
        done = self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log_path), "-w", "-t", "60")
        try:
            if done.returncode != 0:
                raise PipelineError(f"PostgreSQL did not start on 127.0.0.1:{self.port} "
                                    f"({done.stdout.strip()[-200:]}); see {self.log_path}")
            self._create_database()
        except BaseException:
            self.stop()  # whatever came up is taken down again
            raise

    def _create_database(self) -> None:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=ROLE, dbname="postgres", autocommit=True,
                             passfile=str(self.passfile)) as connection:
            exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone()
            if not exists:
                connection.execute(f"CREATE DATABASE {DATABASE}")

    def stop(self) -> None:
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w")

    @contextmanager
    def running(self, attach: bool = False) -> Iterator["Cluster"]:
        """The cluster, started for the block and stopped after it. One session per folder: a second one would
        stop the first one's database, so it is refused while the first holds the folder's lock; with `attach`,
        the cluster that session runs is used as it is, on its port."""
        self.check_folder()
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not attach:
                    raise PipelineError(f"another `make server` is running on {self.folder}; stop it first, or give "
                                        f"this one its own folder (folder=...)") from None
                port = re.search(r"^port = (\d+)", (self.data / _SETTINGS).read_text(), re.M).group(1)
                yield Cluster(self.folder, int(port), self.os_user)
                return
            self.start()
            try:
                yield self
            finally:
                self.stop()

    def client(self, program: str, *args: str) -> subprocess.CompletedProcess:
        """A PostgreSQL client (`pg_dump`, `pg_restore`) on this cluster's database, as its role."""
        command = [str(bindir() / program), "-h", "127.0.0.1", "-p", str(self.port), "-U", ROLE, *args]
        return subprocess.run(command, capture_output=True, text=True, env={**os.environ, **self.client_env})

    def connect(self):
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=ROLE, dbname=DATABASE,
                               passfile=str(self.passfile))


def write_private(path: Path, text: str) -> None:
    """A file only its owner can read, from the moment it exists."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    path.chmod(0o600)  # an existing file keeps its old mode through O_CREAT
