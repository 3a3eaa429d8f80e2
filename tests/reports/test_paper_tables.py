"""The CLIP paper's Tables 11 and 10: its rows and columns in its order, Table 9's metric per dataset, percent with
one decimal, missing datasets empty; the suite that feeds them; and a sweep of the tiny model over stand-ins of
every dataset of the suite that gives the table."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipeline.data import catalog
from pipeline.errors import PipelineError
from pipeline.reports import layouts, paper_tables, references
from pipeline.reports.results import ScoreRecord
from pipeline.stages.heads import LINEAR_PROBE, ZEROSHOT
from tests import synthetic
from tests.conftest import CONF, compose_config, run_pipeline


def record(model: str, dataset: str, value: float, pretrained: str = "openai", prompts: str = "clip_paper",
           **labels) -> ScoreRecord:
    """A result holding every metric Table 9 names at `value`."""
    metrics = {m: value for m in ("acc1", "mean_per_class_recall", "map_11point", "mean_average_precision")}
    return ScoreRecord(model, pretrained, dataset, prompts, "acc1", metrics,
                       **{"source": "datacomp", "protocol": "datacomp", **labels})


def test_the_suite_sweeps_the_papers_datasets_in_its_order_with_table_9s_metric():
    swept = catalog.suite("clip_paper")
    paper_order = [key for key, _ in references.PAPER_DATASETS.values()]
    assert list(swept) == [key for key in paper_order if key not in references.UNAVAILABLE]
    for key in swept:  # each dataset's main metric is the one Table 9 names
        assert catalog.lookup(key).main_metric == dict(references.PAPER_DATASETS.values())[key], key
    text = (CONF / "suite" / "clip_paper.yaml").read_text()
    for key, reason in references.UNAVAILABLE.items():  # the suite's file lists what it cannot sweep, and why
        assert f"#   {key}: {reason}" in text
    assert compose_config("suite=clip_paper").prompts.name == "clip_paper"  # the paper's prompts, unless one asks
    assert compose_config("suite=clip_paper", "prompts=classname").prompts.name == "classname"


def test_table_11_in_the_papers_order_and_rounding():
    records = [record("ViT-L-14-quickgelu", "food101", 0.92934), record("RN50-quickgelu", "food101", 0.8105),
               record("RN50", "voc2007_multilabel", 0.8214), record("RN50", "voc2007", 0.65),  # not a paper column
               record("ViT-B-32", "vtab/pets", 0.5, pretrained="laion2b_s34b_b79k"),
               record("RN50-quickgelu", "imagenet1k", 0.5, prompts="classname")]  # the paper's prompts win
    table = paper_tables.paper_table(records, ZEROSHOT)
    assert list(table.columns) == ["model", *references.PAPER_DATASETS]
    assert list(table["model"]) == ["RN50", "ViT-L/14", "ViT-B-32 laion2b_s34b_b79k"]
    rows = table.set_index("model")
    assert rows.loc["RN50", "Food101"] == "81.0" and rows.loc["ViT-L/14", "Food101"] == "92.9"
    assert rows.loc["RN50", "VOC2007"] == "82.1" and rows.loc["RN50", "ImageNet"] == ""
    assert rows.loc["RN50", "Birdsnap"] == "" and rows.loc["ViT-B-32 laion2b_s34b_b79k", "OxfordPets"] == "50.0"


def test_table_10_averages_the_full_probes_seeds_and_ignores_few_shot():
    probe = dict(head=LINEAR_PROBE, prompts="*")
    records = [record("RN101-quickgelu", "cifar10", 0.90, k_shot="all", seed="0", **probe),
               record("RN101-quickgelu", "cifar10", 0.92, k_shot="all", seed="1", **probe),
               record("RN101-quickgelu", "cifar10", 0.40, k_shot="4", seed="0", **probe)]
    assert paper_tables.paper_table(records, LINEAR_PROBE).set_index("model").loc["RN101", "CIFAR10"] == "91.0"
    assert paper_tables.paper_table(records, ZEROSHOT).empty


def test_one_cell_per_model_and_dataset():
    records = [record("RN50", "cifar10", 0.7), record("RN50", "cifar10", 0.7, source="clip_benchmark")]
    with pytest.raises(PipelineError, match="RN50 on CIFAR10 has results for several"):
        paper_tables.paper_table(records, ZEROSHOT)


def test_the_layout_writes_both_tables_and_says_why_columns_are_empty(tmp_path):
    records = [record("RN50", "cifar10", 0.756),
               record("RN50", "cifar10", 0.88, head=LINEAR_PROBE, k_shot="all", seed="0", prompts="*")]
    written = layouts.write_layout("clip_paper", layouts.Request(records, "main", tmp_path))
    assert [f.name for f in written.files] == ["clip_paper_table11.csv", "clip_paper_table11.md",
                                               "clip_paper_table10.csv", "clip_paper_table10.md"]
    assert pd.read_csv(tmp_path / "clip_paper_table11.csv", dtype=str).loc[0, "CIFAR10"] == "75.6"
    assert "| 75.6 " in written.markdown and "HatefulMemes: Facebook no longer distributes it" in written.markdown
    assert layouts.LAYOUTS["clip_paper"].applies(records)
    with pytest.raises(PipelineError, match="no result fits the CLIP paper's tables"):
        layouts.write_layout("clip_paper", layouts.Request([record("RN50", "shapes", 0.9)], "main", tmp_path))


def stand_ins(data_root: Path) -> Path:
    """Every dataset of the suite at its mirror path: small webdatasets of shapes, and a made-up VOC devkit."""
    entries = [catalog.lookup(key) for key in catalog.suite("clip_paper")]
    return synthetic.write_mirror(data_root, [{"name": e.key, "source": e.source, "task": e.task} for e in entries])


@pytest.mark.slow
def test_a_sweep_of_the_suite_gives_table_11(tmp_path, tiny_checkpoint):
    data_root = stand_ins(tmp_path / "data")
    done = run_pipeline(tmp_path, "-m", "suite=clip_paper", f"data_root={data_root}",
                        f"model.pretrained={tiny_checkpoint}", "num_workers=0")
    assert done.returncode == 0, done.stderr[-3000:]
    [table_file] = (tmp_path / "outputs" / "multirun").glob("*/*/clip_paper_table11.csv")
    table = pd.read_csv(table_file, dtype=str, keep_default_na=False)
    assert list(table.columns) == ["model", *references.PAPER_DATASETS] and len(table) == 1
    filled = {column for column in references.PAPER_DATASETS if table.loc[0, column] != ""}
    assert filled == {c for c, (key, _) in references.PAPER_DATASETS.items() if key not in references.UNAVAILABLE}
    assert all(len(table.loc[0, c].split(".")[1]) == 1 for c in filled)  # one decimal
    said = done.stdout + done.stderr
    assert "on voc2007_multilabel with prompts=clip_paper, protocol=datacomp: map_11point = " in said
