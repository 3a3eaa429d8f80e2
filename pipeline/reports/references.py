"""The published tables a result can be checked against, bundled in `published/` (its README gives each file's
source and what produced it), read into one long table of cells: which model (as this project runs it), which
dataset (as the catalog names it), which metric (as the score stage names it), the published value as a fraction,
half its last printed digit, and whether this project computes that metric under the same definition.

Each reference also says what produced it: the protocol (`conf/protocol/`) and the prompt sets that match its
templates, and the size and class count of its datasets where the source gives them, so a difference can be
traced to its cause.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Mapping

import pandas as pd

from pipeline import tasks
from pipeline.data import catalog
from pipeline.data.languages import ENGLISH
from pipeline.errors import PipelineError
from pipeline.reports.clip_paper import (PAPER_COPIES, PAPER_DATASETS, PAPER_MODELS,  # noqa: F401 (read here too)
                                         TABLE9_NAMES, UNAVAILABLE)
from pipeline.stages.heads import LINEAR_PROBE, ZEROSHOT

PUBLISHED = Path(__file__).with_name("published")
MANIFEST = PUBLISHED / "manifest.json"  # each file's SHA-256 and cell count, checked by the tests
CELLS = ["reference", "name", "pretrained", "model", "weights", "dataset", "language", "metric", "published",
         "rounding", "comparable", "note"]
FLICKR, MSCOCO = "retrieval/flickr_1k_test_image_text_retrieval", "retrieval/mscoco_2014_5k_test_image_text_retrieval"
WINOGAVIL = "misc/winogavil"
QUICKGELU = "-quickgelu"


@dataclass(frozen=True)
class Reference:
    """A published source of results: what produced it, and how to read its cells."""

    name: str
    title: str
    files: tuple[str, ...]
    protocol: str | None       # the protocol that reproduces it (None: the authors' own code, none of ours)
    prompts: tuple[str, ...]   # prompt sets whose templates are the ones it used
    head: str
    read: Callable[[], pd.DataFrame]
    sizes: Callable[[], pd.DataFrame] | None = None  # dataset, size, classes of the data it was computed on
    # other names of its datasets, by the name its cells carry (a result under one is set beside that cell)
    copies: Mapping[str, str] = field(default_factory=dict, hash=False)

    def dataset(self, name: str) -> str:
        """A result's dataset as this reference names it."""
        return self.copies.get(name, name)


# -- model names ------------------------------------------------------------------------------------------
def arch_of(name: str, pretrained: str) -> str:
    """The architecture that reproduces a published row: open_clip's tables and CLIP_benchmark's results list
    OpenAI's weights under the plain name but were computed with QuickGELU (open_clip < 2.29 switched it on for
    `pretrained=openai`); every other row ran the architecture it names."""
    return f"{name}{QUICKGELU}" if pretrained == "openai" and not name.endswith(QUICKGELU) else name


# -- datasets and metrics --------------------------------------------------------------------------------------
# CLIP_benchmark's dataset names that the catalog calls otherwise (its Flickr30k and MSCOCO are the same 1k and 5k
# Karpathy test splits nlphuji publishes); the rest are catalog keys already.
CLIP_BENCHMARK_DATASETS = {"flickr30k": FLICKR, "mscoco_captions": MSCOCO}
RETRIEVAL_COLUMN = re.compile(r"^(Flickr|MSCOCO) (image|text) retr\. R@(\d+)$")
WINOGAVIL_COLUMN = re.compile(r"^WinoGAViL (avg jaccard score|jaccard score [\d-]+)$")
# Published metrics that carry a name this project uses for something else, or that nothing here computes.
DEFINITIONS = {
    "map_11point": "11-point interpolated mAP over the 20 VOC classes (the multi-label task)",
    "mean_average_precision": "clip_benchmark's mean of per-class average precision (the multi-label task)",
    "mean_top1_top5": "the mean of top-1 and top-5 accuracy on Kinetics700's middle frames",
    "roc_auc": "ROC AUC on Hateful Memes",
}


def computed_metrics(dataset: str) -> set[str]:
    """The metrics the score stage gives a catalog dataset (its task's, and its group and extra metrics)."""
    entry = catalog.lookup(dataset)
    if entry is None or entry.task not in tasks.REGISTRY:
        return set()
    return set(tasks.REGISTRY[entry.task].metrics) | set(entry.metrics)


def comparability(dataset: str, metric: str) -> tuple[bool, str]:
    """Whether a result's `metric` on `dataset` is the reference's: the score stage computes it under the same
    definition, or the dataset is one no copy here gives (`UNAVAILABLE`), whose results come from files; if not,
    why."""
    if dataset in UNAVAILABLE:  # nothing here computes it: a result file that has the metric is compared with it
        return True, ""
    if catalog.lookup(dataset) is None:
        return False, f"the catalog has no dataset {dataset}"
    if metric not in computed_metrics(dataset):
        what = DEFINITIONS.get(metric, metric)
        return False, f"{what} is not computed for {dataset}"
    return True, ""


def cells(reference: str, rows: Iterable[dict] | pd.DataFrame) -> pd.DataFrame:
    """Published cells with their comparability worked out (once per dataset and metric)."""
    columns = [c for c in CELLS if c not in ("reference", "comparable", "note")]
    frame = (rows.reindex(columns=columns) if isinstance(rows, pd.DataFrame) else
             pd.DataFrame(list(rows), columns=columns))
    frame["language"] = frame["language"].astype(object).fillna(ENGLISH)  # only multilingual tables name one
    known = {pair: comparability(*pair) for pair in set(zip(frame["dataset"], frame["metric"]))}
    checked = [known[pair] for pair in zip(frame["dataset"], frame["metric"])]
    frame["comparable"] = [ok for ok, _ in checked]
    frame["note"] = [note for _, note in checked]
    frame.insert(0, "reference", reference)
    return frame[CELLS]


def digits_rounding(text: str) -> float:
    """Half the last printed digit of a decimal number (`0.7079` -> 0.00005)."""
    decimals = len(text.split(".")[1]) if "." in text else 0
    return 0.5 * 10.0 ** -decimals


def significant_rounding(text: str, digits: int = 6) -> float:
    """Half the last digit of a number printed with `digits` significant digits (C's `%g`, as the blog's are)."""
    value = abs(float(text))
    return 0.0 if value == 0 else 0.5 * 10.0 ** (math.floor(math.log10(value)) - digits + 1)


# -- the readers ----------------------------------------------------------------------------------------------
def read_csv(name: str) -> pd.DataFrame:
    path = PUBLISHED / name
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise PipelineError(f"the bundled reference {path} cannot be read ({exc}); restore it with git") from exc


def melted(table: pd.DataFrame, value_columns: list[str]) -> pd.DataFrame:
    """A published table's cells, one row per (row, column) with a value, the model as this project runs it."""
    long = table.melt(id_vars=["name", "pretrained"], value_vars=value_columns, var_name="column", value_name="text")
    long = long[long["text"] != ""]
    return long.assign(model=[arch_of(n, p) for n, p in zip(long["name"], long["pretrained"])],
                       weights=long["pretrained"], published=long["text"].astype(float),
                       rounding=[digits_rounding(text) for text in long["text"]])


def openclip_cells() -> pd.DataFrame:
    """open_clip's tables (DataComp's evaluation): every dataset's main metric, then the retrieval recalls and
    WinoGAViL's breakdown from its retrieval table."""
    entries = {entry.column: entry for entry in catalog.entries().values() if entry.column}
    results = read_csv("openclip_results.csv")
    main = melted(results, [c for c in results.columns if c in entries])
    main = main.assign(dataset=[entries[c].key for c in main["column"]],
                       metric=[entries[c].main_metric for c in main["column"]])
    retrieval = read_csv("openclip_retrieval_results.csv")
    named = {}
    for column in retrieval.columns:
        if found := RETRIEVAL_COLUMN.match(column):
            named[column] = (FLICKR if found.group(1) == "Flickr" else MSCOCO,
                             f"{found.group(2)}_retrieval_recall@{found.group(3)}")
        elif found := WINOGAVIL_COLUMN.match(column):
            named[column] = (WINOGAVIL, found.group(1).replace(" ", "_"))
    extra = melted(retrieval, list(named))
    extra = extra.assign(dataset=[named[c][0] for c in extra["column"]], metric=[named[c][1] for c in extra["column"]])
    frame = cells("openclip", pd.concat([main, extra], ignore_index=True))
    return frame.drop_duplicates(["model", "weights", "dataset", "metric"], keep="first").reset_index(drop=True)


def clip_benchmark_cells() -> pd.DataFrame:
    """CLIP_benchmark's benchmark.csv: acc1, acc5 and mean per class recall of every classification result, the
    VOC multi-label mAP, and recall@5 both ways for retrieval; unrounded."""
    metrics = ("acc1", "acc5", "mean_per_class_recall", "mean_average_precision", "image_retrieval_recall@5",
               "text_retrieval_recall@5")

    def rows():
        for _, row in read_csv("clip_benchmark_benchmark.csv").iterrows():
            dataset = row["dataset"].removeprefix("wds/")
            dataset = CLIP_BENCHMARK_DATASETS.get(dataset, dataset)
            for metric in metrics:
                if row[metric] != "":
                    yield {"name": row["model"], "pretrained": row["pretrained"],
                           "model": arch_of(row["model"], row["pretrained"]), "weights": row["pretrained"],
                           "dataset": dataset, "metric": metric, "published": float(row[metric]), "rounding": 0.0}

    return cells("clip_benchmark", rows())


BLOG_TABLES = {"blog_table1_acc1.csv": "acc1", "blog_table2_mean_per_class_recall.csv": "mean_per_class_recall",
               "blog_table3_acc1_adjusted.csv": "acc1_adjusted",
               "blog_table4_mean_per_class_recall.csv": "mean_per_class_recall"}


def blog_cells() -> pd.DataFrame:
    """The blog's Tables 1-4 (CLIP_benchmark's CLI, 13 models): Table 1 holds acc1, Table 2 mean per class recall,
    Table 3 `acc1 - 1/N` (its caption says top-1), Table 4 mean per class recall; 6 significant digits."""
    def rows():
        for file, metric in BLOG_TABLES.items():
            for _, row in read_csv(file).iterrows():
                for column, value in row.items():
                    if column == "dataset" or value == "":
                        continue
                    name, pretrained = column.split(" ")
                    yield {"name": name, "pretrained": pretrained, "model": arch_of(name, pretrained),
                           "weights": pretrained, "dataset": row["dataset"], "metric": metric,
                           "published": float(value), "rounding": significant_rounding(value)}

    return cells("blog", rows())


def paper_cells(file: str, reference: str) -> pd.DataFrame:
    """Table 11 (zero-shot) or Table 10 (linear probes) of the CLIP paper: percent with one decimal, each dataset
    scored with Table 9's metric. VOC2007 is also listed against the catalog's `voc2007`, DataComp's single-label
    copy, so a result there is shown as not comparable rather than left out."""
    def rows():
        for _, row in read_csv(file).iterrows():
            name = row["model"]
            model = {"name": name, "pretrained": "openai", "model": arch_of(PAPER_MODELS[name], "openai"),
                     "weights": "openai"}
            for column, (dataset, metric) in PAPER_DATASETS.items():
                value = {"published": float(row[column]) / 100, "rounding": digits_rounding(row[column]) / 100}
                yield {**model, "dataset": dataset, "metric": metric, **value}
                if column == "VOC2007":
                    yield {**model, "dataset": "voc2007", "metric": metric, **value}

    frame = cells(reference, rows())
    single_label = frame["dataset"] == "voc2007"
    frame.loc[single_label, "comparable"] = False
    frame.loc[single_label, "note"] = ("the paper scores VOC2007 as the multi-label task (11-point mAP); DataComp's "
                                       "voc2007 is single-label accuracy: run dataset=voc2007_multilabel")
    return frame


# open_clip's multilingual table: CLIP_benchmark's Crossmodal-3600 and its `multilingual_mscoco_captions`, which
# reads XTD-10 (the same index, captions and images: datasets/multilingual_mscoco.py), by the catalog's names.
MULTILINGUAL_COLUMN = re.compile(r"^(crossmodal3600|multilingual_mscoco_captions) "
                                 r"((?:image|text)_retrieval_recall@\d+) (\w+)$")
MULTILINGUAL_DATASETS = {"crossmodal3600": "multilingual/crossmodal3600",
                         "multilingual_mscoco_captions": "multilingual/xtd10"}


def openclip_multilingual_cells() -> pd.DataFrame:
    """open_clip's multilingual retrieval table: image and text R@1/5/10 per language (its averages left out)."""
    table = read_csv("openclip_multilingual_retrieval_results.csv").rename(
        columns={"model": "name", "version": "pretrained"})
    named = {column: found.groups() for column in table.columns if (found := MULTILINGUAL_COLUMN.match(column))
             and found.group(3) != "avg"}
    long = melted(table, list(named))
    frame = cells("openclip_multilingual", long.assign(
        dataset=[MULTILINGUAL_DATASETS[named[c][0]] for c in long["column"]],
        metric=[named[c][1] for c in long["column"]], language=[named[c][2] for c in long["column"]]))
    # its `RN50 openai` rows repeat their `-quickgelu` twins' cells, as in open_clip's main table
    return frame.drop_duplicates(["model", "weights", "dataset", "language", "metric"]).reset_index(drop=True)


def paper_sizes() -> pd.DataFrame:
    """Table 9's test size and class count, by the catalog's name of each dataset."""
    table = read_csv("clip_paper_table9_datasets.csv").set_index("dataset")
    keys = [key for key, _ in PAPER_DATASETS.values()]
    return pd.DataFrame([{"dataset": key, "size": int(table.loc[name, "test_size"]),
                          "classes": int(table.loc[name, "classes"])}
                         for name, key in zip(TABLE9_NAMES, keys)])


def datacomp_sizes() -> pd.DataFrame:
    """The size and class count of DataComp's test sets (its tasklist.yml)."""
    table = read_csv("datacomp_tasks.csv")
    return pd.DataFrame({"dataset": table["key"], "size": pd.to_numeric(table["size"]),
                         "classes": pd.to_numeric(table["num_classes"], errors="coerce")})


REFERENCES: dict[str, Reference] = {reference.name: reference for reference in (
    Reference("openclip", "open_clip's results tables (DataComp's evaluation)",
              ("openclip_results.csv", "openclip_retrieval_results.csv"), "datacomp", ("dataset",), ZEROSHOT,
              openclip_cells, datacomp_sizes),
    Reference("clip_benchmark", "CLIP_benchmark's benchmark.csv (its CLI, amp)", ("clip_benchmark_benchmark.csv",),
              "clip_benchmark", ("dataset", "clip_benchmark"), ZEROSHOT, clip_benchmark_cells),
    Reference("blog", "the blog's Tables 1-4 (CLIP_benchmark's CLI)", tuple(BLOG_TABLES), "clip_benchmark",
              ("dataset", "clip_benchmark"), ZEROSHOT, blog_cells),
    Reference("openclip_multilingual", "open_clip's multilingual retrieval table (CLIP_benchmark's CLI)",
              ("openclip_multilingual_retrieval_results.csv",), "clip_benchmark", (), ZEROSHOT,
              openclip_multilingual_cells),
    Reference("clip_paper", "the CLIP paper's Table 11 (zero-shot)", ("clip_paper_table11_zeroshot.csv",), None,
              ("clip_paper",), ZEROSHOT, lambda: paper_cells("clip_paper_table11_zeroshot.csv", "clip_paper"),
              paper_sizes, PAPER_COPIES),
    Reference("clip_paper_probe", "the CLIP paper's Table 10 (linear probes)", ("clip_paper_table10_linearprobe.csv",),
              None, (), LINEAR_PROBE, lambda: paper_cells("clip_paper_table10_linearprobe.csv", "clip_paper_probe"),
              paper_sizes, PAPER_COPIES),
)}
ALL = "all"


def chosen(name: str) -> list[Reference]:
    """The references `reference=NAME` names (`all`: every one); an unknown name is refused."""
    if name == ALL:
        return list(REFERENCES.values())
    if name not in REFERENCES:
        raise PipelineError(f"unknown reference {name!r}; use one of {', '.join([*REFERENCES, ALL])}")
    return [REFERENCES[name]]


@lru_cache(maxsize=None)
def published_cells(name: str) -> pd.DataFrame:
    """Every cell of one reference (read once per process)."""
    return REFERENCES[name].read()


def manifest() -> dict[str, dict]:
    """What the bundled files held when they were checked against their sources: SHA-256 and cell counts."""
    return json.loads(MANIFEST.read_text())
