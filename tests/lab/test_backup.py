"""Never lose a result: `make clean` keeps the store and the server's folder; a store is backed up while a sweep
writes to it, restored on another path, verified, and served again; a damaged artifact is named by `make verify`
and recomputed with what depended on it alone. The same round trip for the lab server's private PostgreSQL."""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest

from pipeline.lab import restore
from pipeline.store import tracking
from tests.conftest import REPO, asset_overrides, run_pipeline

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
            "models/tiny-clip.pt", "data_cache/http/x", "plot_cache/0a.png", "reference_wheels/t.whl", "mlflow-ui.log"]
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
