"""Connect to the MLflow tracking store named by `cfg.tracking`, with clear errors when it is unusable."""
from __future__ import annotations

import base64
import logging
import os
import re
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping

from pipeline.errors import Interrupted, PipelineError
from pipeline.store import holders, indexes

if TYPE_CHECKING:  # MLflow loads where the store is used: a table of result files never imports it
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

JOB_STAGE = "job"  # the `stage` tag of a job run: what tables are built from
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests a run under the run it names
KILLED_BY = "killed_by"  # on a KILLED run: why (a signal, an expired claim, a holder found dead)
# MLflow 3's UI opens an experiment without this tag on its GenAI overview; ours holds classic runs.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# A real API call, cheap on any store.
API_PROBE = "/api/2.0/mlflow/experiments/search?max_results=1"


@dataclass(frozen=True)
class TrackingStore:
    """A tracking URI with the experiment every stage run goes into."""

    uri: str
    experiment_id: str

    @property
    def client(self) -> MlflowClient:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri)


@dataclass(frozen=True)
class Credentials:
    """How this process reaches a tracking server: the variables MLflow's own client reads, so a probe made here
    and MLflow's requests carry the same user and trust the same certificate."""

    username: str | None = None
    password: str | None = None
    certificate: str | None = None  # a CA bundle or the server's own certificate (self-signed)
    verify: bool = True             # False: a server's own process on loopback, whatever name its certificate has

    @classmethod
    def from_env(cls) -> "Credentials":
        return cls(os.environ.get("MLFLOW_TRACKING_USERNAME") or None, os.environ.get("MLFLOW_TRACKING_PASSWORD"),
                   os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None,
                   os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() != "true")

    def open(self, url: str, timeout_s: float):
        """GET `url` as MLflow's client would: basic authentication, and the configured certificate trusted."""
        request = urllib.request.Request(url)
        if self.username:
            token = base64.b64encode(f"{self.username}:{self.password or ''}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        context = None
        if url.startswith("https://"):
            context = ssl.create_default_context(cafile=self.certificate)
            if not self.verify:
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        return urllib.request.urlopen(request, timeout=timeout_s, context=context)


def _check_reachable(uri: str) -> None:
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    elif uri.startswith(("http://", "https://")):
        _probe_server(uri, Credentials.from_env())


def _probe_server(uri: str, credentials: Credentials) -> None:
    """MLflow's own client retries for minutes; one quick probe gives a clear answer instead. It is a real API call:
    MLflow 3.17's /health answers even where the server's host check refuses every API request, or where its
    authentication refuses this user."""

    def speaks_tls(address: urllib.parse.SplitResult) -> bool:
        """Whether an address that does not answer HTTP answers a TLS handshake (only the protocol is asked: the
        certificate is not checked, nothing is sent)."""
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        try:
            with socket.create_connection((address.hostname, address.port or 80), timeout=5) as raw, \
                    context.wrap_socket(raw, server_hostname=address.hostname):
                return True
        except (OSError, ValueError):  # ssl.SSLError is an OSError
            return False

    try:
        credentials.open(uri.rstrip("/") + API_PROBE, timeout_s=10).close()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        if exc.code == 401:
            said = (f"refuses the credentials of user {credentials.username!r} (MLFLOW_TRACKING_PASSWORD)"
                    if credentials.username else "requires a user: set MLFLOW_TRACKING_USERNAME and "
                                                 "MLFLOW_TRACKING_PASSWORD (its admin adds one with `make server-user`)")
            raise PipelineError(f"MLflow tracking server {uri} {said}") from exc
        if exc.code == 403 and "Invalid Host header" in body:
            raise PipelineError(
                f"MLflow tracking server {uri} refuses requests addressed to {urllib.parse.urlsplit(uri).hostname} "
                f"({body.strip()[:80]}); start it with `--allowed-hosts` naming that host "
                f"(`make server ARGS=allowed_hosts=...`), or use its loopback or private IP address") from exc
        raise PipelineError(f"MLflow tracking server {uri} answered {exc.code} to an API call: {body.strip()[:200]}") from exc
    except (urllib.error.URLError, OSError) as exc:
        if isinstance(getattr(exc, "reason", exc), ssl.SSLCertVerificationError):
            raise PipelineError(
                f"MLflow tracking server {uri} presents a certificate this machine does not trust "
                f"({getattr(exc, 'reason', exc)}); set MLFLOW_TRACKING_SERVER_CERT_PATH to that certificate (or its "
                f"CA bundle)") from exc
        if uri.startswith("http://") and speaks_tls(urllib.parse.urlsplit(uri)):
            raise PipelineError(
                f"MLflow tracking server {uri} speaks HTTPS, not HTTP: use tracking.uri=https://"
                f"{uri.removeprefix('http://')} (and MLFLOW_TRACKING_SERVER_CERT_PATH for its certificate)") from exc
        raise PipelineError(
            f"MLflow tracking server {uri} is not reachable ({exc}). Start it (`make server`, or `mlflow server "
            f"--host 127.0.0.1 --port 5000`) or point tracking.uri at a reachable store "
            f"(the default is the local SQLite store: tracking=local)."
        ) from exc


def _artifact_uri(location: str | None) -> str | None:
    if not location or "://" in location:
        return location
    return Path(location).expanduser().resolve().as_uri()


READ, EDIT = "READ", "EDIT"  # the experiment permissions (MLflow's basic-auth app) a command needs


def connect(uri: str, experiment: str, artifact_location: str | None = None, attempts: int = 5,
            access: str = EDIT) -> TrackingStore:
    """Return the store, creating the experiment (and a fresh SQLite schema) if needed. On a server with users,
    check first that this user may do what the command needs (`access`): a job writes runs (EDIT), a table
    built from the store only reads (READ).

    Parallel jobs on a fresh SQLite file can race on schema or experiment creation, so
    the multirun callback calls this once before the jobs start, and jobs retry briefly.
    """
    _check_reachable(uri)
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    for attempt in range(attempts):
        try:
            found = client.get_experiment_by_name(experiment)
            if found is None:
                found = client.get_experiment(client.create_experiment(
                    experiment, artifact_location=_artifact_uri(artifact_location), tags=dict([EXPERIMENT_KIND])))
            elif access == EDIT and Credentials.from_env().username and uri.startswith(("http://", "https://")):
                # The cheapest idempotent write a worker makes anyway: a user with READ alone is told now, not
                # after its first stage has run.
                client.set_experiment_tag(found.experiment_id, *EXPERIMENT_KIND)
            if uri.startswith("sqlite:"):  # a database this project owns: the lookups get their index
                indexes.ensure(uri)
            return TrackingStore(uri, found.experiment_id)
        except MlflowException as exc:
            if exc.error_code == "PERMISSION_DENIED":
                raise PipelineError(denied(uri, experiment, EDIT if access == EDIT else READ)) from exc
            if exc.error_code == "UNAUTHENTICATED" or attempt == attempts - 1:
                raise PipelineError(f"cannot use MLflow tracking store {uri}: {exc}") from exc
            log.warning("tracking store busy (%s); retrying", exc)
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def denied(uri: str, experiment: str, permission: str) -> str:
    user = Credentials.from_env().username
    role = "worker" if permission == EDIT else "reader"
    return (f"user {user!r} lacks {permission} on experiment {experiment} of {uri}, which this command needs; the "
            f"server's admin grants it with `make server-user ARGS=\"name={user} role={role}\"`")


SEARCH_PAGE = 1000  # runs per search request: MLflow's servers cap a page (SEARCH_MAX_RESULTS_DEFAULT)


def search_all(store: TrackingStore, query: str, order_by: list[str] | None = None,
               limit: int | None = None, view: str = "ACTIVE_ONLY") -> list["Run"]:
    """Every run of the experiment matching `query`, page after page (or the first `limit`): a search never
    truncates a store larger than one page. `view`: ACTIVE_ONLY, DELETED_ONLY or ALL runs."""
    from mlflow.entities import ViewType

    runs: list[Run] = []
    token = None
    while True:
        page = store.client.search_runs([store.experiment_id], filter_string=query, order_by=order_by or [],
                                        max_results=min(limit, SEARCH_PAGE) if limit else SEARCH_PAGE,
                                        page_token=token, run_view_type=getattr(ViewType, view))
        runs.extend(page)
        token = page.token
        if not token or (limit is not None and len(runs) >= limit):
            return runs[:limit] if limit else runs


def run_tags(tags: Mapping[str, str]) -> list:
    """MLflow's RunTag entities for `log_batch`, in order."""
    from mlflow.entities import RunTag

    return [RunTag(name, value) for name, value in tags.items()]


@dataclass(frozen=True)
class TrackingSpec:
    """A `tracking/` config: the store's URI, the experiment, where a local store keeps artifacts, and the UI the
    reports link to."""

    uri: str
    experiment: str
    artifact_location: str | None = None
    ui_url: str | None = None

    @classmethod
    def from_cfg(cls, cfg) -> "TrackingSpec":
        return cls(str(cfg["uri"]), str(cfg["experiment"]), cfg.get("artifact_location"), cfg.get("ui_url"))

    def connect(self, access: str = EDIT) -> TrackingStore:
        return connect(self.uri, self.experiment, self.artifact_location, access=access)


def connect_cfg(tracking_cfg, access: str = EDIT) -> TrackingStore:
    """`connect` from a `tracking` config group node."""
    return TrackingSpec.from_cfg(tracking_cfg).connect(access)


@contextmanager
def finished_run(store: TrackingStore, tags: Mapping[str, str], name: str) -> Iterator[str]:
    """An MLflow run that ends FINISHED only if the block completes; FAILED on an error, KILLED on Ctrl-C or when
    the process is told to stop (`Interrupted`), with the reason in `killed_by`. It names this process as its
    holder, so a run a killed process left RUNNING is recognised as dead (`store.orphans`).

    Lookups accept FINISHED runs alone, so nothing half-written is ever read back.
    """
    client = store.client
    run_id = client.create_run(store.experiment_id, tags={**tags, **holders.current_tags()}, run_name=name).info.run_id
    try:
        yield run_id
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, Interrupted)):
            reason = str(exc) or "interrupted (Ctrl-C)"
            client.log_batch(run_id, tags=run_tags({KILLED_BY: reason}))
            client.set_terminated(run_id, "KILLED")
        else:
            client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


def log_inputs(store: TrackingStore, run_id: str, inputs: list, attempts: int = 4) -> None:
    """MLflow's SQL store adds a dataset that runs share by looking it up, then inserting it when it was not there
    (mlflow/store/tracking/sqlalchemy_store.py, `_log_inputs_impl`): two jobs reading one dataset at once can both
    insert it, and the second is refused with a unique-key violation. Asked again, it finds the dataset there."""
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            store.client.log_inputs(run_id, datasets=inputs)
            return
        except MlflowException as exc:
            if attempt == attempts - 1 or not re.search(r"UniqueViolation|UNIQUE constraint|duplicate key", str(exc)):
                raise
            time.sleep(0.1 * (attempt + 1))
