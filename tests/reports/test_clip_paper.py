"""Every dataset name CLIP_benchmark knows reaches the CLIP paper's column of that dataset, and no other: a result file
under it fills that column of Tables 11 and 10 and is set beside the paper's cell in the reproduction report."""
from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from pipeline.data import catalog
from pipeline.reports import clip_paper, paper_tables, references, reproduction, results
from pipeline.stages.heads import LINEAR_PROBE, ZEROSHOT

COMPARED = re.compile(r"dataset_name == [\"']([^\"']+)[\"']")


def clip_benchmark_names() -> set[str]:
    """What `clip_benchmark eval --dataset` accepts, from its builder: the names `build_dataset` and its VTAB reader
    compare against, every dataset collection, the TFDS sets this project reads (its `tfds/` reader takes any), and
    each of them as CLIP_benchmark's webdataset (`wds/`)."""
    from clip_benchmark.datasets import builder

    own = set(COMPARED.findall(inspect.getsource(builder.build_dataset)))
    vtab_source = inspect.getsource(builder.build_vtab_dataset)
    vtab = set(COMPARED.findall(vtab_source)) | {name for group in re.findall(r"dataset_name in \(([^)]*)\)",
                                                                             vtab_source)
                                                 for name in re.findall(r"\"([^\"]+)\"", group)}
    collections = {name for names in builder.dataset_collection.values() for name in names}
    tfds = {key for key in catalog.entries() if key.startswith("tfds/")}
    names = own | {f"vtab/{name}" for name in vtab} | collections | tfds
    assert {"imagenet1k", "vtab/cifar10", "vtab/cifar100", "dtd", "vtab/clevr_count_all"} <= names  # parsed
    return names - {"dummy"} | {f"wds/{name}" for name in names - {"dummy"}}


def base(name: str) -> str:
    """One dataset's name across CLIP_benchmark's readers: without the webdataset, VTAB or TFDS prefix."""
    name = name.removeprefix("wds/")
    return name.split("/", 1)[1] if name.startswith(("vtab/", "tfds/")) else name


def expected_column(name: str) -> str | None:
    """The paper's column a name should fill: the one whose dataset goes by the same base name (ImageNet's
    `imagenet1k-unverified` is its validation images read from a folder unchecked); None for any other dataset."""
    if base(name) == "imagenet1k-unverified":
        return "ImageNet"
    found = [column for column, (key, _) in clip_paper.PAPER_DATASETS.items() if base(key) == base(name)]
    return found[0] if found else None


def result_file(folder: Path, name: str, task: str) -> Path:
    """A result as `clip_benchmark eval` writes it, holding every metric of Table 9 (a probe's under `lp_`)."""
    metrics = {"acc1": 0.5, "acc5": 0.75, "mean_per_class_recall": 0.5, "map_11point": 0.5, "roc_auc": 0.5}
    if task == "linear_probe":
        metrics = {**{f"lp_{k}": v for k, v in metrics.items()}, "fewshot_k": -1, "seed": 0, "epochs": 10,
                   "weight_decay": 0.001, "normalized": True}
    path = folder / f"{name.replace('/', '_')}_{task}.json"
    path.write_text(json.dumps({"dataset": name, "model": "ViT-B-32", "pretrained": "openai", "task": task,
                                "metrics": metrics, "language": "en"}))
    return path


@pytest.mark.parametrize("task, head, reference", [("zeroshot_classification", ZEROSHOT, "clip_paper"),
                                                   ("linear_probe", LINEAR_PROBE, "clip_paper_probe")])
def test_every_clip_benchmark_name_fills_its_papers_column(tmp_path, task, head, reference):
    names = sorted(clip_benchmark_names())
    chosen = references.chosen(reference)
    published = references.read_csv(chosen[0].files[0]).set_index("model").loc["ViT-B/32"]
    reached = set()
    for name in names:
        record = results.read_clip_benchmark_json(result_file(tmp_path, name, task))
        table = paper_tables.paper_table([record], head)
        filled = [] if table.empty else [c for c in clip_paper.PAPER_DATASETS if table.loc[0, c] != ""]
        expected = expected_column(name)
        assert filled == ([expected] if expected else []), name
        rows = reproduction.reproduce([record], chosen).rows
        compared = rows[rows["verdict"] != reproduction.NOT_COMPARABLE]
        assert len(compared) == (1 if expected else 0), name
        if expected:
            assert compared["published"].item() == pytest.approx(float(published[expected]) / 100), name
            reached.add(expected)
        # single-label VOC2007 is shown beside the paper's multi-label mAP as another task, never compared
        assert len(rows) - len(compared) == (base(name) == "voc2007"), name
    unswept = {column for column, (key, _) in clip_paper.PAPER_DATASETS.items() if key in clip_paper.UNAVAILABLE}
    assert reached == set(clip_paper.PAPER_DATASETS) - unswept  # CLIP_benchmark has every other dataset of the paper


def test_other_names_are_names_of_the_papers_datasets():
    keys = {key for key, _ in clip_paper.PAPER_DATASETS.values()}
    assert set(clip_paper.PAPER_COPIES.values()) <= keys and not set(clip_paper.PAPER_COPIES) & keys
    assert clip_paper.paper_dataset("wds/vtab/cifar10") == "cifar10"
    assert clip_paper.paper_dataset("voc2007") == "voc2007"  # single-label: another task than the paper's VOC2007
    assert {expected_column(name) for name in clip_paper.PAPER_COPIES} <= set(clip_paper.PAPER_DATASETS)


def test_a_probes_cause_names_both_protocols_and_what_its_file_records():
    said = clip_paper.probe_cause({"epochs": 10.0, "weight_decay": 0.0001})
    assert said == "probe: CLIP_benchmark's AdamW (epochs 10, weight decay 0.0001), not the paper's L-BFGS logistic " \
                   "regression"
    assert clip_paper.probe_cause() == "probe: CLIP_benchmark's AdamW, not the paper's L-BFGS logistic regression"
    table9 = pd.read_csv(references.PUBLISHED / "clip_paper_table9_datasets.csv")
    assert list(table9["dataset"]) == clip_paper.TABLE9_NAMES
