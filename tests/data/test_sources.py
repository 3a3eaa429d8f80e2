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


def test_a_mirror_keeps_the_copies_folder_names(tmp_path: Path):
    assert sources.dataset_root(str(tmp_path), "datacomp", "wilds/fmow") == str(tmp_path / "wds_wilds-fmow_test")
    assert sources.dataset_root(str(tmp_path), "clip_benchmark", "cars") == str(tmp_path / "wds_cars")
    assert sources.dataset_root(str(tmp_path), "nlphuji", "misc/winogavil") == str(tmp_path / "winogavil")
    assert sources.dataset_root(str(tmp_path), "tfds", "tfds/cassava") == str(tmp_path / "tfds")


def test_test_only_copies_are_told_apart_and_unknown_sources_refused():
    assert sources.holds_test_only("datacomp", "/data/anything")
    assert sources.holds_test_only("local", "/mirror/wds_vtab-pets_test")
    assert not sources.holds_test_only("clip_benchmark", "/mirror/wds_vtab-pets")
    with pytest.raises(ValueError, match="unknown dataset source 'imagenet_org'"):
        sources.dataset_root(None, "imagenet_org", "imagenet1k")
