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
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from pipeline.store import artifacts
from pipeline.store.artifacts import ArtifactUnavailable, CorruptArtifact, StageOutput
from pipeline.store.claims import CLAIM_ID_TAG, MAX_KEYS, Claim, Claims
from pipeline.store.tracking import PARENT_TAG, TrackingStore, finished_run, run_tags, search_all

if TYPE_CHECKING:  # MLflow loads where the store is used: a table of result files never imports it
    from mlflow.entities import Run

log = logging.getLogger(__name__)

# While a job waits for another's claim, it says so this often, naming the holder.
WAIT_LINE_S = 30.0
# MLflow limits: 100 params per batch call, 6000 characters per param value.
_PARAM_BATCH = 100
_PARAM_MAX_CHARS = 6000


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


@dataclass(frozen=True)
class StageRequest:
    """One stage invocation: its key, the MLflow tags and params its run carries, and a readable name."""

    stage: str
    key: str
    tags: Mapping[str, str]
    params: Mapping[str, Any]
    name: str
    # What a hit downloads: every artifact, or only these files (a score's outcomes stay in the store until the
    # aggregate asks for them; checksums are still checked for what is read).
    serve_only: tuple[str, ...] | None = None


@dataclass(frozen=True)
class StageResult:
    """What every stage hands the next: its arrays and metrics, the key it was computed or served under, its run,
    whether it was served, and the run's tags."""

    arrays: Mapping[str, Any]
    key: str
    run_id: str
    hit: bool = False
    metrics: Mapping[str, float] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.arrays[name]


@dataclass(frozen=True)
class StageCache:
    """Serve or compute stage outputs; `enabled=False` turns the cache off, `force=True` recomputes."""

    store: TrackingStore
    enabled: bool = True
    force: bool = False
    claim_timeout_s: float = 300.0  # a claim without a heartbeat for this long belongs to a killed worker
    # The job run whose child every computed stage run becomes (MLflow's UI nests it there); a served run keeps
    # the parent of the job that computed it, and the serving job links it by its `run.<stage>` tags.
    parent_run_id: str | None = None

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

        served = self._serve_found(requests, lookup()) if self.serving else {}
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
        """Compute the requests this job wins a claim on; wait to be served the others (see `pipeline.store.claims`).

        Without serving (cache off, or forced) there is nothing to wait for, so nothing is claimed."""
        if not self.serving:
            return compute(requests, None)
        results: dict[str, StageResult] = {}
        for start in range(0, len(requests), MAX_KEYS):
            chunk = requests[start:start + MAX_KEYS]
            while any(request.key not in results for request in chunk):  # again with a new claim if one is lost
                pending = [request for request in chunk if request.key not in results]
                with self.claims.hold([request.key for request in pending], group, label) as claim:
                    self._settle(pending, lookup, claim, label, compute, results)
        return [results[request.key] for request in requests]

    def _settle(self, pending: list[StageRequest], lookup: Callable[[], Mapping[str, Sequence[Run]]], claim: Claim,
                label: str, compute: Callable[[list[StageRequest], str | None], list[StageResult]],
                results: dict[str, StageResult]) -> None:
        """Serve or compute `pending` into `results`; returns early if the claim is lost before computing."""
        delay, waiting_since, said_at = 0.05, None, 0.0
        while pending:
            # Who owns what is decided before looking the keys up: a key whose owner has released it by then was
            # FINISHED before the release, so the lookup finds it; looking up first would miss a key finished
            # between the two, and compute it again.
            owners = claim.owners()
            served = self._serve_found(pending, lookup())
            for request in pending:
                if request.key in served:
                    log.info("[%s] HIT  %s  (computed by another job) run=%s", request.stage, request.name,
                             served[request.key].run_id)
            results.update(served)
            pending = [request for request in pending if request.key not in results]
            if not pending or claim.lost.is_set():
                return
            mine = [request for request in pending if owners is not None and owners[request.key] == claim.run_id]
            if mine:
                results.update((result.key, result) for result in compute(mine, claim.run_id))
                pending = [request for request in pending if request.key not in results]
                continue
            now = time.monotonic()
            if owners is not None and now - said_at >= WAIT_LINE_S:
                waiting_since = waiting_since or now
                others = "; ".join(claim.describe(owner) for owner in sorted({owners[r.key] for r in pending}))
                log.info("[%s] WAIT %s  (being computed under %s; waited %.0f s)", pending[0].stage, label, others,
                         now - waiting_since)
                said_at = now
            time.sleep(delay)  # owners None: another claim is taking its ticket, decided a request later
            delay = min(delay * 1.5, self.claims.poll_s)

    @property
    def claims(self) -> Claims:
        """Claims written on the job's own run where there is one."""
        return Claims(self.store, self.claim_timeout_s, self.parent_run_id)

    @property
    def serving(self) -> bool:
        return self.enabled and not self.force

    @property
    def miss_reason(self) -> str:
        return "cache off" if not self.enabled else "forced" if self.force else "not cached"

    # -- lookup -------------------------------------------------------------------------------
    def _search(self, condition: str, limit: int | None = None) -> list[Run]:
        """Servable runs matching `condition`, newest first (every page, unless `limit`)."""
        query = f"{condition} and tags.cache_store = 'true' and attributes.status = 'FINISHED'"
        return search_all(self.store, query, ["attributes.start_time DESC"], limit)

    def _serve_found(self, requests: Sequence[StageRequest], found: Mapping[str, Sequence[Run]]
                     ) -> dict[str, StageResult]:
        """Each request served from its candidate runs in `found` (by key), where one can be read and verified."""
        served = {request.key: self._serve(request, found.get(request.key, [])) for request in requests}
        return {key: result for key, result in served.items() if result is not None}

    def _serve(self, request: StageRequest, runs: Sequence[Run]) -> StageResult | None:
        """The first of `runs` whose artifacts can be read and verified; a corrupt one is never served again."""
        for run in runs:
            try:
                output = artifacts.load(run, self.store.uri, request.serve_only)
                return StageResult(output.arrays, request.key, run.info.run_id, True, output.metrics,
                                   dict(run.data.tags))
            except ArtifactUnavailable as exc:
                log.warning("[%s] cached run %s could not be read now (%s); it stays servable",
                            request.stage, run.info.run_id, exc)
            except CorruptArtifact as exc:
                log.warning("[%s] cached run %s is corrupt (%s); it will not be served again, recomputing",
                            request.stage, run.info.run_id, exc)
                artifacts.mark_corrupt(self.store.client, run.info.run_id, str(exc))
        return None

    # -- compute ------------------------------------------------------------------------------
    def _compute(self, request: StageRequest, compute: Callable[[], StageOutput], claim_id: str | None = None
                 ) -> StageResult:
        client = self.store.client
        tags = {**request.tags, "stage": request.stage, "cache_key": request.key,
                "cache_store": "true" if self.enabled else "false", **({CLAIM_ID_TAG: claim_id} if claim_id else {}),
                **({PARENT_TAG: self.parent_run_id} if self.parent_run_id else {})}
        with finished_run(self.store, tags, request.name) as run_id:
            log_params(client, run_id, request.params)
            output = compute()
            with tempfile.TemporaryDirectory() as tmp:
                checksums = artifacts.write_output(Path(tmp), output)
                client.log_artifacts(run_id, tmp)
            from mlflow.entities import Metric

            client.log_batch(
                run_id,
                metrics=[Metric(mlflow_metric_name(k), float(v), 0, 0) for k, v in output.metrics.items()],
                tags=run_tags({**{artifacts.CHECKSUM_TAG + name: digest for name, digest in checksums.items()},
                               **output.tags}),
            )
        return StageResult(output.arrays, request.key, run_id, False, output.metrics, {**tags, **output.tags})


def log_params(client, run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:_PARAM_MAX_CHARS]) for k, v in params.items()]
    for start in range(0, len(items), _PARAM_BATCH):
        client.log_batch(run_id, params=items[start:start + _PARAM_BATCH])
