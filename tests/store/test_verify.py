"""`make verify`: every servable stage run read back against its checksums; a damaged one is named, marked never to
be served again, and recomputed by the next lookup."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.store.artifacts import StageOutput
from pipeline.store.cache import StageCache, StageRequest
from pipeline.store.verify import verify


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
