"""One sample order (issue 35): every per-sample array is stored in the dataset's order, so a job's values, intervals
and pairing digest are the same whatever batch_size and num_workers computed it, and results pair across them."""
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset

from pipeline.data import datasets
from pipeline.jobs.scoring import run_job
from pipeline.models.loading import ModelLoader, ModelSpec
from pipeline.reports import comparisons, results
from pipeline.stages import score
from pipeline.tasks.retrieval import encode_retrieval_images
from pipeline.store import artifacts, tracking
from tests import synthetic
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


def split_into_shards(root: Path, shards: int) -> Path:
    """The split's one shard dealt out, sample by sample in turn, over `shards` shards."""
    samples = list(webdataset.WebDataset(str(root / "test" / "0.tar"), shardshuffle=False))
    (root / "test" / "0.tar").unlink()
    writers = [webdataset.TarWriter(str(root / "test" / f"{i}.tar")) for i in range(shards)]
    for index, sample in enumerate(samples):
        writers[index % shards].write({k: v for k, v in sample.items() if k != "__url__"})
    for writer in writers:
        writer.close()
    (root / "test" / "nshards.txt").write_text(f"{shards}\n")
    return root


def test_retrieval_captions_and_their_images_keep_the_datasets_order(tmp_path, tiny_checkpoint):
    """A retrieval webdataset in two shards: the captions and each one's image come out alike with one reader
    and with two workers interleaving their batches."""
    root = split_into_shards(synthetic.write_wds_retrieval(tmp_path / "retrieval", per_class=2), 2)
    spec = datasets.DatasetSpec("retrieval_shapes", "zeroshot_retrieval", str(root), "test", "mean_recall@1")
    loader = ModelLoader(ModelSpec("tiny", "tiny-clip", str(tiny_checkpoint), "fp32"), torch.device("cpu"))
    alone, two = (encode_retrieval_images(loader, spec, "fp32", 3, workers).arrays for workers in (0, 2))
    assert alone.keys() == two.keys() and len(alone["caption_image"]) == 48
    for name in alone:
        np.testing.assert_array_equal(two[name], alone[name], err_msg=name)
    # the dataset's order: shard 0's samples (pictures 0, 2, 4, ...), then shard 1's, two captions each
    pictures = [int(caption.rsplit("picture ", 1)[1].rstrip(".")) for caption in alone["captions"][::2]]
    assert pictures == [*range(0, 24, 2), *range(1, 24, 2)]
