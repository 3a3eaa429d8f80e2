"""Never lose a result: `make clean` keeps the store and the server's folder; a store is backed up while a sweep
writes to it, restored on another path, verified, and served again; a damaged artifact is named by `make verify`
and recomputed with what depended on it alone. A damaged archive (truncated, corrupt, a file changed, removed or
added) is refused in one line and leaves the target as it was. The same round trip for the lab server's private
PostgreSQL."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.lab import restore
from pipeline.store import tracking
from pipeline.store.artifacts import StageOutput
from pipeline.store.cache import StageCache, StageRequest
from tests.conftest import REPO, asset_overrides, run_pipeline
from tests.loopback import SERVER_FOLDERS, free_port, postgres_mlflow_server

PROMPTS = "prompts=dataset,classname"


def command(module: str, workdir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=workdir, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "CLIP_TABLES_OUTPUTS": str(workdir / "outputs"), **(env or {})})


def stage_runs(outputs: Path) -> pd.DataFrame:
    store = tracking.connect(f"sqlite:///{outputs}/mlflow.db", "clip-tables", str(outputs / "mlartifacts"))
    runs = store.client.search_runs([store.experiment_id], "tags.stage != 'claim'", max_results=5000)
    return pd.DataFrame([{"stage": r.data.tags["stage"], "key": r.data.tags.get("cache_key"), "run": r.info.run_id,
                          "name": r.info.run_name, "status": r.info.status} for r in runs])


def sweep_table(outputs: Path) -> pd.DataFrame:
    [latest] = sorted(outputs.glob("multirun/*/*/table.csv"))[-1:]
    return pd.read_csv(latest).set_index("prompts").sort_index()


def test_make_clean_removes_what_is_regenerated_and_never_the_store(tmp_path):
    outputs = tmp_path / "outputs"
    kept = ["mlflow.db", "mlartifacts/1/run/artifacts/logits.npy", "server/pgdata/PG_VERSION", "server/auth/secret_key",
            "server/artifacts/1/x.npy", "backups/clip-tables-sqlite-1.tar.gz", "README.md"]
    gone = ["multirun/2026-12-02/10-00-00/table.csv", "runs/a/b.log", "tables/table.csv", "data/shapes/test/0.tar",
            "models/tiny-clip.pt", "data_cache/http/x", "plot_cache/0a.png", "reference_wheels/t.whl", "mlflow-ui.log",
            "ui.log", "backup.log", "restore.log", "verify.log", "erase.log", "test_artifacts/report_pages/sweep.png"]
    for name in kept + gone:
        (outputs / name).parent.mkdir(parents=True, exist_ok=True)
        (outputs / name).write_text(name)
    done = subprocess.run(["make", "-C", str(REPO), "--no-print-directory", "clean", f"OUTPUTS={outputs}"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert all((outputs / name).read_text() == name for name in kept)
    assert not any((outputs / name.split("/")[0]).exists() for name in gone)


def test_clean_store_says_what_it_would_delete_and_deletes_only_when_confirmed(tmp_path, store):
    run = store.client.create_run(store.experiment_id).info.run_id
    store.client.log_text(run, "x" * 1000, "note.txt")
    settings = ["tracking.uri=" + store.uri, f"tracking.artifact_location={tmp_path / 'artifacts'}"]
    preview = command("pipeline.lab.erase", tmp_path, *settings)
    assert preview.returncode == 0 and preview.stdout.startswith("would delete 1 runs, ")
    assert "CONFIRM=yes" in preview.stdout and (tmp_path / "mlflow.db").is_file()
    done = command("pipeline.lab.erase", tmp_path, *settings, "confirm=true")
    assert done.returncode == 0 and done.stdout.startswith("deleted 1 runs")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "artifacts").exists()


@pytest.mark.slow
def test_a_store_backed_up_while_a_sweep_writes_is_restored_elsewhere_verified_and_served(tmp_path, shapes_root,
                                                                                         tiny_checkpoint):
    assets = asset_overrides(shapes_root, tiny_checkpoint)
    original, moved = tmp_path / "original", tmp_path / "elsewhere"
    assert run_pipeline(original, "-m", PROMPTS, *assets).returncode == 0
    before = sweep_table(original / "outputs")
    # a second sweep writes to the store while the backup is taken
    writing = subprocess.Popen([sys.executable, "-m", "pipeline", "-m", "prompts=a_photo_of,simple_imagenet", *assets],
                               cwd=original, env={**os.environ, "CLIP_TABLES_OUTPUTS": str(original / "outputs")},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    taken = command("pipeline.lab.backup", original)
    assert writing.wait(timeout=600) == 0 and taken.returncode == 0, taken.stderr[-2000:]
    [archive] = (original / "outputs" / "backups").glob("clip-tables-sqlite-*.tar.gz")
    assert oct(archive.stat().st_mode & 0o777) == "0o600"
    manifest = restore.read_manifest(archive)
    assert manifest["runs"]["job"]["FINISHED"] >= 2 and manifest["versions"]["mlflow"].startswith("3.17")
    with tarfile.open(archive) as tar:
        assert {"manifest.json", "mlflow.db"} <= set(tar.getnames())

    restored = command("pipeline.lab.restore", moved, f"file={archive}")
    assert restored.returncode == 0, restored.stderr[-2000:]
    assert command("pipeline.lab.restore", moved, f"file={archive}").returncode == 1  # it holds runs now
    verified = command("pipeline.store.verify", moved)
    assert verified.returncode == 0 and " 0 failed" in verified.stdout
    again = run_pipeline(moved, "-m", PROMPTS, *assets)
    assert again.returncode == 0 and "MISS" not in again.stdout + again.stderr
    assert sweep_table(moved / "outputs").equals(before)

    # one damaged artifact (a score's metrics): verify names its run, and the next sweep recomputes that score from
    # its cached inputs, and nothing else
    runs = stage_runs(moved / "outputs")
    damaged = runs[(runs["stage"] == "score") & runs["name"].str.endswith(":classname")].iloc[0]
    metrics = next((moved / "outputs" / "mlartifacts").rglob(f"{damaged['run']}/artifacts/metrics.json"))
    metrics.write_text(metrics.read_text().replace("0.", "0.1", 1))
    named = command("pipeline.store.verify", moved)
    assert named.returncode == 1 and f"FAILED run {damaged['run']}" in named.stdout and " 1 failed" in named.stdout
    recomputed = run_pipeline(moved, "-m", PROMPTS, *assets)
    said = recomputed.stdout + recomputed.stderr
    assert recomputed.returncode == 0
    assert [line.split("] MISS ")[1].split()[0] for line in said.splitlines() if "] MISS " in line] == [
        "score:tiny-clip:shapes:classname"]
    assert sweep_table(moved / "outputs").equals(before)


def fill(store: tracking.TrackingStore) -> list[str]:
    """Three cached stage runs, and one run still running with a file written: its files are left out."""
    cache = StageCache(store)
    done = [cache.get_or_compute(StageRequest("embed", key, {"modality": "image"}, {}, name=f"embed:{key}"),
                                 lambda: StageOutput({"x": np.arange(500.0), "y": np.ones(5)}, {"acc1": 0.5})).run_id
            for key in "abc"]
    running = store.client.create_run(store.experiment_id).info.run_id
    store.client.log_text(running, "half written", "partial.txt")
    return done


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """A backup of a small local store."""
    workdir = tmp_path_factory.mktemp("backed-up")
    outputs = workdir / "outputs"
    fill(tracking.connect(f"sqlite:///{outputs}/mlflow.db", "clip-tables", str(outputs / "mlartifacts")))
    taken = command("pipeline.lab.backup", workdir)
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert "1 file(s) of runs still running left out" in taken.stdout
    [made] = (outputs / "backups").glob("clip-tables-sqlite-*.tar.gz")
    return made


def listing(folder: Path) -> list[tuple[str, str]] | None:
    """Every path under `folder` with its file's SHA-256: what a refused restore must leave as it was."""
    if not folder.exists():
        return None
    return sorted((str(path.relative_to(folder)), hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file()
                   else "folder") for path in folder.rglob("*"))


def an_empty_store(folder: Path) -> Path:
    """A target with a file of its own, an empty database file and an empty artifacts folder."""
    (folder / "mlartifacts").mkdir(parents=True)
    (folder / "mlflow.db").write_bytes(b"")
    (folder / "notes.txt").write_text("mine")
    return folder


def repacked(archive: Path, into: Path, change) -> Path:
    """`archive` written again, each member through `change(member, data)` -> (member, data) or None to leave it
    out: a well-formed gzip stream whose content alone differs."""
    with tarfile.open(archive) as source, tarfile.open(into, "w:gz") as target:
        for member in source.getmembers():
            kept = change(member, source.extractfile(member).read())
            if kept is not None:
                member, data = kept
                member.size = len(data)
                target.addfile(member, io.BytesIO(data))
    return into


def flipped_in_compressed_data(archive: Path, into: Path) -> Path:
    data = bytearray(archive.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    into.write_bytes(bytes(data))
    with pytest.raises((zlib.error, OSError, EOFError)):  # gzip itself fails on it
        gzip.decompress(bytes(data))
    return into


def an_artifact(member: tarfile.TarInfo) -> bool:
    return member.name.startswith("artifacts/") and member.name.endswith("/x.npy")


def truncated(archive: Path, into: Path) -> Path:
    into.write_bytes(archive.read_bytes()[: archive.stat().st_size * 2 // 3])
    return into


def with_an_extra_member(archive: Path, into: Path) -> Path:
    with tarfile.open(archive) as source, tarfile.open(into, "w:gz") as target:
        for member in source.getmembers():
            target.addfile(member, source.extractfile(member))
        extra = tarfile.TarInfo("artifacts/extra.npy")
        extra.size = 8
        target.addfile(extra, io.BytesIO(b"not mine"))
    return into


# Each fault: how the archive is damaged, and what the one line says after the archive's name. Where a flipped
# compressed byte lands decides whether inflating fails there or yields other bytes, which the member's checksum
# then refuses (before gzip's CRC, checked at the stream's end, would).
FAULTS = {
    "truncated": (truncated,
                  r" is damaged (at|after) member \S+ \(it ends early, truncated: .*\); nothing was restored$"),
    "a compressed byte flipped": (flipped_in_compressed_data,
                                  r"( is damaged (at|after) member \S+ \(its compressed data is corrupt: .*\)|: member "
                                  r"\S+ does not match the manifest's SHA-256); nothing was restored$"),
    "an artifact's byte flipped": (
        lambda a, p: repacked(a, p, lambda m, d: (m, d[:-1] + bytes([d[-1] ^ 1])) if an_artifact(m) else (m, d)),
        r": member artifacts/\w+/artifacts/x\.npy does not match the manifest's SHA-256; nothing was restored$"),
    "a file removed": (lambda a, p: repacked(a, p, lambda m, d: None if an_artifact(m) else (m, d)),
                       r": member artifacts/\w+/artifacts/x\.npy is in the manifest but not in the archive "
                       r"\(3 missing\); nothing was restored$"),
    "a file added": (with_an_extra_member,
                     r": member artifacts/extra\.npy is not in the manifest; nothing was restored$"),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_damaged_archive_is_refused_in_one_line_and_the_target_is_left_as_it_was(fault, archive, tmp_path):
    make, said = FAULTS[fault]
    damaged = make(archive, tmp_path / "damaged.tar.gz")
    for target in (an_empty_store(tmp_path / "store"), tmp_path / "not" / "yet"):
        before = listing(target)
        done = command("pipeline.lab.restore", tmp_path / "work", f"file={damaged}", f"to={target}")
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and done.stdout == "" and len(lines) == 1, done.stderr[-2000:]
        assert lines[0].startswith(f"Error: {damaged}") and re.search(said, lines[0]), lines[0]
        assert listing(target) == before
    assert not (tmp_path / "not").exists()


def test_a_restore_checks_every_file_before_it_places_the_store(archive, tmp_path):
    target = an_empty_store(tmp_path / "store")
    manifest = restore.read_manifest(archive)
    assert manifest["format"] == 2 and manifest["left_out"] == 1
    with tarfile.open(archive) as tar:
        assert tar.getnames()[0] == "manifest.json" and set(tar.getnames()[1:]) == set(manifest["files"])
    done = command("pipeline.lab.restore", tmp_path / "work", f"file={archive}", f"to={target}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"all {len(manifest['files'])} files checked against the manifest's SHA-256 before anything was placed" \
        in done.stdout
    assert (target / "notes.txt").read_text() == "mine" and not list(target.glob(".restore-*"))
    runs = sum(sum(statuses.values()) for statuses in manifest["runs"].values())
    assert restore.sqlite_runs(target / "mlflow.db") == runs + 1  # and the running one, which has no stage tag
    placed = {name: hashlib.sha256((target / "mlartifacts" / name.removeprefix("artifacts/")).read_bytes()).hexdigest()
              for name in manifest["files"] if name.startswith("artifacts/")}
    assert placed == {name: sha for name, sha in manifest["files"].items() if name.startswith("artifacts/")}
    again = command("pipeline.lab.restore", tmp_path / "work", f"file={archive}", f"to={target}")
    assert again.returncode == 1 and "holds runs already" in again.stderr


@pytest.mark.slow
def test_a_servers_folder_is_restored_into_a_new_cluster_refused_when_damaged_and_served_again(tmp_path):
    with postgres_mlflow_server() as url:
        computed = fill(tracking.connect(url, "clip-tables"))
        taken = command("pipeline.lab.backup", tmp_path, "server=true", f"folder={SERVER_FOLDERS[url]}")
        assert taken.returncode == 0, taken.stderr[-2000:]
    [archive] = (tmp_path / "outputs" / "backups").glob("clip-tables-postgres-*.tar.gz")
    elsewhere = Path(tempfile.mkdtemp(prefix="clip-tables-restored-"))  # PostgreSQL's own user must enter it
    elsewhere.chmod(0o755)
    try:
        server = elsewhere / "server"
        restored = command("pipeline.lab.restore", tmp_path, f"file={archive}", f"to={server}",
                           f"postgres.port={free_port()}")
        assert restored.returncode == 0, restored.stderr[-2000:]
        assert "files checked against the manifest's SHA-256" in restored.stdout
        assert {p.name for p in server.iterdir()} == {"pgdata", "pgpass", "artifacts"}
        damaged = truncated(archive, tmp_path / "damaged.tar.gz")
        before = listing(elsewhere / "other")
        refused = command("pipeline.lab.restore", tmp_path, f"file={damaged}", f"to={elsewhere / 'other'}",
                          f"postgres.port={free_port()}")
        assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
        assert listing(elsewhere / "other") == before is None
        with postgres_mlflow_server(folder=server) as again:
            cache = StageCache(tracking.connect(again, "clip-tables"))
            served = [cache.get_or_compute(StageRequest("embed", key, {"modality": "image"}, {}, name=f"embed:{key}"),
                                           lambda: pytest.fail("computed again")) for key in "abc"]
            assert [result.run_id for result in served] == computed and all(result.hit for result in served)
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)
