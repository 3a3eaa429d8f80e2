"""`make backup` (`python -m pipeline.lab.backup [server=true]`): one archive of a store, consistent while jobs may
be writing to it. The local SQLite store is copied with SQLite's online backup API (a file copy could catch a write
half done); the lab server's private PostgreSQL cluster with `pg_dump`. Beside the database go the artifacts,
the server's users database and keys where authentication is on, and a manifest, the archive's first member: the
runs per stage, the library versions and the project's, and the SHA-256 of every other file in the archive, which
`make restore` checks before it places anything. The archive is written under a temporary name and renamed once
whole, so a failed backup never leaves one that looks complete.

A lab's own database (`backend_store_uri`) or a remote artifact store (`s3://...`) is backed up by the lab's own
tools: those are refused in one line that says which.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
import re
import shutil
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
from pipeline.store.artifacts import sha256_file

MANIFEST = "manifest.json"
FORMAT = 2  # 2: the manifest lists every file's SHA-256 ("files"); 1 listed only the cached artifacts' tags
SQLITE, POSTGRES = "sqlite", "postgres"
DATABASE_FILES = {SQLITE: "mlflow.db", POSTGRES: "mlflow.pgdump"}
LIBRARIES = ("mlflow", "torch", "torchvision", "open_clip_torch", "clip-benchmark", "pillow")
# MLflow's own schema (runs, tags), read directly: the manifest needs counts and checksums of the copy itself,
# and neither a server nor MLflow's client runs on it.
STAGE_COUNTS = ("SELECT t.value, r.status, COUNT(*) FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                "WHERE t.key = 'stage' AND r.lifecycle_stage = 'active' GROUP BY t.value, r.status")
CHECKSUMS = "SELECT run_uuid, key, value FROM tags WHERE key LIKE 'checksum.%'"
STATUSES = "SELECT run_uuid, status FROM runs"
ENDED = {"FINISHED", "FAILED", "KILLED"}  # a run's files change no more once it has ended
RUN_ID = re.compile(r"^[0-9a-f]{32}$")  # MLflow's run ids; an artifact folder named so belongs to a run


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
    """Runs per (stage, status), every artifact checksum and every run's status, read from a database copy."""
    runs: dict[str, dict[str, int]] = {}
    for stage, status, count in connection.execute(STAGE_COUNTS).fetchall():
        runs.setdefault(stage, {})[status] = int(count)
    artifacts: dict[str, dict[str, str]] = {}
    for run, key, value in connection.execute(CHECKSUMS).fetchall():
        artifacts.setdefault(run, {})[key.removeprefix("checksum.")] = value
    statuses = {run: status for run, status in connection.execute(STATUSES).fetchall()}
    return {"runs": runs, "artifacts": artifacts, "statuses": statuses}


def versions() -> dict[str, str]:
    found = {"clip-tables": importlib.metadata.version("clip-tables")}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def snapshot(location: StoreLocation, staging: Path, postgres: DictConfig) -> dict:
    """The database into `staging` (and, for a server, its users database and keys); what it holds."""
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
    keys = location.folder / "auth"
    if keys.is_dir():
        (staging / "auth").mkdir()
        if (keys / "users.db").is_file():
            sqlite_copy(keys / "users.db", staging / "auth" / "users.db")
        for secret in ("secret_key", "admin_password"):  # its config is written anew where restored
            if (keys / secret).is_file():
                shutil.copy2(keys / secret, staging / "auth" / secret)
    return held


def archived_files(location: StoreLocation, staging: Path, statuses: dict[str, str]) -> tuple[dict[str, Path], int]:
    """What goes into the archive (its name there -> the file), and how many artifact files were left out: those
    of runs that had not ended when the database was copied (still being written: such a run is restored as it
    was then, never served) or that it does not know (begun since)."""
    files = {str(path.relative_to(staging)): path for path in sorted(staging.rglob("*")) if path.is_file()}
    left_out = 0
    if location.artifacts.is_dir():
        for path in sorted(location.artifacts.rglob("*")):
            parts = path.relative_to(location.artifacts).parts
            if not path.is_file():
                continue
            if run_of(parts) and statuses.get(run_of(parts)) not in ENDED:
                left_out += 1
                continue
            files["/".join(("artifacts", *parts))] = path
    return files, left_out


def run_of(parts: tuple[str, ...]) -> str | None:
    """The run an artifact file belongs to: `<run id>/artifacts/...` under the root (or under an experiment's
    folder, as a server's proxied artifacts are kept)."""
    return next((part for part, after in zip(parts, parts[1:]) if after == "artifacts" and RUN_ID.match(part)), None)


class _Hashing:
    """A file read into the archive, hashed as it is read: the manifest's checksum is then known to be that of
    the bytes the archive holds."""

    def __init__(self, handle) -> None:
        self.handle, self.digest = handle, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.digest.update(data)
        return data


def write_archive(partial: Path, manifest: dict, files: dict[str, Path]) -> None:
    """The manifest first (a restore reads it without reading the rest), then every file, each checked to be the
    one the manifest's checksum was taken of."""
    with tarfile.open(partial, "w:gz", compresslevel=1) as tar:
        encoded = json.dumps(manifest, indent=1, sort_keys=True).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mtime, info.mode = len(encoded), int(time.time()), 0o600
        tar.addfile(info, io.BytesIO(encoded))
        for name, path in files.items():
            try:
                with open(path, "rb") as handle:
                    reader = _Hashing(handle)
                    tar.addfile(tar.gettarinfo(path, name), reader)
            except OSError as exc:
                raise PipelineError(f"{path} could not be read whole ({exc}); nothing was written, run "
                                    f"`make backup` again") from None
            if reader.digest.hexdigest() != manifest["files"][name]:
                raise PipelineError(f"{path} changed while it was backed up; nothing was written, run `make backup` "
                                    f"again")


def backup(location: StoreLocation, output: Path, postgres: DictConfig) -> tuple[Path, dict]:
    """The archive of `location` in `output`, named by its kind and time, and its manifest."""
    output.mkdir(parents=True, exist_ok=True)
    name = f"clip-tables-{location.kind}-{time.strftime('%Y%m%d-%H%M%S')}.tar.gz"
    archive = output / name
    partial = output / f".{name}.partial"
    with tempfile.TemporaryDirectory(dir=output) as staging:
        held = snapshot(location, Path(staging), postgres)
        files, left_out = archived_files(location, Path(staging), held.pop("statuses"))
        # Read twice (checksums for the manifest, which comes first; then the archive): a file of an ended run does
        # not change, and one that did is caught as it is written.
        manifest = {"format": FORMAT, "kind": location.kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "artifact_root": str(location.artifacts), "versions": versions(), **held,
                    "files": {name: sha256_file(path) for name, path in files.items()}, "left_out": left_out}
        try:
            write_archive(partial, manifest, files)
            os.replace(partial, archive)
        finally:
            partial.unlink(missing_ok=True)
    archive.chmod(0o600)  # it holds the server's keys and every result
    return archive, manifest


def summary(manifest: dict) -> str:
    runs = sum(count for statuses in manifest["runs"].values() for count in statuses.values())
    files = sum(len(files) for files in manifest["artifacts"].values())
    stages = ", ".join(f"{stage} {sum(statuses.values())}" for stage, statuses in sorted(manifest["runs"].items()))
    return f"{runs} runs ({stages}), {files} checksummed artifacts"


@hydra.main(config_path=str(CONF_DIR), config_name="store", version_base="1.3")
@reported
def main(cfg: DictConfig) -> None:
    location = locate(cfg)
    archive, manifest = backup(location, Path(cfg.output).expanduser().resolve(), cfg.postgres)
    unfinished = (f"; {manifest['left_out']} file(s) of runs still running left out (those runs are never served)"
                  if manifest["left_out"] else "")
    print(f"backed up {summary(manifest)} of the {location.kind} store into {archive} "
          f"({archive.stat().st_size / 1e6:.1f} MB): {len(manifest['files'])} files, each with its SHA-256 in the "
          f"manifest{unfinished}", flush=True)


if __name__ == "__main__":
    main()
