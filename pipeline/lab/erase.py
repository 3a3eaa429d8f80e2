"""`make clean-store [CONFIRM=yes]` (`python -m pipeline.lab.erase [confirm=true] [server=true]`): delete a store,
only when told. Without `confirm` it says what would go: the runs the store holds and the bytes on disk."""
from __future__ import annotations

import shutil
from pathlib import Path

import hydra
from omegaconf import DictConfig

from pipeline import CONF_DIR
from pipeline.errors import reported
from pipeline.lab.backup import SQLITE, StoreLocation, locate
from pipeline.lab.postgres import Cluster
from pipeline.lab.restore import sqlite_runs


def parts(location: StoreLocation) -> list[Path]:
    """What deleting the store removes: the database and artifacts, or the whole server folder."""
    if location.kind == SQLITE:
        return [location.database, location.artifacts]
    return [location.folder]


def size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) if path.is_dir() else 0


def runs_held(location: StoreLocation, cfg: DictConfig) -> int:
    if location.kind == SQLITE:
        return sqlite_runs(location.database)
    if not (location.folder / "pgdata" / "PG_VERSION").is_file():
        return 0
    with Cluster(location.folder, int(cfg.postgres.port), str(cfg.postgres.os_user)).running(attach=True) as cluster:
        with cluster.connect() as connection:
            return connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0]


@hydra.main(config_path=str(CONF_DIR), config_name="store", version_base="1.3")
@reported
def main(cfg: DictConfig) -> None:
    location = locate(cfg)
    found = [path for path in parts(location) if path.exists()]
    if not found:
        print(f"no {location.kind} store to delete at {', '.join(map(str, parts(location)))}", flush=True)
        return
    held, total = runs_held(location, cfg), sum(map(size, found))
    what = f"{held} runs, {total / 1e6:.1f} MB: {', '.join(map(str, found))}"
    if not cfg.confirm:
        print(f"would delete {what}; `make clean-store CONFIRM=yes` deletes it (`make backup` keeps a copy first)",
              flush=True)
        return
    if location.kind != SQLITE:
        with Cluster(location.folder, int(cfg.postgres.port), str(cfg.postgres.os_user)).running():
            pass  # refused while a `make server` runs on this folder; stops what it started
    for path in found:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    print(f"deleted {what}", flush=True)


if __name__ == "__main__":
    main()
