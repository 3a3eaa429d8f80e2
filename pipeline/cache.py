"""The content-keyed stage cache every stage uses: an MLflow run per computed output, served again by key.

A stage's output is a set of `.npy` arrays plus optional scalar metrics. On a miss the
stage runs inside a fresh MLflow run; its files are logged with SHA-256 checksums and the
run is marked FINISHED only after everything is written, so a failed or interrupted
stage never counts as a hit. On a hit the artifacts come back through MLflow's artifact
API (so remote tracking servers work) and are verified before use.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import mlflow.artifacts
import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.entities import Run

from pipeline import one_line
from pipeline.claims import CLAIM_ID_TAG, MAX_KEYS, Claim, Claims
from pipeline.tracking import TrackingStore, finished_run

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CHECKSUM_TAG = "checksum."
# MLflow limits: 100 params per batch call, 6000 characters per param value.
_PARAM_BATCH = 100
_PARAM_MAX_CHARS = 6000
_SEARCH_PAGE = 1000


def mlflow_metric_name(name: str) -> str:
    """MLflow refuses '@' in metric names; `recall@1` is logged as `recall_at_1` (metrics.json keeps the real name)."""
    return name.replace("@", "_at_")


def real_metric_name(logged: str) -> str:
    """The inverse of `mlflow_metric_name`."""
    return logged.replace("_at_", "@")


def cache_key(stage: str, version: str, config: Mapping[str, Any], inputs: Sequence[str] = ()) -> str:
    """Hash exactly what determines a stage's output: its config values, its inputs' keys, its code version."""
    payload = json.dumps(
        {"stage": stage, "version": version, "config": config, "inputs": list(inputs)},
        sort_keys=True, separators=(",", ":"), default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class StageOutput:
    """What a stage produces: named arrays (saved as plain .npy) and scalar metrics."""

    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)  # extra tags for the run (e.g. the inputs it used)


@dataclass(frozen=True)
class StageRequest:
    """One stage invocation: its key, the MLflow tags and params its run carries, and a readable name."""

    stage: str
    key: str
    tags: Mapping[str, str]
    params: Mapping[str, Any]
    name: str


@dataclass(frozen=True)
class StageResult:
    output: StageOutput
    run_id: str
    hit: bool
    tags: Mapping[str, str] = field(default_factory=dict)  # the run's tags (served or written)

    @property
    def key(self) -> str:
        return self.tags["cache_key"]


class CorruptArtifact(RuntimeError):
    """A cached file is missing or does not match the checksum recorded when it was written."""


class ArtifactUnavailable(RuntimeError):
    """A cached file could not be downloaded for a reason that may pass (network error, server 5xx)."""


DOWNLOAD_ATTEMPTS = 4
DOWNLOAD_BACKOFF_S = 0.5


def is_not_found(exc: BaseException) -> bool:
    """A definite "this artifact does not exist" from the store, as opposed to a failure that may pass."""
    if isinstance(exc, FileNotFoundError) or getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
        return True
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None) == 404


@dataclass(frozen=True)
class StageCache:
    """Serve or compute stage outputs; `enabled=False` turns the cache off, `force=True` recomputes."""

    store: TrackingStore
    enabled: bool = True
    force: bool = False
    claim_timeout_s: float = 300.0  # a claim without a heartbeat for this long belongs to a killed worker

    def get_or_compute(self, request: StageRequest, compute: Callable[[], StageOutput],
                       before: Callable[[], None] | None = None) -> StageResult:
        """The cached output for `request.key`, or `compute()`'s in a new run. `before` runs on a miss before that
        run exists (to gather upstream stages), so a failure upstream leaves no run of this stage behind."""
        lookup = lambda: {request.key: self._search(f"tags.cache_key = '{request.key}'", limit=10)}
        if self.serving:
            cached = self._serve(request, lookup()[request.key])
            if cached is not None:
                log.info("[%s] HIT  %s  run=%s key=%s", request.stage, request.name, cached.run_id, request.key)
                return cached
        log.info("[%s] MISS %s  (%s) key=%s", request.stage, request.name, self.miss_reason, request.key)

        def run(_: list[StageRequest], claim_id: str | None) -> list[StageResult]:
            if before is not None:
                before()
            return [self._compute(request, compute, claim_id)]

        return self._claimed([request], lookup, request.key, request.name, run)[0]

    def get_or_compute_many(self, requests: Sequence[StageRequest], shared_tag: tuple[str, str], label: str,
                            compute: Callable[[list[StageRequest]], list[StageOutput]]) -> list[StageResult]:
        """Outputs that carry one shared tag (the per-template embeddings of one model and class list): a single
        search finds every cached one, since MLflow's search has no IN on tags; the rest are computed in one call
        and each written to a run of its own, so any later combination can be served piecewise."""
        name, value = shared_tag

        def lookup() -> dict[str, list[Run]]:
            candidates: dict[str, list[Run]] = {}
            for run in self._search(f"tags.{name} = '{value}'"):
                candidates.setdefault(run.data.tags.get("cache_key", ""), []).append(run)
            return candidates

        served: dict[str, StageResult] = {}
        if self.serving:
            found = lookup()
            for request in requests:
                result = self._serve(request, found.get(request.key, []))
                if result is not None:
                    served[request.key] = result
        missing = [request for request in requests if request.key not in served]
        status = "HIT " if not missing else "MISS" if not served else "PART"
        reason = f", {self.miss_reason}" if missing else ""
        log.info("[%s] %s %s  (%d of %d cached%s)", requests[0].stage if requests else "-", status, label,
                 len(served), len(requests), reason)

        def run(mine: list[StageRequest], claim_id: str | None) -> list[StageResult]:
            return [self._compute(request, lambda output=output: output, claim_id)
                    for request, output in zip(mine, compute(mine), strict=True)]

        if missing:
            for result in self._claimed(missing, lookup, value, label, run):
                served[result.key] = result
        return [served[request.key] for request in requests]

    def _claimed(self, requests: list[StageRequest], lookup: Callable[[], Mapping[str, Sequence[Run]]], group: str,
                 label: str, compute: Callable[[list[StageRequest], str | None], list[StageResult]]
                 ) -> list[StageResult]:
        """Compute the requests this job wins a claim on; wait to be served the others (see `pipeline.claims`).

        Without serving (cache off, or forced) there is nothing to wait for, so nothing is claimed."""
        if not self.serving:
            return compute(requests, None)
        results: dict[str, StageResult] = {}
        for start in range(0, len(requests), MAX_KEYS):
            chunk = requests[start:start + MAX_KEYS]
            with self.claims.hold([request.key for request in chunk], group, label) as claim:
                self._settle(chunk, lookup, claim, label, compute, results)
        return [results[request.key] for request in requests]

    def _settle(self, pending: list[StageRequest], lookup: Callable[[], Mapping[str, Sequence[Run]]], claim: Claim,
                label: str, compute: Callable[[list[StageRequest], str | None], list[StageResult]],
                results: dict[str, StageResult]) -> None:
        delay, waiting = 0.2, False
        while pending:
            # Looked up again under the claim: another job may have finished a key since this job missed it.
            found = lookup()
            for request in pending:
                served = self._serve(request, found.get(request.key, []))
                if served is not None:
                    log.info("[%s] HIT  %s  (computed by another job) run=%s", request.stage, request.name,
                             served.run_id)
                    results[request.key] = served
            pending = [request for request in pending if request.key not in results]
            if not pending:
                return
            owners = claim.owners()
            if owners is None:  # another claim is taking its ticket; decided a request later
                time.sleep(0.05)
                continue
            mine = [request for request in pending if owners[request.key] == claim.run_id]
            if mine:
                results.update((result.key, result) for result in compute(mine, claim.run_id))
                pending = [request for request in pending if request.key not in results]
                continue
            if not waiting:
                others = sorted({owners[request.key] for request in pending})
                log.info("[%s] WAIT %s  (being computed under claim %s)", pending[0].stage, label, ", ".join(others))
                waiting = True
            time.sleep(delay)
            delay = min(delay * 1.5, self.claims.poll_s)

    @property
    def claims(self) -> Claims:
        return Claims(self.store, self.claim_timeout_s)

    @property
    def serving(self) -> bool:
        return self.enabled and not self.force

    @property
    def miss_reason(self) -> str:
        return "cache off" if not self.enabled else "forced" if self.force else "not cached"

    # -- lookup -------------------------------------------------------------------------------
    def _search(self, condition: str, limit: int | None = None) -> list[Run]:
        """Servable runs matching `condition`, newest first (every page, unless `limit`)."""
        client = self.store.client
        query = f"{condition} and tags.cache_store = 'true' and attributes.status = 'FINISHED'"
        runs: list[Run] = []
        token = None
        while True:
            page = client.search_runs([self.store.experiment_id], filter_string=query,
                                      order_by=["attributes.start_time DESC"], max_results=limit or _SEARCH_PAGE,
                                      page_token=token)
            runs.extend(page)
            token = page.token
            if limit is not None or not token:
                return runs

    def _serve(self, request: StageRequest, runs: Sequence[Run]) -> StageResult | None:
        """The first of `runs` whose artifacts can be read and verified; a corrupt one is never served again."""
        for run in runs:
            try:
                return StageResult(self._load(run), run.info.run_id, hit=True, tags=dict(run.data.tags))
            except ArtifactUnavailable as exc:
                log.warning("[%s] cached run %s could not be read now (%s); it stays servable",
                            request.stage, run.info.run_id, exc)
            except CorruptArtifact as exc:
                log.warning("[%s] cached run %s is corrupt (%s); it will not be served again, recomputing",
                            request.stage, run.info.run_id, exc)
                self.store.client.set_tag(run.info.run_id, "cache_store", "false")
                self.store.client.set_tag(run.info.run_id, "cache_corrupt", str(exc)[:500])
        return None

    def _load(self, run: Run) -> StageOutput:
        checksums = {k.removeprefix(CHECKSUM_TAG): v for k, v in run.data.tags.items() if k.startswith(CHECKSUM_TAG)}
        if not checksums:
            raise CorruptArtifact("no checksums recorded")
        with tempfile.TemporaryDirectory() as tmp:
            for name, expected in checksums.items():
                actual = sha256_file(self._download(run, name, Path(tmp)))
                if actual != expected:
                    raise CorruptArtifact(f"{name} checksum {actual[:12]} != recorded {expected[:12]}")
            return _read_output(Path(tmp), checksums)

    def _download(self, run: Run, name: str, directory: Path) -> Path:
        """One artifact, retried with backoff on failures that may pass; a definite "not found" is corrupt.

        It is addressed by the run's artifact URI, not `runs:/`, whose resolver reports every failure as
        "does not exist" and so would hide a passing network error."""
        run_id = run.info.run_id
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            try:
                return Path(mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{run.info.artifact_uri.rstrip('/')}/{name}", dst_path=str(directory),
                    tracking_uri=self.store.uri))
            except Exception as exc:  # MLflow raises MlflowException, requests' and OS errors, depending on the store
                if is_not_found(exc):
                    raise CorruptArtifact(f"{name} is missing from the artifact store: {exc}") from exc
                if attempt == DOWNLOAD_ATTEMPTS:
                    raise ArtifactUnavailable(f"{name}: {DOWNLOAD_ATTEMPTS} attempts failed, last: {exc}") from exc
                log.warning("downloading %s of run %s failed (%s); retrying (%d/%d)", name, run_id,
                            one_line(exc)[:200], attempt + 1, DOWNLOAD_ATTEMPTS)
                time.sleep(DOWNLOAD_BACKOFF_S * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    # -- compute ------------------------------------------------------------------------------
    def _compute(self, request: StageRequest, compute: Callable[[], StageOutput], claim_id: str | None = None
                 ) -> StageResult:
        client = self.store.client
        tags = {**request.tags, "stage": request.stage, "cache_key": request.key,
                "cache_store": "true" if self.enabled else "false", **({CLAIM_ID_TAG: claim_id} if claim_id else {})}
        with finished_run(self.store, tags, request.name) as run_id:
            log_params(client, run_id, request.params)
            output = compute()
            with tempfile.TemporaryDirectory() as tmp:
                checksums = _write_output(Path(tmp), output)
                client.log_artifacts(run_id, tmp)
            client.log_batch(
                run_id,
                metrics=[Metric(mlflow_metric_name(k), float(v), 0, 0) for k, v in output.metrics.items()],
                tags=[RunTag(CHECKSUM_TAG + name, digest) for name, digest in checksums.items()]
                + [RunTag(name, value) for name, value in output.tags.items()],
            )
        return StageResult(output, run_id, hit=False, tags={**tags, **output.tags})


def _write_output(directory: Path, output: StageOutput) -> dict[str, str]:
    checksums: dict[str, str] = {}
    for name, array in output.arrays.items():
        path = directory / f"{name}.npy"
        np.save(path, np.asarray(array), allow_pickle=False)
        checksums[path.name] = sha256_file(path)
    if output.metrics:
        path = directory / METRICS_FILE
        # NaN (e.g. acc5 with < 5 classes) is kept as null so the file stays strict JSON.
        metrics = {k: (None if math.isnan(float(v)) else float(v)) for k, v in output.metrics.items()}
        path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
        checksums[path.name] = sha256_file(path)
    return checksums


def _read_output(directory: Path, names: Mapping[str, str]) -> StageOutput:
    arrays = {Path(n).stem: np.load(directory / n, allow_pickle=False) for n in names if n.endswith(".npy")}
    metrics: dict[str, float] = {}
    if METRICS_FILE in names:
        raw = json.loads((directory / METRICS_FILE).read_text())
        metrics = {k: (math.nan if v is None else float(v)) for k, v in raw.items()}
    return StageOutput(arrays, metrics)


def log_params(client, run_id: str, params: Mapping[str, Any]) -> None:
    items = [Param(k, str(v)[:_PARAM_MAX_CHARS]) for k, v in params.items()]
    for start in range(0, len(items), _PARAM_BATCH):
        client.log_batch(run_id, params=items[start:start + _PARAM_BATCH])
