"""The VOC devkit reader: each class's ground truth with its difficult flags, a devkit folder found where it is
unpacked, the test archive fetched once from a loopback server and unpacked safely, and one-line errors."""
import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import annotated, datasets, reading
from pipeline.data.readers import voc
from pipeline.errors import PipelineError
from tests import synthetic
from tests.loopback import FakeHub


def devkit(tmp_path: Path, images: int = 12) -> tuple[Path, np.ndarray]:
    flags = synthetic.write_voc_devkit(tmp_path / "VOCdevkit", images=images)
    return tmp_path / "VOCdevkit" / voc.YEAR, flags


def test_ground_truth_reads_every_class_with_its_difficult_flags(tmp_path):
    folder, flags = devkit(tmp_path)
    truth = voc.ground_truth(folder, "test")
    assert truth.ids[:3] == ("000001", "000004", "000007") and len(truth.ids) == 12
    assert truth.labels.dtype == np.int8 and np.array_equal(truth.labels, flags)
    assert {0, 1, -1} <= set(np.unique(truth.labels))  # difficult-only images are kept apart from absent ones


def test_a_hand_written_class_file(tmp_path):
    folder, _ = devkit(tmp_path, images=3)
    (folder / "ImageSets" / "Main" / "cat_test.txt").write_text("000001 -1\n000004  0\n\n000007  1\n")
    truth = voc.ground_truth(folder, "test")
    assert list(truth.labels[:, voc.CLASSES.index("cat")]) == [-1, 0, 1]


@pytest.mark.parametrize("where", ["", "VOCdevkit", "VOCdevkit/VOC2007"])
def test_the_devkit_is_found_above_or_at_its_year_folder(tmp_path, where):
    folder, _ = devkit(tmp_path)
    assert voc.year_folder(tmp_path / where) == folder


def test_bad_devkits_fail_in_one_line_naming_the_file(tmp_path):
    with pytest.raises(PipelineError, match=r"holds no Pascal VOC devkit .* VOCtest_06-Nov-2007.tar"):
        voc.year_folder(tmp_path)
    folder, _ = devkit(tmp_path)
    main = folder / "ImageSets" / "Main"
    (main / "dog_test.txt").write_text("000001 2\n")
    with pytest.raises(PipelineError, match=r"dog_test.txt:1: expected `<image id> <1\|-1\|0>`, found '000001 2'"):
        voc.ground_truth(folder, "test")
    (main / "dog_test.txt").write_text("000001 1\n")
    with pytest.raises(PipelineError, match="dog_test.txt lists other images than aeroplane_test.txt"):
        voc.ground_truth(folder, "test")
    (main / "dog_test.txt").unlink()
    with pytest.raises(PipelineError, match="dog_test.txt is missing: .* class dog for split 'test'"):
        voc.ground_truth(folder, "test")


def voc_spec(root: str, cache: Path | None = None, **extra) -> datasets.DatasetSpec:
    return datasets.DatasetSpec.from_cfg({"name": "voc2007_multilabel", "task": "multilabel_classification",
                                          "format": "voc", "root": root, "split": "test", "main_metric": "map_11point",
                                          **extra}, str(cache) if cache else None)


def test_describe_and_read_a_local_devkit(tmp_path):
    devkit(tmp_path)
    spec = voc_spec(str(tmp_path))
    info = datasets.describe(spec)
    assert info.classnames == list(voc.CLASSES) and info.fingerprint["content"]
    labels, batches = reading.multilabel_batches(spec, lambda image: np.asarray(image, dtype=np.float32)[:2, :2], 5, 0)
    rows = [int(i) for batch in batches for i in batch.fields["index"]]
    assert rows == list(range(12)) and labels.shape == (12, 20)
    (tmp_path / "VOCdevkit" / voc.YEAR / "JPEGImages" / "000001.jpg").write_bytes(b"not a jpeg")
    assert datasets.describe(spec).fingerprint != info.fingerprint  # an image's size is part of the content key


def test_task_and_format_go_together():
    from pipeline import tasks

    with pytest.raises(PipelineError, match="dataset x: task multilabel_classification reads formats voc, not wds "
                                            r"\(format wds is read by captioning, zeroshot_classification, "
                                            r"zeroshot_retrieval\)"):
        tasks.check(datasets.DatasetSpec.from_cfg({"name": "x", "task": "multilabel_classification", "root": "/x",
                                                   "split": "test", "main_metric": "map_11point"}))


def archive_of(folder: Path, extra: tarfile.TarInfo | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(folder, arcname="VOCdevkit")
        if extra is not None:
            tar.addfile(extra, io.BytesIO(b"x"))
    return buffer.getvalue()


def test_the_test_archive_is_fetched_once_checked_and_unpacked(tmp_path):
    devkit(tmp_path / "made")
    served = tmp_path / "served"
    served.mkdir()
    payload = archive_of(tmp_path / "made" / "VOCdevkit")
    (served / "VOCtest.tar").write_bytes(payload)
    md5 = hashlib.md5(payload).hexdigest()
    cache = tmp_path / "cache"
    with FakeHub({"pascal/voc": served}) as hub:
        url = f"{hub.url.replace('127.0.0.1', 'localhost')}/plain/pascal/voc/VOCtest.tar"
        with pytest.raises(PipelineError, match=r"is not the expected archive \(its MD5 differs from dataset.archive_md5=0000\)"):
            annotated.voc_folder(voc_spec(url, archive_md5="0000", cache=cache), cache)
        assert not list(cache.rglob("VOC2007"))  # nothing half-checked is left to be read later
        info = datasets.describe(voc_spec(url, archive_md5=md5, cache=cache))
        assert len(hub.requests) == 1  # keyed by address and checksum: describing fetches nothing
        labels, _ = reading.multilabel_batches(voc_spec(url, archive_md5=md5, cache=cache), lambda image: 0, 4, 0)
        asked = len(hub.requests)
    assert info.fingerprint["root"] == url and info.fingerprint["md5"] == md5
    again = datasets.describe(voc_spec(url, archive_md5=md5, cache=cache))
    assert again.fingerprint == info.fingerprint and asked == 2 and labels.shape == (12, 20)
    assert len(voc.ground_truth(annotated.voc_folder(voc_spec(url, cache=cache), cache), "test").ids) == 12


def test_an_archive_reaching_outside_its_folder_is_refused(tmp_path):
    devkit(tmp_path / "made")
    served = tmp_path / "served"
    served.mkdir()
    escape = tarfile.TarInfo("../../escaped.txt")
    escape.size = 1
    (served / "VOCtest.tar").write_bytes(archive_of(tmp_path / "made" / "VOCdevkit", escape))
    with FakeHub({"pascal/voc": served}) as hub:
        url = f"{hub.url.replace('127.0.0.1', 'localhost')}/plain/pascal/voc/VOCtest.tar"
        with pytest.raises(PipelineError, match="cannot be unpacked"):
            datasets.describe(voc_spec(url, cache=tmp_path / "cache"))
    assert not list(tmp_path.rglob("escaped.txt")) and not list((tmp_path / "cache").rglob("unpacked"))


def test_a_missing_image_read_in_a_worker_process_is_one_line(tmp_path, tiny_checkpoint):
    from pipeline.jobs.scoring import run_job
    from tests.conftest import compose_config

    devkit(tmp_path / "mirror")
    (tmp_path / "mirror" / "VOCdevkit" / voc.YEAR / "JPEGImages" / "000004.jpg").unlink()
    with pytest.raises(PipelineError) as failure:
        run_job(compose_config("dataset=voc2007_multilabel", f"data_root={tmp_path / 'mirror'}", "num_workers=2",
                               f"model.pretrained={tiny_checkpoint}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                               f"tracking.artifact_location={tmp_path}/artifacts"))
    message = str(failure.value)
    assert "\n" not in message and "Traceback" not in message and "000004.jpg cannot be read" in message
