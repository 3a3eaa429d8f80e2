"""The CLIP paper's Tables 11 and 10: its rows and columns in its order, Table 9's metric per dataset, percent with
one decimal, missing datasets empty; the suite that feeds them; and a sweep of the tiny model over stand-ins of
every dataset of the suite that gives the table."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline.data import catalog
from pipeline.errors import PipelineError
from pipeline.reports import layouts, paper_tables, references, reproduction, results
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


FILES = Path(__file__).parents[1] / "fixtures" / "clip_benchmark_results"  # CLIP_benchmark's own output files


def in_percent(path: Path, metric: str) -> str:
    return f"{100 * json.loads(path.read_text())['metrics'][metric]:.1f}"


def test_a_folder_of_clip_benchmark_files_gives_both_tables_and_says_whose_probe(tmp_path):
    records = results.from_directory(FILES)  # zero-shot and probe files, datasets under their wds/ names
    written = layouts.write_layout("clip_paper", layouts.Request(records, "main", tmp_path))
    assert [f.name for f in written.files] == ["clip_paper_table11.csv", "clip_paper_table11.md",
                                               "clip_paper_table10.csv", "clip_paper_table10.md"]
    table11, table10 = (pd.read_csv(tmp_path / f"clip_paper_table{n}.csv", dtype=str, keep_default_na=False)
                        .set_index("model") for n in (11, 10))
    zero_shot = FILES / "vtab_cifar10_openai_ViT-B-32_en_zeroshot_classification.json"
    assert table11.loc["ViT-B/32", "CIFAR10"] == in_percent(zero_shot, "acc1")  # "dataset": "wds/vtab/cifar10"
    assert table11.loc["ViT-B-32 laion2b_s34b_b79k", "CIFAR10"] != ""
    probe = FILES / "vtab_cifar10_openai_ViT-B-32_en_linear_probe.json"  # the full probe, not its 4-shot beside it
    assert table10.loc["ViT-B/32", "CIFAR10"] == in_percent(probe, "lp_acc1") and list(table10.index) == ["ViT-B/32"]
    assert table10.loc["ViT-B/32", "DTD"] == in_percent(FILES / "vtab_dtd_openai_ViT-B-32_en_linear_probe.json",
                                                        "lp_acc1")
    note10 = (tmp_path / "clip_paper_table10.md").read_text()
    assert "CLIP_benchmark's `--task linear_probe` result files (in the rows of ViT-B/32) are its own probe, a " \
           "linear layer trained with AdamW" in note10
    assert "The paper's probe is L-BFGS logistic regression" in note10
    assert "Left out: 1 probe result(s) fitted on k examples per class" in note10
    assert "AdamW" not in (tmp_path / "clip_paper_table11.md").read_text()
    ours = [record("RN50", "cifar10", 0.88, head=LINEAR_PROBE, k_shot="all", seed="0", prompts="*")]
    assert "AdamW" not in paper_tables.note(ours, LINEAR_PROBE)  # this project's probe is the paper's


def test_a_cell_takes_the_copy_under_the_papers_name_before_another():
    own, vtab = record("RN50", "cifar10", 0.7), record("RN50", "vtab/cifar10", 0.9)
    assert paper_tables.paper_table([vtab, own], ZEROSHOT).loc[0, "CIFAR10"] == "70.0"
    assert paper_tables.paper_table([vtab], ZEROSHOT).loc[0, "CIFAR10"] == "90.0"
    with pytest.raises(PipelineError, match="RN50 on DTD has results for several .* one copy of the data"):
        paper_tables.paper_table([record("RN50", "dtd", 0.4), record("RN50", "tfds/dtd", 0.5)], ZEROSHOT)


def test_the_unswept_datasets_are_filled_said_and_compared_by_one_rule(tmp_path):
    """Birdsnap, UCF101, Kinetics700 and Hateful Memes: `suite=clip_paper` has no copy to sweep, so a result file that
    has them fills their columns, the table's note says so, and the reproduction report compares them."""
    published = references.read_csv("clip_paper_table11_zeroshot.csv").set_index("model").loc["ViT-B/32"]
    value = {column: float(published[column]) / 100 for column in ("Birdsnap", "UCF101", "HatefulMemes")}
    kinetics = float(published["Kinetics700"]) / 100  # the paper's mean of top-1 and top-5
    files = {"birdsnap": {"acc1": value["Birdsnap"]}, "ucf101": {"acc1": value["UCF101"]},
             "kinetics700": {"acc1": kinetics - 0.1, "acc5": kinetics + 0.1},
             "hateful_memes": {"roc_auc": value["HatefulMemes"]}}
    for dataset, metrics in files.items():
        (tmp_path / f"{dataset}.json").write_text(json.dumps({"dataset": dataset, "model": "ViT-B-32", "pretrained":
                                                              "openai", "task": "zeroshot_classification",
                                                              "metrics": metrics}))
    records = results.from_directory(tmp_path)
    written = layouts.write_layout("clip_paper", layouts.Request(records, "main", tmp_path / "out"))
    table = pd.read_csv(tmp_path / "out" / "clip_paper_table11.csv", dtype=str).set_index("model")
    unswept = [c for c, (key, _) in references.PAPER_DATASETS.items() if key in references.UNAVAILABLE]
    assert table.loc["ViT-B/32", unswept].tolist() == published[unswept].tolist()
    assert "these columns hold only results read from files that have them" in written.markdown
    assert "stay empty" not in written.markdown
    report = reproduction.reproduce(records, references.chosen("clip_paper"))
    assert sorted(report.rows["dataset"]) == sorted(files) and (report.rows["verdict"] == reproduction.REPRODUCED).all()
    # a file without the paper's metric leaves the cell empty and is not compared, saying what it lacks
    (tmp_path / "hateful_memes.json").write_text(json.dumps({"dataset": "hateful_memes", "model": "ViT-B-32",
                                                             "pretrained": "openai", "metrics": {"acc1": 0.6}}))
    records = results.from_directory(tmp_path)
    assert paper_tables.paper_table(records, ZEROSHOT).set_index("model").loc["ViT-B/32", "HatefulMemes"] == ""
    row = reproduction.reproduce(records, references.chosen("clip_paper")).rows.set_index("dataset").loc[
        "hateful_memes"]
    assert row["verdict"] == reproduction.NOT_COMPARABLE and row["cause"] == \
        "this result has no roc_auc: ROC AUC on Hateful Memes"


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
