"""Datasets described by their own annotation files: what keys them, and what describing them reads."""
from pathlib import Path

from pipeline.data import annotated, datasets
from pipeline.data.readers import voc
from tests import synthetic
from tests.loopback import free_port


def spec(**fields) -> datasets.DatasetSpec:
    return datasets.DatasetSpec.from_cfg({"split": "test", **fields})


def test_a_voc_archive_keyed_by_address_and_checksum_is_described_without_the_network(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/VOCtest_06-Nov-2007.tar"  # nothing listens there
    found = annotated.describe(spec(name="voc2007_multilabel", task="multilabel_classification", format="voc",
                                    root=url, main_metric="map_11point", archive_md5="b6e9"), tmp_path)
    assert found.content["root"] == url and found.content["md5"] == "b6e9" and found.classnames == list(voc.CLASSES)
    assert found.templates == ["a photo of a {c}."]  # clip_benchmark's, the paper's
    assert not list(tmp_path.iterdir())


def test_a_multilingual_mirror_keys_its_images_apart_from_each_languages_captions(tmp_path):
    layout = {"index": "index.txt", "captions": "{language}.txt", "languages": ["en", "it"]}
    root = synthetic.write_lines_retrieval(tmp_path / "set", layout, ["en", "it"])
    english, italian = (annotated.describe(datasets.DatasetSpec.from_cfg(
        {"name": "multilingual/x", "task": "zeroshot_retrieval", "format": "lines", "root": str(root), "split": "test",
         "main_metric": "mean_recall@1", "lines": layout}, language=language), tmp_path) for language in ("en", "it"))
    assert english.images == italian.images and english.content != italian.content
    assert english.images["images"] == str(Path(root / "images").resolve())
    assert annotated.own_languages(datasets.DatasetSpec.from_cfg(
        {"name": "multilingual/x", "task": "zeroshot_retrieval", "format": "lines", "root": str(root), "split": "test",
         "main_metric": "mean_recall@1", "lines": layout})) == ("en", "it")
