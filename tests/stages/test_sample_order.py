"""One sample order (issue 35): every per-sample array is stored in the dataset's order, so a job's values, intervals
and pairing digest are the same whatever batch_size and num_workers computed it, and results pair across them."""
from pathlib import Path

import numpy as np
import pytest

from pipeline.jobs.scoring import run_job
from pipeline.reports import comparisons, results
from pipeline.stages import score
from pipeline.store import artifacts, tracking
from tests.conftest import TRAINING_RUN, compose_config

# (batch_size, num_workers): the bundled shapes split has two shards, so two workers interleave their batches
SETTINGS = [(64, 0), (7, 0), (64, 2), (7, 2)]


def config(tmp_path: Path, checkpoint: Path, shapes_root: Path, batch_size: int, workers: int, *overrides: str):
    return compose_config(f"model.pretrained={checkpoint}", f"dataset.root={shapes_root}", "device=cpu",
                          f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifact_location={tmp_path}/artifacts",
                          f"batch_size={batch_size}", f"num_workers={workers}", *overrides)


@pytest.mark.slow
def test_a_job_gives_one_answer_whatever_loader_settings_computed_it(tmp_path, tiny_checkpoint, shapes_root):
    store = tracking.connect(f"sqlite:///{tmp_path}/mlflow.db", "clip-tables", str(tmp_path / "artifacts"))
    seen = {}
    for batch_size, workers in SETTINGS:  # every stage computed again under each setting
        result = run_job(config(tmp_path, tiny_checkpoint, shapes_root, batch_size, workers, "cache.force=true"))
        run = store.client.get_run(result.score_run_id)
        seen[batch_size, workers] = (result.metrics, run.data.tags[score.ORDER_TAG],
                                     artifacts.load_arrays(run, ("bootstrap", "labels"), store.uri))
    metrics, order, arrays = seen[SETTINGS[0]]
    assert metrics["n"] == 480 and {"ci_low/acc1", "ci_high/acc1", "ties"} <= set(metrics)
    for setting, (other_metrics, other_order, other_arrays) in seen.items():
        assert other_metrics == metrics and other_order == order, setting
        for name in ("bootstrap", "labels"):
            np.testing.assert_array_equal(other_arrays[name], arrays[name], err_msg=f"{setting}: {name}")

    # another model, embedded with other loader settings, pairs with the last one in layout=compare
    run_job(config(tmp_path, TRAINING_RUN / "step_300.pt", shapes_root, 64, 0))
    records = results.latest_in_store(store)
    baseline = next(r for r in records if r.run_id == result.job_run_id)
    table = comparisons.compare(records, "acc1", {"pretrained": baseline.pretrained}, results.replicate_loader(store))
    [row] = table[table["dataset"] == "shapes"].to_dict("records")
    assert row["n"] == 480 and row["difference"] != 0 and row["ci_low"] <= row["difference"] <= row["ci_high"]
