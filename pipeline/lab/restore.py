"""`make restore FILE=archive [folder=...]` (`python -m pipeline.lab.restore file=... [to=...]`): a backup restored
into an empty store, on another path or another machine. The archive is read whole and every file checked against
the manifest's SHA-256 in a folder of its own inside the target before anything is placed; only then is the store
built there and renamed into place, so a damaged archive, or any failure, leaves the target as it was. A local
store goes to `outputs/` (its `mlflow.db` and `mlartifacts/`), its artifact addresses rewritten to where they now
are; a server's goes to a server folder: a new private PostgreSQL cluster (with a new password) restored with
`pg_restore`, its artifacts, users and keys. A store that holds runs is never overwritten.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import hydra
from omegaconf import DictConfig

from pipeline import CONF_DIR
from pipeline.errors import PipelineError, one_line, reported
from pipeline.lab.backup import DATABASE_FILES, MANIFEST, POSTGRES, SQLITE, summary
from pipeline.lab.postgres import Cluster

CHUNK = 1 << 20
SERVER_PARTS = ("pgdata", "pgpass", "artifacts", "auth")  # what a restore places in a server folder
# What reading a damaged archive raises: gzip's CRC or length check (BadGzipFile, an OSError), the end of a
# truncated file (EOFError), data that does not inflate (zlib.error), a tar header that does not parse.
DAMAGED = (EOFError, zlib.error, OSError, tarfile.TarError)


def read_manifest(archive: Path) -> dict:
    """The manifest: the archive's first member, read without reading the rest."""
    try:
        with gzip.open(archive, "rb") as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST or not first.isreg():
                raise PipelineError(f"{archive} is not a backup of this project (its first member is not {MANIFEST})")
            manifest = json.load(tar.extractfile(first))
    except (*DAMAGED, ValueError) as exc:
        raise PipelineError(f"{archive} is not a readable backup of this project (no readable {MANIFEST}: "
                            f"{one_line(exc)})") from None
    kind = manifest.get("kind") if isinstance(manifest, dict) else None
    if kind not in DATABASE_FILES:
        raise PipelineError(f"{archive}: unknown kind of store {kind!r}")
    if manifest.get("format", 1) >= 2 and not isinstance(manifest.get("files"), dict):
        raise PipelineError(f"{archive}: its {MANIFEST} lists no files; it is not a backup this version restores")
    return manifest


@dataclass
class Extracted:
    """What reading the archive found: the files it holds and how many were checked against the manifest."""

    files: int = 0
    checked: int = 0


def _copy_hashed(source, path: Path) -> str:
    """`source` into `path`, and its SHA-256; a read that fails is the archive's fault, a write that fails not."""
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        while block := source.read(CHUNK):
            digest.update(block)
            try:
                handle.write(block)
            except OSError as exc:
                raise PipelineError(f"cannot write {path} ({exc.strerror})") from None
    return digest.hexdigest()


def _member(tar: tarfile.TarFile, member: tarfile.TarInfo, into: Path, expected: dict[str, str] | None,
            found: Extracted) -> None:
    """One member into `into`, checked: a file the manifest lists, once, with its checksum."""
    safe = tarfile.data_filter(member, str(into))  # no absolute path, no `..`, no link out of the folder
    if safe.isdir():
        (into / safe.name).mkdir(parents=True, exist_ok=True)
        return
    if not safe.isreg():
        raise PipelineError(f"member {member.name} is not a file or a folder; a backup holds none such")
    path = into / safe.name
    if path.exists():
        raise PipelineError(f"member {member.name} is in the archive twice")
    if expected is not None and member.name not in expected:
        raise PipelineError(f"member {member.name} is not in the manifest")
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = _copy_hashed(tar.extractfile(member), path)
    found.files += 1
    if expected is not None:
        if digest != expected[member.name]:
            raise PipelineError(f"member {member.name} does not match the manifest's SHA-256")
        found.checked += 1


def damage(exc: BaseException) -> str:
    """What a reading error says about the archive, in words."""
    if isinstance(exc, EOFError):
        return f"it ends early, truncated: {one_line(exc)}"
    if isinstance(exc, zlib.error):
        return f"its compressed data is corrupt: {one_line(exc)}"
    if isinstance(exc, gzip.BadGzipFile):
        return f"gzip's check failed: {one_line(exc)}"
    if isinstance(exc, tarfile.TarError):
        return f"unreadable as a tar archive: {one_line(exc)}"
    return f"it cannot be read: {one_line(exc)}"


def extract_checked(archive: Path, manifest: dict, into: Path) -> Extracted:
    """Every member into `into`, each file checked as it is read; then the end of the stream (gzip's CRC and
    length) and that no listed file is missing. A format-1 archive lists no checksums of its own: its stream is
    checked, its runs are left to `make verify`."""
    expected = manifest.get("files")
    found, current, last = Extracted(), None, None
    try:
        with gzip.open(archive, "rb") as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                current = member.name
                if member.name != MANIFEST or last is not None:
                    _member(tar, member, into, expected, found)
                current, last = None, member.name
            while stream.read(CHUNK):  # to the end: gzip checks its CRC and length there
                pass
    except DAMAGED as exc:
        where = f"at member {current}" if current else f"after member {last}" if last else "at its start"
        raise PipelineError(f"{archive} is damaged {where} ({damage(exc)}); nothing was restored") from None
    except PipelineError as exc:
        raise PipelineError(f"{archive}: {exc}; nothing was restored") from None
    if expected is not None and found.checked != len(expected):
        missing = sorted(set(expected) - {str(p.relative_to(into)) for p in into.rglob("*") if p.is_file()})
        raise PipelineError(f"{archive}: member {missing[0]} is in the manifest but not in the archive "
                            f"({len(missing)} missing); nothing was restored")
    return found


def sqlite_runs(database: Path) -> int:
    """The runs a SQLite store holds (0 for a file MLflow created and never wrote a run to)."""
    if not database.is_file():
        return 0
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # no schema yet
            return 0
        raise PipelineError(f"{database} cannot be read as a store ({exc}); restore into an empty folder "
                            f"(folder=...) or move it aside first") from None
    except sqlite3.DatabaseError as exc:
        raise PipelineError(f"{database} is not an MLflow store ({exc}); restore into an empty folder (folder=...) "
                            f"or move it aside first") from None
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


def refuse_occupied(kind: str, target: Path) -> None:
    """A store that holds anything is never overwritten: checked before the archive is read."""
    if kind == SQLITE:
        if sqlite_runs(target / "mlflow.db"):
            raise PipelineError(f"{target / 'mlflow.db'} holds runs already; restore into an empty folder "
                                f"(folder=...) or move it aside first")
        artifacts = target / "mlartifacts"
        if artifacts.exists() and (not artifacts.is_dir() or any(artifacts.iterdir())):
            raise PipelineError(f"{artifacts} is not empty; restore into an empty folder (folder=...)")
    elif any((target / name).exists() for name in SERVER_PARTS):
        raise PipelineError(f"{target} holds a server's store already; restore into an empty folder (folder=...)")


def build_sqlite(extracted: Path, manifest: dict, target: Path, built: Path) -> list[str]:
    """`mlflow.db` and `mlartifacts/` in `built`, addressing the artifacts where they will be in `target`."""
    built.mkdir()
    rewrite_artifact_root(extracted / DATABASE_FILES[SQLITE], manifest["artifact_root"], target / "mlartifacts")
    artifacts = extracted / "artifacts"
    artifacts.mkdir(exist_ok=True)
    os.rename(artifacts, built / "mlartifacts")
    os.rename(extracted / DATABASE_FILES[SQLITE], built / "mlflow.db")
    return ["mlartifacts", "mlflow.db"]  # the database last: once it is there, so is everything it names


def build_postgres(extracted: Path, built: Path, postgres: DictConfig) -> list[str]:
    """A server folder in `built`: a new private cluster (a new password: the old one is not kept) restored from
    the dump, with the artifacts, users and keys. A stopped cluster's folder moves: it holds no absolute path."""
    cluster = Cluster(built, int(postgres.port), str(postgres.os_user))
    with cluster.running():
        done = cluster.client("pg_restore", "--no-owner", "--role=mlflow", "-d", "mlflow",
                              str(extracted / DATABASE_FILES[POSTGRES]))
        if done.returncode != 0:
            raise PipelineError(f"pg_restore failed: {(done.stderr or done.stdout).strip()[-300:]}")
    for name in ("artifacts", "auth"):
        if (extracted / name).is_dir():
            os.rename(extracted / name, built / name)
    if (built / "auth").is_dir():
        (built / "auth").chmod(0o700)  # its config is written anew, naming this folder's users database
    return [name for name in SERVER_PARTS if (built / name).exists()]


def place(built: Path, target: Path, names: list[str], aside: Path) -> None:
    """Rename each of `names` from `built` into `target` (an empty one there set aside): all of them or, on any
    failure, none, with what was set aside put back."""
    done: list[tuple[Path, Path]] = []
    try:
        for name in names:
            if (target / name).exists() or (target / name).is_symlink():
                os.rename(target / name, aside / name)
                done.append((target / name, aside / name))
            os.rename(built / name, target / name)
            done.append((built / name, target / name))
    except BaseException:
        for source, moved in reversed(done):
            os.rename(moved, source)
        raise


@contextmanager
def staging_in(target: Path) -> Iterator[Path]:
    """A temporary folder inside `target` (one filesystem: everything is renamed into place), removed afterwards;
    if the block fails, the folders made for it are removed too, so the target is left as it was."""
    made = next((folder for folder in reversed([target, *target.parents]) if not folder.exists()), None)
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".restore-", dir=target))
    staging.chmod(0o711)  # as root, PostgreSQL's own user builds the cluster in here; nothing here is listable
    try:
        yield staging
    except BaseException:
        shutil.rmtree(made or staging, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def restore(archive: Path, target: Path, postgres: DictConfig) -> tuple[dict, Extracted]:
    """Restore `archive` into `target`; on any failure the target is as it was."""
    if not archive.is_file():
        raise PipelineError(f"FILE={archive}: no such archive")
    manifest = read_manifest(archive)
    refuse_occupied(manifest["kind"], target)
    with staging_in(target) as staging:
        extracted, built, aside = staging / "archive", staging / "built", staging / "aside"
        for folder in (extracted, aside):
            folder.mkdir(mode=0o700)  # the archive holds the server's keys
        found = extract_checked(archive, manifest, extracted)
        if manifest["kind"] == SQLITE:
            names = build_sqlite(extracted, manifest, target, built)
        else:
            names = build_postgres(extracted, built, postgres)
        place(built, target, names, aside)
    return manifest, found


def verified(manifest: dict, found: Extracted) -> str:
    """What the restore checked, in words."""
    if "files" in manifest:
        return f"all {found.checked} files checked against the manifest's SHA-256 before anything was placed"
    return (f"{found.files} files read whole (the archive's CRC checked); a format-1 archive lists no checksums of "
            f"its files, so run `make verify` now")


@hydra.main(config_path=str(CONF_DIR), config_name="store", version_base="1.3")
@reported
def main(cfg: DictConfig) -> None:
    if not cfg.file:
        raise PipelineError("name the archive: make restore FILE=outputs/backups/clip-tables-....tar.gz")
    archive = Path(cfg.file).expanduser().resolve()
    if not archive.is_file():
        raise PipelineError(f"FILE={archive}: no such archive")
    manifest = read_manifest(archive)
    default = Path(cfg.folder) if manifest["kind"] == POSTGRES else Path(cfg.paths.outputs)
    target = Path(cfg.to or default).expanduser().resolve()
    manifest, found = restore(archive, target, cfg.postgres)
    after = "start it with `make server ARGS=folder=...`" if manifest["kind"] == POSTGRES else "it is ready"
    print(f"restored {summary(manifest)} into {target}: {verified(manifest, found)}; {after}", flush=True)


if __name__ == "__main__":
    main()
