"""`make verify`: every servable stage run read back against its checksums; a damaged one is named on one line,
marked never to be served again (quarantined), and recomputed by the next lookup; the quarantined runs are counted
with how many were recomputed since, and a report reads a recomputed run in place of the one it replaced."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.store import tracking
from pipeline.store.artifacts import StageOutput
from pipeline.store.cache import StageCache, StageRequest
from pipeline.store.verify import current, quarantine_line, verify
from tests.conftest import asset_overrides, run_pipeline


def request(key: str) -> StageRequest:
    return StageRequest("embed", key, {"modality": "image"}, {}, name=f"embed:{key}")


def test_a_damaged_artifact_is_named_marked_and_recomputed(store, tmp_path: Path):
    cache = StageCache(store)
    first = cache.get_or_compute(request("a"), lambda: StageOutput({"x": np.arange(3.0)}, {"acc1": 0.5}))
    cache.get_or_compute(request("b"), lambda: StageOutput({"x": np.ones(2)}))
    clean = verify(store)
    assert (clean.checked, clean.files, clean.failed) == (2, 3, [])
    stored = next((tmp_path / "artifacts").rglob(f"{first.run_id}/artifacts/x.npy"))
    np.save(stored, np.zeros(3), allow_pickle=False)
    found = verify(store)
    assert [run.info.run_id for run, _ in found.failed] == [first.run_id]
    assert "x.npy checksum" in found.failed[0][1]
    tags = store.client.get_run(first.run_id).data.tags
    assert tags["cache_store"] == "false" and "checksum" in tags["cache_corrupt"]
    assert verify(store).checked == 1  # a marked run is no longer servable, so no longer checked
    again = cache.get_or_compute(request("a"), lambda: StageOutput({"x": np.arange(3.0)}, {"acc1": 0.5}))
    assert not again.hit and again.run_id != first.run_id


def test_a_missing_file_is_one_line_and_quarantined_runs_are_counted_until_and_after_recomputed(store, tmp_path):
    cache = StageCache(store)
    first = cache.get_or_compute(request("a"), lambda: StageOutput({"x": np.arange(3.0), "y": np.ones(2)}))
    next((tmp_path / "artifacts").rglob(f"{first.run_id}/artifacts/y.npy")).unlink()
    found = verify(store)
    [(run, why)] = found.failed
    assert run.info.run_id == first.run_id and why.startswith("y.npy is missing from the artifact store") and \
        "\n" not in why
    assert (found.quarantined, found.recomputed) == (1, 0)
    assert quarantine_line(found) == ("1 quarantined so far (never served again), 0 of them since recomputed, 1 to be "
                                      "recomputed by the next sweep that needs them")
    quarantined = store.client.get_run(first.run_id)
    assert current(store, quarantined).info.run_id == first.run_id  # nothing in its place yet
    again = cache.get_or_compute(request("a"), lambda: StageOutput({"x": np.arange(3.0), "y": np.ones(2)}))
    healed = verify(store)
    assert (healed.failed, healed.quarantined, healed.recomputed) == ([], 1, 1)
    assert quarantine_line(healed) == "1 quarantined so far (never served again), 1 of them since recomputed"
    assert current(store, quarantined).info.run_id == again.run_id  # what a report reads in its place
    assert current(store, store.client.get_run(again.run_id)).info.run_id == again.run_id


@pytest.mark.slow
def test_a_report_reads_a_healed_run_and_never_blames_its_old_checksum(tmp_path, shapes_root, tiny_checkpoint):
    """A served score names the image features it was computed from; once those were quarantined and recomputed
    (by another prompt set's job), the sweep's ensembling curve reads the recomputed ones."""
    assets = asset_overrides(shapes_root, tiny_checkpoint)
    assert run_pipeline(tmp_path, "-m", "prompts=classname,dataset", *assets).returncode == 0
    outputs = tmp_path / "outputs"
    store = tracking.connect(f"sqlite:///{outputs}/mlflow.db", "clip-tables", str(outputs / "mlartifacts"))
    [job] = store.client.search_runs([store.experiment_id], "tags.stage = 'job' and tags.prompts = 'dataset'")
    features = next((outputs / "mlartifacts").rglob(f"{job.data.tags['run.embed_image']}/artifacts/image_features.npy"))
    features.write_bytes(features.read_bytes()[:-4] + b"\0\0\0\0")
    checked = subprocess.run([sys.executable, "-m", "pipeline.store.verify"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=300, env={**os.environ, "CLIP_TABLES_OUTPUTS": str(outputs)})
    assert checked.returncode == 1 and "image_features.npy checksum" in checked.stdout
    assert "1 quarantined so far (never served again), 0 of them since recomputed" in checked.stdout
    again = run_pipeline(tmp_path, "-m", "prompts=classname,dataset,a_photo_of", *assets)
    said = again.stdout + again.stderr
    assert again.returncode == 0 and "no ensembling curve" not in said, said[-3000:]
    [sweep] = sorted(outputs.glob("multirun/*/*/ensembling.csv"))[-1:]
    assert set(pd.read_csv(sweep)["prompts"]) == {"dataset"}
