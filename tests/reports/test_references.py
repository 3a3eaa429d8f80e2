"""The bundled published tables: each file is the one its manifest names (checksum, cell count), the transcriptions
equal the seed documents cell by cell, and every published model and dataset maps to what this project runs."""
from __future__ import annotations

import hashlib

import open_clip
import pandas as pd
import pytest
from omegaconf import OmegaConf

from pipeline.data import catalog
from pipeline.errors import PipelineError
from pipeline.reports import references
from tests import seeds
from tests.conftest import CONF


@pytest.mark.parametrize("name", sorted(references.manifest()))
def test_every_bundled_file_is_the_one_its_manifest_records(name):
    recorded = references.manifest()[name]
    path = references.PUBLISHED / name
    assert hashlib.sha256(path.read_bytes()).hexdigest() == recorded["sha256"]
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert (len(table), len(table.columns), int((table != "").to_numpy().sum())) == \
        (recorded["rows"], recorded["columns"], recorded["cells"])


def test_every_reference_parses_into_cells_with_a_metric_and_a_value():
    for name, reference in references.REFERENCES.items():
        cells = references.published_cells(name)
        assert not cells.empty and set(cells["reference"]) == {name}
        assert cells["published"].between(-1, 1).all() and cells["rounding"].ge(0).all()
        assert not cells.duplicated(["model", "weights", "dataset", "language", "metric"]).any()
        assert all(file in references.manifest() for file in reference.files)
    # open_clip: 38 main metrics, 12 recalls and 7 WinoGAViL scores (jaccard_score_10-12 is also a main metric) per
    # model; its rows `RN50`, `RN101`, `ViT-B-32` with `openai` repeat their `-quickgelu` twins' values exactly.
    table = references.read_csv("openclip_results.csv").set_index(["name", "pretrained"])
    for name in ("RN50", "RN101", "ViT-B-32"):
        assert table.loc[(name, "openai")].equals(table.loc[(f"{name}-quickgelu", "openai")])
    assert len(references.published_cells("openclip")) == (121 - 3) * (38 + 12 + 7 - 1)
    assert len(references.published_cells("clip_paper")) == 9 * 28  # 27 datasets, VOC2007 listed twice


@seeds.needs(seeds.BLOG, "the bundled blog tables cell by cell")
def test_the_blog_tables_are_the_blogs():
    for number, table in seeds.blog_tables().items():
        file = [f for f in references.BLOG_TABLES if f.startswith(f"blog_table{number}_")][0]
        assert references.read_csv(file).equals(table.astype(str)), file


@seeds.needs(seeds.CLIP_PAPER, "the bundled CLIP paper's Tables 9, 10 and 11 cell by cell")
def test_the_papers_tables_are_the_papers():
    for number, file in ((11, "clip_paper_table11_zeroshot.csv"), (10, "clip_paper_table10_linearprobe.csv")):
        text = " ".join(seeds.clip_paper_table_text(number).split())
        for _, row in references.read_csv(file).iterrows():
            values = " ".join(row[column] for column in references.PAPER_DATASETS)
            assert f" {values} " in f" {text} ", f"Table {number}: {row['model']}'s row is not the paper's"
    table9 = references.read_csv("clip_paper_table9_datasets.csv")
    assert table9.astype(str).equals(seeds.clip_paper_table9().astype(str))
    assert list(table9["dataset"]) == references.TABLE9_NAMES


def test_open_clips_tables_agree_with_each_other():
    results = references.read_csv("openclip_results.csv").set_index(["name", "pretrained"])
    classification = references.read_csv("openclip_classification_results.csv").set_index(["name", "pretrained"])
    shared = [c for c in classification.columns if c in results.columns and c not in ("params (M)", "FLOPs (B)")]
    assert len(shared) == 35 and classification[shared].equals(results.loc[classification.index, shared])
    retrieval = references.read_csv("openclip_retrieval_results.csv").set_index(["name", "pretrained"])
    flickr = (retrieval["Flickr image retr. R@1"].astype(float) + retrieval["Flickr text retr. R@1"].astype(float)) / 2
    assert (flickr - results.loc[retrieval.index, "Flickr"].astype(float)).abs().max() <= 1e-4  # mean_recall@1


def test_every_open_clip_row_maps_to_a_pair_open_clip_lists_and_a_model_config():
    listed = set(open_clip.list_pretrained())
    for _, row in references.read_csv("openclip_results.csv").iterrows():
        arch = references.arch_of(row["name"], row["pretrained"])
        assert (arch, row["pretrained"]) in listed, (row["name"], row["pretrained"])
        assert arch.endswith("-quickgelu") == (row["pretrained"] == "openai" or row["name"].endswith("-quickgelu"))
        config = OmegaConf.load(CONF / "model" / "openclip" / f"{row['name']}__{row['pretrained']}.yaml")
        assert (config.arch, config.pretrained) == (arch, row["pretrained"])
    # weights trained with QuickGELU whose row ran the plain architecture stay plain
    assert references.arch_of("ViT-B-32", "laion400m_e32") == "ViT-B-32"
    assert references.arch_of("ViT-L-14-336", "openai") == "ViT-L-14-336-quickgelu"


def test_the_model_sets_sweep_the_references_models():
    blog = OmegaConf.load(CONF / "model_set" / "blog13.yaml").hydra.sweeper.params.model.split(",")
    runs = {(m.arch, m.pretrained) for m in (OmegaConf.load(CONF / "model" / f"{name}.yaml") for name in blog)}
    cells = references.published_cells("blog")
    assert runs == set(zip(cells["model"], cells["weights"]))
    paper = OmegaConf.load(CONF / "model_set" / "clip_paper9.yaml").hydra.sweeper.params.model.split(",")
    runs = {(m.arch, m.pretrained) for m in (OmegaConf.load(CONF / "model" / f"{name}.yaml") for name in paper)}
    assert runs == set(zip(*(references.published_cells("clip_paper")[c] for c in ("model", "weights"))))
    openclip = OmegaConf.load(CONF / "model_set" / "openclip121.yaml").hydra.sweeper.params.model.split(",")
    assert len(openclip) == 121 and all((CONF / "model" / f"{name}.yaml").is_file() for name in openclip)


def test_published_datasets_are_the_catalogs_and_metrics_compare_only_like_with_like():
    for name in references.REFERENCES:
        cells = references.published_cells(name)
        comparable = cells[cells["comparable"] & ~cells["dataset"].isin(references.UNAVAILABLE)]
        assert all(catalog.lookup(d) is not None for d in comparable["dataset"])
        assert all(m in references.computed_metrics(d) for d, m in zip(comparable["dataset"], comparable["metric"]))
    paper = references.published_cells("clip_paper").set_index(["model", "dataset"])
    voc = paper.loc[("RN50-quickgelu", "voc2007")]
    assert voc["metric"] == "map_11point" and voc["published"] == pytest.approx(0.821) and not voc["comparable"]
    assert "single-label" in voc["note"]
    multilabel = paper.loc[("RN50-quickgelu", "voc2007_multilabel")]  # the paper's mAP, as the paper scored it
    assert multilabel["metric"] == "map_11point" and multilabel["comparable"]
    # the datasets no copy here gives: nothing here computes them, so a result file that has the metric is compared
    unswept = references.published_cells("clip_paper")
    unswept = unswept[unswept["dataset"].isin(references.UNAVAILABLE)]
    assert set(unswept["dataset"]) == set(references.UNAVAILABLE) and unswept["comparable"].all()
    assert not any(catalog.lookup(d) for d in references.UNAVAILABLE)
    benchmark = references.published_cells("clip_benchmark")  # its plain mAP is clip_benchmark's own definition
    assert benchmark[benchmark["metric"] == "mean_average_precision"]["comparable"].all()


def test_an_unknown_reference_lists_the_known_ones():
    with pytest.raises(PipelineError, match="unknown reference 'openclip38'; use one of openclip, clip_benchmark, "
                                            "blog, openclip_multilingual, clip_paper, clip_paper_probe, all"):
        references.chosen("openclip38")


def test_a_reference_file_that_fails_to_parse_is_named(tmp_path, monkeypatch):
    (tmp_path / "openclip_results.csv").write_bytes(b"\x00\xff\xfe not a csv \x00")
    monkeypatch.setattr(references, "PUBLISHED", tmp_path)
    with pytest.raises(PipelineError, match=r"the bundled reference .*openclip_results.csv cannot be read"):
        references.openclip_cells()
