"""Where each catalog dataset lives: its public copy's address, or the same layout under a local mirror."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.data import sources


def test_public_copies_are_the_references_addresses():
    assert sources.dataset_root(None, "datacomp", "vtab/caltech101") == \
        "https://huggingface.co/datasets/djghosh/wds_vtab-caltech101_test/tree/main"
    assert sources.dataset_root(None, "datacomp", "fairness/geode") == \
        "https://huggingface.co/datasets/djghosh/wds_geode_test/tree/main"  # DataComp drops `fairness/`
    assert sources.dataset_root(None, "clip_benchmark", "vtab/pets") == \
        "https://huggingface.co/datasets/clip-benchmark/wds_vtab-pets/tree/main"
    assert sources.dataset_root(None, "nlphuji", "retrieval/flickr_1k_test_image_text_retrieval") == \
        "nlphuji/flickr_1k_test_image_text_retrieval"
    assert sources.dataset_root(None, "voc", "voc2007_multilabel").endswith("/voc2007/VOCtest_06-Nov-2007.tar")


def test_a_mirror_keeps_the_copies_folder_names(tmp_path: Path):
    assert sources.dataset_root(str(tmp_path), "datacomp", "wilds/fmow") == str(tmp_path / "wds_wilds-fmow_test")
    assert sources.dataset_root(str(tmp_path), "clip_benchmark", "cars") == str(tmp_path / "wds_cars")
    assert sources.dataset_root(str(tmp_path), "nlphuji", "misc/winogavil") == str(tmp_path / "winogavil")
    assert sources.dataset_root(str(tmp_path), "tfds", "tfds/cassava") == str(tmp_path / "tfds")
    assert sources.dataset_root(str(tmp_path), "voc", "voc2007_multilabel") == str(tmp_path / "VOCdevkit")


def test_a_missing_mirror_folder_says_where_the_public_copy_is(tmp_path: Path):
    """One dataset of a suite missing from a mirror stops its job in one line naming the folder and the copy."""
    from pipeline.data import datasets
    from tests.conftest import compose_config

    cfg = compose_config("suite=clip_paper", "dataset=vtab/pets", f"data_root={tmp_path}")
    with pytest.raises(Exception) as failure:
        datasets.describe(datasets.DatasetSpec.from_cfg(cfg.dataset))
    assert str(failure.value) == (
        f"dataset root {tmp_path / 'wds_vtab-pets_test'} does not exist. Set dataset.root (or data_root for the "
        f"catalog) to a directory in the dataset's layout (copy "
        f"https://huggingface.co/datasets/djghosh/wds_vtab-pets_test/tree/main there, or drop data_root to read that "
        f"copy).")
    assert sources.public_copy("local", "shapes") is None and sources.public_copy("tfds", "tfds/dtd") is None


def test_test_only_copies_are_told_apart_and_unknown_sources_refused():
    assert sources.holds_test_only("datacomp", "/data/anything")
    assert sources.holds_test_only("local", "/mirror/wds_vtab-pets_test")
    assert not sources.holds_test_only("clip_benchmark", "/mirror/wds_vtab-pets")
    with pytest.raises(ValueError, match="unknown dataset source 'imagenet_org'"):
        sources.dataset_root(None, "imagenet_org", "imagenet1k")
