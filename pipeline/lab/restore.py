"""`make restore FILE=archive [folder=...]` (`python -m pipeline.lab.restore file=... [to=...]`): a backup restored
into an empty store, on another path or another machine. A local store goes to `outputs/` (its `mlflow.db` and
`mlartifacts/`), its artifact addresses rewritten to where they now are; a server's goes to a server folder: a new
private PostgreSQL cluster (with a new password) restored with `pg_restore`, its artifacts, users and keys. A store
that holds runs is never overwritten, and a restore that fails leaves the target as empty as it found it.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
import tarfile
import tempfile
from pathlib import Path

import hydra
from omegaconf import DictConfig

from pipeline import CONF_DIR
from pipeline.errors import PipelineError, reported
from pipeline.lab.backup import DATABASE_FILES, MANIFEST, POSTGRES, SQLITE, summary
from pipeline.lab.postgres import Cluster


def read_manifest(archive: Path) -> dict:
    try:
        with tarfile.open(archive) as tar:
            manifest = json.load(tar.extractfile(MANIFEST))
    except (OSError, tarfile.TarError, KeyError, ValueError, TypeError) as exc:
        raise PipelineError(f"{archive} is not a backup of this project (no readable {MANIFEST}: {exc})") from exc
    if manifest.get("kind") not in DATABASE_FILES:
        raise PipelineError(f"{archive}: unknown kind of store {manifest.get('kind')!r}")
    return manifest


def sqlite_runs(database: Path) -> int:
    """The runs a SQLite store holds (0 for a file MLflow created and never wrote a run to)."""
    if not database.is_file():
        return 0
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    except sqlite3.OperationalError:  # no schema yet
        return 0
    finally:
        connection.close()


def rewrite_artifact_root(database: Path, old_root: str, new_root: Path) -> None:
    """Runs and experiments name their artifacts by absolute address: point them at where the files now are."""
    old, new = Path(old_root).as_uri(), new_root.as_uri()
    connection = sqlite3.connect(database)
    try:
        with connection:
            connection.execute("UPDATE experiments SET artifact_location = ? || substr(artifact_location, ?) "
                               "WHERE artifact_location LIKE ? || '%'", (new, len(old) + 1, old))
            connection.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                               "WHERE artifact_uri LIKE ? || '%'", (new, len(old) + 1, old))
    finally:
        connection.close()


def restore_sqlite(tar: tarfile.TarFile, manifest: dict, target: Path, staging: Path, placed: list[Path]) -> None:
    """`mlflow.db` and `mlartifacts/` into `target`, each added to `placed` as it is."""
    database, artifacts = target / "mlflow.db", target / "mlartifacts"
    if sqlite_runs(database):
        raise PipelineError(f"{database} holds runs already; restore into an empty folder (folder=...) or move it "
                            f"aside first")
    if artifacts.exists() and any(artifacts.iterdir()):
        raise PipelineError(f"{artifacts} is not empty; restore into an empty folder (folder=...)")
    tar.extractall(staging, filter="data")
    rewrite_artifact_root(staging / DATABASE_FILES[SQLITE], manifest["artifact_root"], artifacts)
    if artifacts.exists():
        artifacts.rmdir()
    if (staging / "artifacts").is_dir():
        placed.append(artifacts)
        shutil.move(staging / "artifacts", artifacts)
    placed.append(database)
    shutil.move(staging / DATABASE_FILES[SQLITE], database)


def restore_postgres(tar: tarfile.TarFile, target: Path, staging: Path, postgres: DictConfig,
                     placed: list[Path]) -> None:
    """A new private cluster in `target` restored from the dump (a new password: the old one is not kept), with the
    artifacts, users and keys, each added to `placed` as it is."""
    cluster = Cluster(target, int(postgres.port), str(postgres.os_user))
    if (cluster.data / "PG_VERSION").exists() or (target / "artifacts").exists():
        raise PipelineError(f"{target} holds a server's store already; restore into an empty folder (folder=...)")
    tar.extractall(staging, filter="data")
    placed += [cluster.data, cluster.passfile]
    with cluster.running():
        done = cluster.client("pg_restore", "--no-owner", "--role=mlflow", "-d", "mlflow",
                              str(staging / DATABASE_FILES[POSTGRES]))
        if done.returncode != 0:
            raise PipelineError(f"pg_restore failed: {(done.stderr or done.stdout).strip()[-300:]}")
    for name in ("artifacts", "auth"):
        if (staging / name).is_dir():
            placed.append(target / name)
            shutil.move(staging / name, target / name)
    if (target / "auth").is_dir():
        (target / "auth").chmod(0o700)  # its config is written anew, naming this folder's users database


def restore(archive: Path, target: Path, postgres: DictConfig) -> dict:
    """Restore `archive` into `target`; on any failure, remove what was placed."""
    if not archive.is_file():
        raise PipelineError(f"FILE={archive}: no such archive")
    manifest = read_manifest(archive)
    target.mkdir(parents=True, exist_ok=True)
    placed: list[Path] = []
    with tempfile.TemporaryDirectory(dir=target) as staging, tarfile.open(archive) as tar:
        try:
            if manifest["kind"] == SQLITE:
                restore_sqlite(tar, manifest, target, Path(staging), placed)
            else:
                restore_postgres(tar, target, Path(staging), postgres, placed)
        except BaseException:
            for path in placed:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            raise
    return manifest


@hydra.main(config_path=str(CONF_DIR), config_name="store", version_base="1.3")
@reported
def main(cfg: DictConfig) -> None:
    if not cfg.file:
        raise PipelineError("name the archive: make restore FILE=outputs/backups/clip-tables-....tar.gz")
    archive = Path(cfg.file).expanduser().resolve()
    manifest = read_manifest(archive)
    default = Path(cfg.folder) if manifest["kind"] == POSTGRES else Path(cfg.paths.outputs)
    target = Path(cfg.to or default).expanduser().resolve()
    restore(archive, target, cfg.postgres)
    after = "start it with `make server ARGS=folder=...`" if manifest["kind"] == POSTGRES else "it is ready"
    print(f"restored {summary(manifest)} into {target}; {after}, and `make verify` checks every artifact", flush=True)


if __name__ == "__main__":
    main()
