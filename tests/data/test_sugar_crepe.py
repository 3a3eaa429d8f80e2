"""SugarCrepe's and Winoground's readers: entries in the annotation's order, COCO images from a folder or from
val2017.zip (in worker processes too), a URL root fetched once without a shell, the seven subsets sharing one
image identity, Winoground's rows as instances, and one-line errors."""
import json
import os
import shutil
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import tasks
from pipeline.data import datasets, reading
from pipeline.data.readers import hf, sugar_crepe
from pipeline.errors import PipelineError
from pipeline.offline import compositional
from tests.loopback import FakeHub


def to_tensor(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.resize((4, 4)), dtype=np.float32))


def spec(name: str, root: str, fmt: str = "sugar_crepe", cache: Path | None = None, **extra) -> datasets.DatasetSpec:
    return datasets.DatasetSpec.from_cfg({"name": name, "task": "image_caption_selection", "format": fmt, "root": root,
                                          "split": "test", "main_metric": "acc", **extra},
                                         str(cache) if cache else None)


def test_entries_follow_the_annotation_file_and_images_come_from_the_folder(tmp_path):
    root = compositional.write_sugar_crepe(tmp_path / "sugar_crepe")
    annotations = json.loads((root / "swap_att.json").read_text())
    found = sugar_crepe.entries(root / "swap_att.json")
    assert [e.caption for e in found] == [a["caption"] for a in annotations.values()]
    captions, shown = reading.selection_instances(spec("sugar_crepe/swap_att", str(root)))
    assert captions[:2] == [found[0].caption, found[0].negative] and shown[0] == [found[0].filename]
    names, batches = reading.selection_images(spec("sugar_crepe/swap_att", str(root)), to_tensor, 5, 0)
    rows = [int(i) for batch in batches for i in batch.fields["index"]]
    assert rows == list(range(len(names))) and set(e.filename for e in found) <= set(names)


def test_the_seven_subsets_share_their_images_identity_and_differ_in_content(tmp_path):
    root = str(compositional.write_sugar_crepe(tmp_path / "sugar_crepe"))
    first, second = (datasets.describe(spec(f"sugar_crepe/{s}", root)) for s in ("add_att", "swap_obj"))
    assert first.image_identity == second.image_identity and first.fingerprint != second.fingerprint


def test_images_are_read_from_cocos_zip_in_worker_processes(tmp_path):
    root = compositional.write_sugar_crepe(tmp_path / "sugar_crepe")
    with zipfile.ZipFile(tmp_path / "val2017.zip", "w") as archive:
        for image in (root / "val2017").iterdir():
            archive.write(image, f"val2017/{image.name}")
    shutil.rmtree(root / "val2017")
    dataset = spec("sugar_crepe/add_obj", str(root), images=str(tmp_path / "val2017.zip"))
    names, batches = reading.selection_images(dataset, to_tensor, 4, 2)
    assert sum(len(batch.images) for batch in batches) == len(names) == 24


def test_a_url_root_is_fetched_once_then_read_offline(tmp_path):
    root = compositional.write_sugar_crepe(tmp_path / "served" / "sugar")
    shutil.make_archive(str(tmp_path / "served" / "coco" / "val2017"), "zip", root, "val2017")
    with FakeHub({"org/sugar": root, "org/coco": tmp_path / "served" / "coco"}) as hub:
        base = hub.url.replace("127.0.0.1", "localhost")
        online = spec("sugar_crepe/replace_rel", f"{base}/plain/org/sugar", cache=tmp_path / "cache",
                      images=f"{base}/plain/org/coco/val2017.zip")
        info = datasets.describe(online)
        names, batches = reading.selection_images(online, to_tensor, 8, 0)
        assert sum(len(batch.images) for batch in batches) == len(names)
        asked = len(hub.requests)
    assert asked == 8  # seven annotation files and the zip, once each
    assert datasets.describe(online).fingerprint == info.fingerprint  # the server is gone: read from the cache
    assert info.image_identity["images"].endswith("/val2017.zip")


def test_bad_sugar_crepe_inputs_fail_in_one_line(tmp_path):
    root = compositional.write_sugar_crepe(tmp_path / "sugar_crepe")
    with pytest.raises(PipelineError, match="SugarCrepe has no subset 'swap_rel'; use one of add_att"):
        datasets.describe(spec("sugar_crepe/swap_rel", str(root)))
    (root / "add_obj.json").unlink()
    with pytest.raises(PipelineError, match=r"add_obj.json is missing: SugarCrepe's annotations are "
                                            r"https://raw.githubusercontent.com/RAIVNLab/sugar-crepe/main/data/add_obj.json"):
        datasets.describe(spec("sugar_crepe/add_att", str(root)))
    (root / "add_obj.json").write_text('{"1": {"filename": "x.jpg"}}')
    with pytest.raises(PipelineError, match=r"add_obj.json is not a SugarCrepe annotation file \(an entry lacks 'caption'\)"):
        datasets.describe(spec("sugar_crepe/add_att", str(root)))
    with pytest.raises(PipelineError, match="task image_caption_selection reads formats sugar_crepe, hf, not wds"):
        tasks.check(spec("sugar_crepe/add_att", str(root), fmt="wds"))


def test_winoground_rows_become_instances_of_two_images_and_two_captions(tmp_path):
    root = compositional.write_winoground(tmp_path / "winoground", examples=5)
    rows = hf.load_local(root, "test", "winoground")
    captions, shown = hf.winoground_instances(rows)
    assert len(captions) == 10 and shown[2] == ["2_0", "2_1"] and captions[4] == rows[2]["caption_0"]
    names, batches = reading.selection_images(spec("winoground", str(root), fmt="hf"), to_tensor, 3, 0)
    assert names[:2] == ["0_0", "0_1"] and sum(len(b.images) for b in batches) == 10


def test_gated_winoground_says_what_to_do(tmp_path, monkeypatch, tiny_checkpoint):
    from pipeline.jobs.scoring import run_job
    from tests.conftest import compose_config
    from tests.data.test_remote import point_huggingface_hub_at

    root = compositional.write_winoground(tmp_path / "winoground", examples=2)
    with FakeHub({"facebook/winoground": root}, gated=True) as hub:
        point_huggingface_hub_at(hub.url, monkeypatch)
        cfg = compose_config("dataset=winoground", f"model.pretrained={tiny_checkpoint}", "num_workers=0",
                             f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"data_cache={tmp_path}/data_cache",
                             f"tracking.artifact_location={tmp_path}/artifacts")
        assert cfg.dataset.root == "facebook/winoground"
        with pytest.raises(PipelineError, match=r"dataset facebook/winoground is gated: accept its conditions at "
                                                r".*/datasets/facebook/winoground and set HF_TOKEN"):
            run_job(cfg)


@pytest.fixture(autouse=True)
def no_shell(tmp_path, monkeypatch):
    """clip_benchmark fetches SugarCrepe with wget and unzip through a shell: here neither may run."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in ("wget", "unzip", "curl"):
        path = folder / tool
        path.write_text(f"#!/bin/sh\ntouch {tmp_path}/SHELL_RAN\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    yield
    assert not (tmp_path / "SHELL_RAN").exists()
