"""`make backup` (`python -m pipeline.lab.backup [server=true]`): one archive of a store, consistent while jobs may
be writing to it. The local SQLite store is copied with SQLite's online backup API (a file copy could catch a write
half done); the lab server's private PostgreSQL cluster with `pg_dump`. Beside the database go the artifacts,
the server's users database and keys where authentication is on, and a manifest: the runs per stage, every
artifact's checksum, the library versions and the project's. The archive is written under a temporary name and
renamed once whole, so a failed backup never leaves one that looks complete.

A lab's own database (`backend_store_uri`) or a remote artifact store (`s3://...`) is backed up by the lab's own
tools: those are refused in one line that says which.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import sqlite3
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
from omegaconf import DictConfig

from pipeline import CONF_DIR
from pipeline.errors import PipelineError, reported
from pipeline.lab.auth import SERVER_FILE
from pipeline.lab.postgres import Cluster

MANIFEST = "manifest.json"
SQLITE, POSTGRES = "sqlite", "postgres"
DATABASE_FILES = {SQLITE: "mlflow.db", POSTGRES: "mlflow.pgdump"}
LIBRARIES = ("mlflow", "torch", "torchvision", "open_clip_torch", "clip-benchmark", "pillow")
# MLflow's own schema (runs, tags), read directly: the manifest needs counts and checksums of the copy itself,
# and neither a server nor MLflow's client runs on it.
STAGE_COUNTS = ("SELECT t.value, r.status, COUNT(*) FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                "WHERE t.key = 'stage' AND r.lifecycle_stage = 'active' GROUP BY t.value, r.status")
CHECKSUMS = "SELECT run_uuid, key, value FROM tags WHERE key LIKE 'checksum.%'"


@dataclass(frozen=True)
class StoreLocation:
    """Where a store's parts are: its database (a SQLite file, or the server folder's cluster), its artifacts,
    and, for a server, its folder (users and keys in `auth/`)."""

    kind: str
    artifacts: Path
    database: Path | None = None
    folder: Path | None = None


def locate(cfg: DictConfig) -> StoreLocation:
    """The store `cfg` names (conf/store.yaml); one line for a store these commands do not keep."""
    if cfg.server:
        folder = Path(cfg.folder).expanduser().resolve()
        recorded = json.loads((folder / SERVER_FILE).read_text()) if (folder / SERVER_FILE).is_file() else {}
        if recorded.get("backend_store_uri"):
            raise PipelineError(f"the server of {folder} keeps its runs in the lab's own database "
                                f"({recorded['backend_store_uri']}); back it up with that database's tools "
                                f"(pg_dump, or your database service's snapshots)")
        destination = str(recorded.get("artifacts_destination") or folder / "artifacts")
        if "://" in destination:
            raise PipelineError(f"the server of {folder} keeps its artifacts in {destination}; back them up with "
                                f"that store's own tools (e.g. `aws s3 sync`, `gsutil rsync`)")
        return StoreLocation(POSTGRES, Path(destination), folder=folder)
    uri = str(cfg.tracking.uri)
    if not uri.startswith("sqlite:///"):
        raise PipelineError(f"tracking.uri={uri} is not a local SQLite store; a tracking server is backed up on its "
                            f"own machine with `make backup ARGS=server=true`, a lab's database with its own tools")
    location = str(cfg.tracking.get("artifact_location") or "")
    if "://" in location:
        raise PipelineError(f"the artifacts of {uri} are in {location}; back them up with that store's own tools")
    return StoreLocation(SQLITE, Path(location).expanduser().resolve(), Path(uri.removeprefix("sqlite:///")))


def sqlite_copy(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite database in use (its online backup API)."""
    live, copy = sqlite3.connect(f"file:{source}?mode=ro", uri=True), sqlite3.connect(target)
    try:
        live.backup(copy)
    finally:
        copy.close()
        live.close()


def inventory(connection) -> dict:
    """Runs per (stage, status) and every artifact checksum, read from a database copy."""
    runs: dict[str, dict[str, int]] = {}
    for stage, status, count in connection.execute(STAGE_COUNTS).fetchall():
        runs.setdefault(stage, {})[status] = int(count)
    artifacts: dict[str, dict[str, str]] = {}
    for run, key, value in connection.execute(CHECKSUMS).fetchall():
        artifacts.setdefault(run, {})[key.removeprefix("checksum.")] = value
    return {"runs": runs, "artifacts": artifacts}


def versions() -> dict[str, str]:
    found = {"clip-tables": importlib.metadata.version("clip-tables")}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def snapshot(location: StoreLocation, staging: Path, postgres: DictConfig) -> dict:
    """The database into `staging` (and the users database, for a server); what it holds."""
    if location.kind == SQLITE:
        if not location.database.is_file():
            raise PipelineError(f"there is no store at {location.database} to back up")
        copy = staging / DATABASE_FILES[SQLITE]
        sqlite_copy(location.database, copy)
        connection = sqlite3.connect(copy)
        try:
            return inventory(connection)
        finally:
            connection.close()
    if not (location.folder / "pgdata" / "PG_VERSION").is_file():
        raise PipelineError(f"there is no PostgreSQL cluster in {location.folder} to back up")
    with Cluster(location.folder, int(postgres.port), str(postgres.os_user)).running(attach=True) as cluster:
        done = cluster.client("pg_dump", "-Fc", "-f", str(staging / DATABASE_FILES[POSTGRES]), "mlflow")
        if done.returncode != 0:
            raise PipelineError(f"pg_dump failed: {(done.stderr or done.stdout).strip()[-300:]}")
        with cluster.connect() as connection:
            held = inventory(connection)
    users = location.folder / "auth" / "users.db"
    if users.is_file():
        (staging / "auth").mkdir()
        sqlite_copy(users, staging / "auth" / "users.db")
    return held


def backup(location: StoreLocation, output: Path, postgres: DictConfig) -> Path:
    """The archive of `location` in `output`, named by its kind and time."""
    output.mkdir(parents=True, exist_ok=True)
    name = f"clip-tables-{location.kind}-{time.strftime('%Y%m%d-%H%M%S')}.tar.gz"
    archive = output / name
    partial = output / f".{name}.partial"
    with tempfile.TemporaryDirectory(dir=output) as staging:
        held = snapshot(location, Path(staging), postgres)
        manifest = {"format": 1, "kind": location.kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "artifact_root": str(location.artifacts), "versions": versions(), **held}
        (Path(staging) / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        try:
            with tarfile.open(partial, "w:gz", compresslevel=1) as tar:
                tar.add(Path(staging) / MANIFEST, MANIFEST)
                tar.add(Path(staging) / DATABASE_FILES[location.kind], DATABASE_FILES[location.kind])
                if (Path(staging) / "auth").is_dir():
                    tar.add(Path(staging) / "auth" / "users.db", "auth/users.db")
                if location.folder is not None and (location.folder / "auth").is_dir():
                    for secret in ("secret_key", "admin_password"):  # its config is written anew where restored
                        if (location.folder / "auth" / secret).is_file():
                            tar.add(location.folder / "auth" / secret, f"auth/{secret}")
                if location.artifacts.is_dir():
                    tar.add(location.artifacts, "artifacts")
            os.replace(partial, archive)
        finally:
            partial.unlink(missing_ok=True)
    archive.chmod(0o600)  # it holds the server's keys and every result
    return archive


def summary(manifest: dict) -> str:
    runs = sum(count for statuses in manifest["runs"].values() for count in statuses.values())
    files = sum(len(files) for files in manifest["artifacts"].values())
    stages = ", ".join(f"{stage} {sum(statuses.values())}" for stage, statuses in sorted(manifest["runs"].items()))
    return f"{runs} runs ({stages}), {files} checksummed artifacts"


@hydra.main(config_path=str(CONF_DIR), config_name="store", version_base="1.3")
@reported
def main(cfg: DictConfig) -> None:
    location = locate(cfg)
    archive = backup(location, Path(cfg.output).expanduser().resolve(), cfg.postgres)
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile(MANIFEST))
    print(f"backed up {summary(manifest)} of the {location.kind} store into {archive} "
          f"({archive.stat().st_size / 1e6:.1f} MB)", flush=True)


if __name__ == "__main__":
    main()
