"""Connect to the MLflow tracking store named by `cfg.tracking`, with clear errors when it is unusable."""
from __future__ import annotations

import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

JOB_STAGE = "job"  # the `stage` tag of a job run: what tables are built from
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests a run under the run it names
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
        return MlflowClient(tracking_uri=self.uri)


def _check_reachable(uri: str) -> None:
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    elif uri.startswith(("http://", "https://")):
        # MLflow's own client retries for minutes; one quick probe gives a clear answer instead. It is a real API
        # call: MLflow 3.17's /health answers even where the server's host check refuses every API request.
        try:
            urllib.request.urlopen(uri.rstrip("/") + API_PROBE, timeout=10).close()
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            if exc.code in (401, 403) and "Invalid Host header" not in body:
                return  # it answers, and wants credentials: MLflow's client sends MLFLOW_TRACKING_USERNAME/TOKEN
            if exc.code == 403:
                raise PipelineError(
                    f"MLflow tracking server {uri} refuses requests addressed to {urllib.parse.urlsplit(uri).hostname} "
                    f"({body.strip()[:80]}); start it with `--allowed-hosts` naming that host "
                    f"(`make server ARGS=allowed_hosts=...`), or use its loopback or private IP address") from exc
            raise PipelineError(f"MLflow tracking server {uri} answered {exc.code} to an API call: {body.strip()[:200]}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise PipelineError(
                f"MLflow tracking server {uri} is not reachable ({exc}). Start it (`make server`, or `mlflow server "
                f"--host 127.0.0.1 --port 5000`) or point tracking.uri at a reachable store "
                f"(the default is the local SQLite store: tracking=local)."
            ) from exc


def _artifact_uri(location: str | None) -> str | None:
    if not location or "://" in location:
        return location
    return Path(location).expanduser().resolve().as_uri()


def connect(uri: str, experiment: str, artifact_location: str | None = None, attempts: int = 5) -> TrackingStore:
    """Return the store, creating the experiment (and a fresh SQLite schema) if needed.

    Parallel jobs on a fresh SQLite file can race on schema or experiment creation, so
    the multirun callback calls this once before the jobs start, and jobs retry briefly.
    """
    _check_reachable(uri)
    client = MlflowClient(tracking_uri=uri)
    for attempt in range(attempts):
        try:
            found = client.get_experiment_by_name(experiment)
            if found is not None:
                return TrackingStore(uri, found.experiment_id)
            experiment_id = client.create_experiment(experiment, artifact_location=_artifact_uri(artifact_location),
                                                     tags=dict([EXPERIMENT_KIND]))
            return TrackingStore(uri, experiment_id)
        except MlflowException as exc:
            if attempt == attempts - 1:
                raise PipelineError(f"cannot use MLflow tracking store {uri}: {exc}") from exc
            log.warning("tracking store busy (%s); retrying", exc)
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def connect_cfg(tracking_cfg) -> TrackingStore:
    """`connect` from a `tracking` config group node."""
    return connect(tracking_cfg.uri, tracking_cfg.experiment, tracking_cfg.get("artifact_location"))


@contextmanager
def finished_run(store: TrackingStore, tags: Mapping[str, str], name: str) -> Iterator[str]:
    """An MLflow run that ends FINISHED only if the block completes; FAILED on an error, KILLED on Ctrl-C.

    Lookups accept FINISHED runs alone, so nothing half-written is ever read back.
    """
    client = store.client
    run_id = client.create_run(store.experiment_id, tags=dict(tags), run_name=name).info.run_id
    try:
        yield run_id
    except BaseException as exc:
        client.set_terminated(run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
