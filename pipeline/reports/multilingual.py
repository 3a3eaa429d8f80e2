"""Multilingual results with the languages in columns, as open_clip's `docs/openclip_multilingual_retrieval_results.csv`
lays them out: a row per model, then per dataset and retrieval metric its mean over the languages (`avg`) and a
column per language, `<dataset> <metric> <language>`; pure functions from score records."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import pandas as pd

from pipeline.data.languages import ENGLISH
from pipeline.reports.results import ScoreRecord
from pipeline.reports.tables import row_name
from pipeline.stages.heads import ZEROSHOT

METRICS = tuple(f"{way}_retrieval_recall@{k}" for way in ("image", "text") for k in (1, 5, 10))
LEAD = ["model", "version", "avg"]
AVERAGE = "avg"


def eligible(record: ScoreRecord) -> bool:
    """A zero-shot retrieval result of a dataset run in more than English (its language is a label of its own)."""
    return record.head == ZEROSHOT and record.task == "zeroshot_retrieval" and record.language != ENGLISH \
        or record.dataset.startswith("multilingual/")


def applies(records: Sequence[ScoreRecord]) -> bool:
    return any(map(eligible, records))


def table(records: Iterable[ScoreRecord]) -> pd.DataFrame:
    """open_clip's columns for the datasets and languages the results hold; `avg` (after `version`) is the mean of
    every per-language cell of the row, each (dataset, metric) `avg` the mean over its languages; means are left
    empty where a cell is missing."""
    chosen = [r for r in records if eligible(r)]
    datasets = list(dict.fromkeys(r.dataset for r in chosen))
    languages = {d: sorted({r.language for r in chosen if r.dataset == d}) for d in datasets}
    columns = [f"{d} {m} {lang}" for d in datasets for m in METRICS for lang in [AVERAGE, *languages[d]]]
    rows: dict[tuple[str, str, str, str], dict[str, float]] = {}
    for r in chosen:  # a row per run architecture and protocol: QuickGELU twins and precisions never merge
        row = rows.setdefault((row_name(r), r.pretrained, r.model, r.protocol), {})
        for metric in METRICS:
            row[f"{r.dataset} {metric} {r.language}"] = r.metrics.get(metric, math.nan)
    out = []
    for (model, version, _, _), cells in rows.items():
        values = {c: cells.get(c, math.nan) for c in columns if not c.endswith(f" {AVERAGE}")}
        for d in datasets:
            for m in METRICS:
                per_language = [values[f"{d} {m} {lang}"] for lang in languages[d]]
                values[f"{d} {m} {AVERAGE}"] = mean(per_language)
        out.append({"model": model, "version": version, AVERAGE: mean(list(cells.values())), **values})
    return pd.DataFrame(out, columns=LEAD + columns)


def mean(values: list[float]) -> float:
    return math.nan if not values or any(math.isnan(v) for v in values) else sum(values) / len(values)


def summary(wide: pd.DataFrame) -> pd.DataFrame:
    """What a terminal can show: each row's averages only."""
    return wide[[c for c in wide.columns if c in LEAD or c.endswith(f" {AVERAGE}")]]
