"""`make verify` (`python -m pipeline.store.verify`): is everything the cache would serve intact? Every FINISHED
stage run the cache serves has each of its files, with the SHA-256 recorded when it was written. A run that fails
is listed on one line and marked never to be served again (quarantined, as the cache marks one that fails on a
hit), so the next sweep recomputes it and only what depended on it; the command then exits 1. It also counts the
runs quarantined so far and how many of them have since been recomputed.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig
from tqdm import tqdm

from pipeline import CONF_DIR
from pipeline.errors import PipelineError, reported
from pipeline.store import artifacts, tracking
from pipeline.store.tracking import TrackingStore

if TYPE_CHECKING:  # MLflow loads where the store is used (reports import `current` without it)
    from mlflow.entities import Run

log = logging.getLogger(__name__)

SERVED = "tags.cache_store = 'true' and attributes.status = 'FINISHED'"
QUARANTINED = "tags.cache_corrupt LIKE '%'"  # marked by `make verify` or by the cache on a hit (mark_corrupt)


@dataclass
class Verified:
    checked: int = 0
    files: int = 0
    failed: list[tuple[Run, str]] = field(default_factory=list)
    quarantined: int = 0  # every run marked so far, those failing now included
    recomputed: int = 0  # of those, how many a newer servable run of the same key has replaced


def servable_runs(store: TrackingStore) -> list[Run]:
    """Every run the cache would serve, page by page."""
    return tracking.search_all(store, SERVED)


def reason(exc: BaseException) -> str:
    """Why a run failed, on one line: MLflow's download errors add a block of lines (a header per file and the
    store's answer), of which the last says what the store said."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.startswith("#####")]
    if len(lines) <= 1:
        return lines[0] if lines else type(exc).__name__
    return f"{lines[0].split(': ', 1)[0]} ({lines[-1]})"


def replaced(quarantined: list[Run], servable: list[Run]) -> list[Run]:
    """The quarantined runs whose key a servable run started after them serves now."""
    newest: dict[str, int] = {}
    for run in servable:
        key = run.data.tags.get("cache_key", "")
        newest[key] = max(newest.get(key, 0), run.info.start_time)
    return [run for run in quarantined if newest.get(run.data.tags.get("cache_key", ""), 0) > run.info.start_time]


def current(store: TrackingStore, run: Run) -> Run:
    """`run`, or, once it was quarantined and its key recomputed, the run that serves its key now: what a report
    reads in place of a run that a job run names but that is no longer served."""
    key = run.data.tags.get("cache_key")
    if "cache_corrupt" not in run.data.tags or not key:
        return run
    newer = tracking.search_all(store, f"tags.cache_key = '{key}' and {SERVED}", ["attributes.start_time DESC"],
                                limit=1)
    return newer[0] if newer and newer[0].info.start_time > run.info.start_time else run


def verify(store: TrackingStore, mark: bool = True) -> Verified:
    """Download and check every file of every servable run; with `mark`, failing runs are never served again."""
    found = Verified()
    runs = servable_runs(store)
    for run in tqdm(runs, desc="verify", unit="run"):
        checksums = artifacts.recorded_checksums(run)
        try:
            if not checksums:
                raise artifacts.CorruptArtifact("no checksums recorded")
            with tempfile.TemporaryDirectory() as tmp:
                artifacts.fetch_verified(run, checksums, Path(tmp), store.uri)
        except (artifacts.CorruptArtifact, artifacts.ArtifactUnavailable) as exc:
            found.failed.append((run, reason(exc)))
            if mark and isinstance(exc, artifacts.CorruptArtifact):
                artifacts.mark_corrupt(store.client, run.info.run_id, reason(exc))
        found.checked += 1
        found.files += len(checksums)
    failing = {run.info.run_id for run, _ in found.failed}
    quarantined = tracking.search_all(store, QUARANTINED)
    found.quarantined = len(quarantined)
    found.recomputed = len(replaced(quarantined, [run for run in runs if run.info.run_id not in failing]))
    return found


def quarantine_line(found: Verified) -> str:
    if not found.quarantined:
        return "none quarantined"
    waiting = found.quarantined - found.recomputed
    return (f"{found.quarantined} quarantined so far (never served again), {found.recomputed} of them since "
            f"recomputed" + (f", {waiting} to be recomputed by the next sweep that needs them" if waiting else ""))


@hydra.main(config_path=str(CONF_DIR), config_name="store", version_base="1.3")
@reported
def main(cfg: DictConfig) -> None:
    store = tracking.connect_cfg(cfg.tracking, access=tracking.EDIT)
    found = verify(store)
    for run, why in found.failed:
        print(f"FAILED run {run.info.run_id} ({run.info.run_name}): {why}", flush=True)
    print(f"verified {found.checked} runs ({found.files} files) in {store.uri}: {len(found.failed)} failed; "
          f"{quarantine_line(found)}", flush=True)
    if found.failed:
        raise PipelineError(f"{len(found.failed)} run(s) failed verification and will not be served again; the next "
                            f"sweep recomputes them and what depended on them")


if __name__ == "__main__":
    main()
