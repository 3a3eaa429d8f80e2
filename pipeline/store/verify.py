"""`make verify` (`python -m pipeline.store.verify`): is everything the cache would serve intact? Every FINISHED
stage run the cache serves has each of its files, with the SHA-256 recorded when it was written. A run that fails
is listed and marked never to be served again (as the cache marks one that fails on a hit), so the next sweep
recomputes it and only what depended on it; the command then exits 1.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from mlflow.entities import Run
from omegaconf import DictConfig
from tqdm import tqdm

from pipeline import CONF_DIR
from pipeline.errors import PipelineError, reported
from pipeline.store import artifacts, tracking
from pipeline.store.tracking import TrackingStore

log = logging.getLogger(__name__)

SERVED = "tags.cache_store = 'true' and attributes.status = 'FINISHED'"


@dataclass
class Verified:
    checked: int = 0
    files: int = 0
    failed: list[tuple[Run, str]] = field(default_factory=list)


def servable_runs(store: TrackingStore) -> list[Run]:
    """Every run the cache would serve, page by page."""
    return tracking.search_all(store, SERVED)


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
            found.failed.append((run, str(exc)))
            if mark and isinstance(exc, artifacts.CorruptArtifact):
                artifacts.mark_corrupt(store.client, run.info.run_id, str(exc))
        found.checked += 1
        found.files += len(checksums)
    return found


@hydra.main(config_path=str(CONF_DIR), config_name="store", version_base="1.3")
@reported
def main(cfg: DictConfig) -> None:
    store = tracking.connect_cfg(cfg.tracking, access=tracking.EDIT)
    found = verify(store)
    for run, why in found.failed:
        print(f"FAILED run {run.info.run_id} ({run.info.run_name}): {why}", flush=True)
    print(f"verified {found.checked} runs ({found.files} files) in {store.uri}: {len(found.failed)} failed", flush=True)
    if found.failed:
        raise PipelineError(f"{len(found.failed)} run(s) failed verification and will not be served again; the next "
                            f"sweep recomputes them and what depended on them")


if __name__ == "__main__":
    main()
