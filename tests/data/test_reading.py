"""What the embed stage reads: every sample once, with the field its task needs, in worker processes too."""
import multiprocessing

import numpy as np
import torch

from pipeline.data import datasets, reading
from tests import synthetic


def to_tensor(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.resize((8, 8)), dtype=np.float32))


def test_classification_batches_give_every_label_once(tmp_path):
    root = synthetic.write_wds_classification(tmp_path / "shapes", per_class=2)
    spec = datasets.DatasetSpec("shapes", "zeroshot_classification", str(root), "test", "acc1")
    labels = [int(label) for batch in reading.classification_batches(spec, to_tensor, 5, 0) for label in batch.fields["cls"]]
    assert sorted(labels) == sorted(list(range(12)) * 2)


def test_multilabel_rows_follow_the_images_read_by_two_workers(tmp_path):
    flags = synthetic.write_voc_devkit(tmp_path / "VOCdevkit", images=30)
    spec = datasets.DatasetSpec("voc2007_multilabel", "multilabel_classification", str(tmp_path), "test",
                                "map_11point", format="voc")
    truth, batches = reading.multilabel_batches(spec, to_tensor, 4, 2)
    rows, images = [], []
    for batch in batches:
        rows.extend(int(i) for i in batch.fields["index"])
        images.append(batch.images)
    assert rows == list(range(30)) and np.array_equal(truth, flags) and torch.cat(images).shape == (30, 8, 8, 3)


def _count_in_child(queue) -> None:
    queue.put(reading.worker_count(4))


def test_a_launchers_worker_process_reads_without_nested_workers():
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_count_in_child, args=(queue,))
    child.start()
    child.join(60)
    assert queue.get(timeout=5) == 0 and reading.worker_count(4) == min(4, reading.usable_cpus())
