"""A dataset's values: its config parsed and checked (`DatasetSpec.from_cfg`), with no file read."""
from __future__ import annotations

import pytest

from pipeline.data.specs import DatasetInfo, DatasetSpec
from pipeline.errors import PipelineError

BASE = {"name": "birds", "task": "zeroshot_classification", "root": "/data/birds", "split": "test", "main_metric": "acc1"}


def test_a_config_becomes_a_spec_with_an_absolute_local_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = DatasetSpec.from_cfg({**BASE, "root": "birds"})
    assert spec.root == str(tmp_path / "birds") and spec.root_kind == "local" and spec.format == "wds"
    assert DatasetSpec.from_cfg({**BASE, "root": "https://example.org/birds"}).is_remote


@pytest.mark.parametrize("change, said", [
    ({"format": "csv"}, "dataset.format='csv' is not one of"),
    ({"split": "../test"}, "dataset.split='../test' is not a split name"),
    ({"skip_corrupt": True, "format": "hf"}, "dataset.skip_corrupt=true applies to webdatasets"),
])
def test_a_malformed_config_is_one_line(change, said):
    with pytest.raises(PipelineError, match=said):
        DatasetSpec.from_cfg({**BASE, **change})


def test_the_images_identity_is_their_own_where_datasets_share_them():
    spec = DatasetSpec.from_cfg(BASE)
    assert DatasetInfo(spec, [], [], {"content": "a"}).image_identity == {"content": "a"}
    assert DatasetInfo(spec, [], [], {"content": "a"}, {"images": "coco"}).image_identity == {"images": "coco"}
