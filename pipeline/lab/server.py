"""`make server` (`python -m pipeline.lab.server`): the lab's MLflow tracking server, one command.

By default it runs on a private PostgreSQL cluster under `outputs/server/` (see `pipeline.lab.postgres`) and proxies
artifacts (`--artifacts-destination`), so workers need only its URL, no shared filesystem. A lab points it at its
own PostgreSQL (`backend_store_uri=`) and artifact store (`artifacts_destination=`) instead.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import hydra
from omegaconf import DictConfig

from pipeline import CONF_DIR
from pipeline.errors import PipelineError, reported
from pipeline.lab.auth import AuthFiles, acting_as, record_server, refresh_environments
from pipeline.lab.postgres import Cluster
from pipeline.store import indexes, tracking
from pipeline.store.tracking import API_PROBE, Credentials

log = logging.getLogger(__name__)



def probe(url: str, timeout_s: float = 120.0, process: subprocess.Popen | None = None,
          credentials: Credentials = Credentials()) -> None:
    """Wait until `url`'s tracking API answers 200 to `credentials`; fail early if `process` (the server) exits
    first."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with credentials.open(url.rstrip("/") + API_PROBE, timeout_s=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if process is not None and process.poll() is not None:
            raise PipelineError(f"mlflow server exited with status {process.returncode} before answering")
        if time.monotonic() > deadline:
            raise PipelineError(f"{url} did not answer its tracking API within {timeout_s:.0f} s")
        time.sleep(0.3)


@dataclass(frozen=True)
class ServerSettings:
    """One `mlflow server` process: where it listens, what stores it uses, whether it authenticates and serves
    TLS."""

    backend_store_uri: str
    artifacts_destination: str
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 4
    allowed_hosts: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    auth: bool = False
    tls: tuple[str, str] | None = None  # (certificate, key)
    admin: Credentials = Credentials()  # who the readiness probe asks as

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        # A server bound to every interface is reached by the machine's name.
        host = socket.getfqdn() if self.host in ("0.0.0.0", "::") else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def local_url(self) -> str:
        """Where this machine reaches it (a server on every interface answers on loopback too)."""
        return f"{self.scheme}://127.0.0.1:{self.port}" if self.host in ("0.0.0.0", "::") else self.url

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend_store_uri,
                   "--artifacts-destination", self.artifacts_destination, "--host", self.host,
                   "--port", str(self.port), "--workers", str(self.workers)]
        if self.allowed_hosts:
            command += ["--allowed-hosts", self.allowed_hosts]
        if self.auth:
            command += ["--app-name", "basic-auth"]
        if self.tls:
            certificate, key = self.tls
            command += ["--uvicorn-opts", f"--ssl-certfile {certificate} --ssl-keyfile {key}"]
        return command


@dataclass(frozen=True)
class Running:
    url: str
    process: subprocess.Popen
    log_path: Path
    refreshed: tuple[str, ...] = ()  # the users whose environment files now name the server's certificate (or none)


def ensure_port_free(host: str, port: int, what: str, setting: str) -> None:
    """Refuse a port something already listens on: a server started there would fail to bind, while the probe
    would be answered by whatever holds it (another `make server`, `make ui`)."""
    with socket.socket() as trial:
        trial.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no listener
        try:
            trial.bind((host, port))
        except OSError as exc:
            raise PipelineError(f"{what} port {port} on {host} is in use ({exc.strerror}); stop what holds it "
                                f"(another `make server`? `make ui`?) or choose another with {setting}=...") from None


@contextmanager
def serving(settings: ServerSettings, log_path: Path) -> Iterator[Running]:
    """Run `mlflow server` until the block ends; yields it once its API answers."""
    ensure_port_free(settings.host, settings.port, "the tracking server's", "port")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as output:
        # Its own process group: the server's workers are stopped with it, and a Ctrl-C reaches it only through
        # this process, which stops it in order (server first, then PostgreSQL).
        process = subprocess.Popen(settings.command(), stdout=output, stderr=subprocess.STDOUT,
                                   env={**os.environ, **settings.env}, start_new_session=True)
        try:
            try:
                probe(settings.local_url, process=process, credentials=settings.admin)
            except PipelineError as exc:
                raise PipelineError(f"{exc}; see {log_path}") from None
            if process.poll() is not None:
                raise PipelineError(f"mlflow server exited with status {process.returncode}; see {log_path}")
            yield Running(settings.url, process, log_path)
        finally:
            _stop_group(process)


def _stop_group(process: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def authenticated(cfg: DictConfig) -> bool:
    """Authentication is on beyond loopback unless `auth=false` says otherwise, which is said to expose it all."""
    loopback = str(cfg.host) in LOOPBACK
    if cfg.auth is None:
        return not loopback
    if not cfg.auth and not loopback:
        log.warning("serving on %s without authentication (auth=false): anyone who reaches port %s can read every "
                    "result, delete runs, and log runs the cache will serve to every worker", cfg.host, cfg.port)
    return bool(cfg.auth)


def tls_files(cfg: DictConfig) -> tuple[str, str] | None:
    """(certificate, key) when both are given; each must be a readable file."""
    if not cfg.tls_cert and not cfg.tls_key:
        return None
    if not (cfg.tls_cert and cfg.tls_key):
        raise PipelineError("HTTPS needs both tls_cert= (the certificate) and tls_key= (its private key)")
    found = []
    for setting, value in (("tls_cert", cfg.tls_cert), ("tls_key", cfg.tls_key)):
        path = Path(str(value)).expanduser().resolve()
        if not path.is_file():
            raise PipelineError(f"{setting}={value}: no such file")
        if any(c.isspace() for c in str(path)):  # uvicorn's options reach it as one space-separated string
            raise PipelineError(f"{setting}={path}: move it to a path without spaces")
        found.append(str(path))
    return found[0], found[1]


@contextmanager
def lab_server(cfg: DictConfig) -> Iterator[Running]:
    """The server `cfg` (conf/server.yaml) describes, on a private PostgreSQL cluster unless it names a backend,
    with basic authentication and TLS when asked for; once it answers, the experiment exists (its permissions are
    what users are granted) and `server.json` in the folder says where it is."""
    folder = Path(cfg.folder).expanduser().resolve()
    with ExitStack() as stack:
        env: dict[str, str] = {}
        auth, tls = authenticated(cfg), tls_files(cfg)
        certificate = tls[0] if tls else None
        files = AuthFiles(folder / "auth")
        backend = cfg.backend_store_uri
        if not backend:
            ensure_port_free("127.0.0.1", int(cfg.postgres.port), "PostgreSQL's", "postgres.port")
            cluster = stack.enter_context(Cluster(folder, int(cfg.postgres.port), cfg.postgres.os_user).running())
            backend, env = cluster.uri, cluster.client_env
        if auth:
            env = {**env, **files.server_env()}
        admin = files.admin(certificate) if auth else Credentials(certificate=certificate, verify=False)
        settings = ServerSettings(backend, str(cfg.artifacts_destination), cfg.host, int(cfg.port), int(cfg.workers),
                                  cfg.allowed_hosts, env, auth, tls, admin)
        running = stack.enter_context(serving(settings, folder / "mlflow-server.log"))
        if not cfg.backend_store_uri:  # the private cluster, migrated by the server as it started: ours to index
            indexes.ensure(backend, {"passfile": str(cluster.passfile)})
        with acting_as(admin):
            experiment_id = tracking.connect(settings.local_url, str(cfg.experiment)).experiment_id
        record_server(folder, url=settings.local_url, worker_url=running.url, experiment=str(cfg.experiment),
                      experiment_id=experiment_id, auth=auth, certificate=certificate,
                      backend_store_uri=cfg.backend_store_uri, artifacts_destination=str(cfg.artifacts_destination))
        # Users added before TLS was turned on (or before the certificate changed) get its path now.
        refreshed = tuple(refresh_environments(files.users, certificate)) if auth else ()
        yield dataclasses.replace(running, refreshed=refreshed)


@hydra.main(config_path=str(CONF_DIR), config_name="server", version_base="1.3")
@reported
def main(cfg: DictConfig) -> None:
    stop_on_sigterm()  # `kill` stops it as cleanly as Ctrl-C: server, then PostgreSQL
    with lab_server(cfg) as server:
        print(f"MLflow tracking server ready: {server.url}  (UI and API; backend: "
              f"{cfg.backend_store_uri or 'private PostgreSQL in ' + str(cfg.folder)}; log: {server.log_path})",
              flush=True)
        if authenticated(cfg):
            print(f"Authentication is on: add users with `make server-user ARGS=\"name=NAME role=worker\"` (or "
                  f"role=reader); the admin's password is in {Path(cfg.folder) / 'auth' / 'admin_password'}",
                  flush=True)
        if cfg.tls_cert:
            print(f"Workers trust its certificate with MLFLOW_TRACKING_SERVER_CERT_PATH={tls_files(cfg)[0]}",
                  flush=True)
        if server.refreshed:
            said = f"now name its certificate {tls_files(cfg)[0]}" if cfg.tls_cert else "no longer name a certificate"
            print(f"The environment files of {', '.join(server.refreshed)} {said}; hand them out again "
                  f"({Path(cfg.folder) / 'auth' / 'users'})", flush=True)
        print(f"Workers use: tracking=server tracking.uri={server.url}", flush=True)
        if cfg.host in ("0.0.0.0", "::") and not cfg.allowed_hosts:
            print("Note: MLflow refuses requests addressed to a name that is not loopback or a private IP; workers "
                  "use this machine's private IP, or restart with allowed_hosts=<the name they use>", flush=True)
        print("Ctrl-C stops it.", flush=True)
        status = wait_until_stopped(server.process)
        print("stopping the tracking server", flush=True)
    if status is not None:
        raise PipelineError(f"mlflow server exited with status {status}; see {server.log_path}")


def stop_on_sigterm() -> None:
    """`kill` stops a served process as cleanly as Ctrl-C does."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def wait_until_stopped(process: subprocess.Popen) -> int | None:
    """The served process's exit status, or None once Ctrl-C (or SIGTERM) stopped the wait. Stopping takes a
    moment (the server, then PostgreSQL for `make server`); a second signal must not cut it short."""
    try:
        status = process.wait()
    except KeyboardInterrupt:
        status = None
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return status


if __name__ == "__main__":
    main()
