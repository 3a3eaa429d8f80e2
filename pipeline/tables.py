"""Table layouts, pure functions from score records to DataFrames: per prompt set, open_clip's 38-dataset CSV,
and the blog's dataset-by-model tables."""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Iterable, Mapping

import pandas as pd

from pipeline import catalog
from pipeline.results import ScoreRecord

ROW_KEYS = ["model", "pretrained"]
MEAN_COLUMN = "mean"
OPENCLIP38_AVERAGE = "Average perf. on 38 datasets"
OPENCLIP38_LEAD = ["name", "pretrained", "params (M)", "FLOPs (B)", OPENCLIP38_AVERAGE]
LAYOUTS = ("per_prompts", "openclip38", "blog")


# -- one table per prompt set: rows (model, pretrained), a column per dataset, the mean --------------------
def build_table(records: Iterable[ScoreRecord], metric: str) -> pd.DataFrame:
    """`metric="main"` takes each dataset's own main metric. The mean stays empty (NaN) for a row that lacks
    a dataset or whose metric is undefined there, rather than averaging fewer."""
    rows = [{"model": r.model, "pretrained": r.pretrained, "dataset": r.dataset, "value": r.value(metric)}
            for r in records]
    if not rows:
        return pd.DataFrame(columns=ROW_KEYS + [MEAN_COLUMN])
    long = pd.DataFrame(rows)
    datasets = list(dict.fromkeys(long["dataset"]))
    table = long.pivot_table(index=ROW_KEYS, columns="dataset", values="value", aggfunc="first", dropna=False)
    table = table.reindex(columns=datasets)
    table[MEAN_COLUMN] = table[datasets].mean(axis=1, skipna=False)
    return table.reset_index().rename_axis(columns=None)


def build_tables(records: Iterable[ScoreRecord], metric: str) -> dict[str, pd.DataFrame]:
    """One table per prompt set."""
    by_prompts: dict[str, list[ScoreRecord]] = {}
    for record in records:
        by_prompts.setdefault(record.prompts, []).append(record)
    return {prompts: build_table(group, metric) for prompts, group in by_prompts.items()}


def to_markdown(tables: Mapping[str, pd.DataFrame], metric: str) -> str:
    return "\n".join(f"### {metric} — prompts: {prompts}\n\n{table.to_markdown(index=False, floatfmt='.4f')}\n"
                     for prompts, table in tables.items())


ANY_PROMPTS = "*"  # the prompts tag of tasks that use no prompt set (retrieval, WinoGAViL)


def by_prompt_set(records: Iterable[ScoreRecord]) -> dict[str, list[ScoreRecord]]:
    """Records grouped by prompt set; prompt-free results (retrieval, WinoGAViL) belong to every group."""
    records = list(records)
    shared = [r for r in records if r.prompts == ANY_PROMPTS]
    groups: dict[str, list[ScoreRecord]] = {}
    for record in records:
        if record.prompts != ANY_PROMPTS:
            groups.setdefault(record.prompts, []).append(record)
    return {prompts: group + shared for prompts, group in groups.items()} or ({ANY_PROMPTS: shared} if shared else {})


# -- open_clip's docs/openclip_results.csv -----------------------------------------------------------------
@lru_cache(maxsize=None)
def parameter_count_m(arch: str) -> float:
    """Parameters in millions, counted on the meta device: no weights are loaded or downloaded."""
    import open_clip
    import torch

    from pipeline.models import register_project_architectures

    register_project_architectures()
    if arch not in open_clip.list_models():
        return math.nan
    with torch.device("meta"):
        model = open_clip.create_model(arch, pretrained=None, device="meta")
    return sum(p.numel() for p in model.parameters()) / 1e6


def published_name(arch: str, pretrained: str) -> str:
    """open_clip's table lists OpenAI weights under the plain architecture name (ViT-B-32, not ViT-B-32-quickgelu)."""
    return arch.removesuffix("-quickgelu") if pretrained == "openai" else arch


def openclip38(records: Iterable[ScoreRecord]) -> pd.DataFrame:
    """Header, column order and cells of open_clip's results CSV: main metrics to 4 decimals, the plain mean of
    all 38; a row missing datasets keeps them empty and its average reads `incomplete (n/38)`.
    `records` hold one prompt set (see `by_prompt_set`)."""
    keys = catalog.suite("datacomp38")
    columns = [catalog.lookup(key).column for key in keys]
    cells: dict[tuple[str, str], dict[str, float]] = {}
    for record in records:
        entry = catalog.lookup(record.dataset)
        if entry is None or entry.key not in keys:
            continue
        value = record.metrics.get(entry.main_metric, math.nan)
        cells.setdefault((record.model, record.pretrained), {})[entry.column] = value
    rows = []
    for (arch, pretrained), values in cells.items():
        present = [values[c] for c in columns if c in values and not math.isnan(values[c])]
        average = sum(present) / len(columns) if len(present) == len(columns) else f"incomplete ({len(present)}/{len(columns)})"
        params = parameter_count_m(arch)
        rows.append({"name": published_name(arch, pretrained), "pretrained": pretrained,
                     "params (M)": "" if math.isnan(params) else f"{params:.2f}", "FLOPs (B)": "",
                     OPENCLIP38_AVERAGE: average,
                     **{c: (f"{values[c]:.4f}" if c in values and not math.isnan(values[c]) else "") for c in columns}})
    table = pd.DataFrame(rows, columns=OPENCLIP38_LEAD + columns)
    complete = pd.to_numeric(table[OPENCLIP38_AVERAGE], errors="coerce")
    return table.assign(_order=complete.fillna(-1)).sort_values("_order", ascending=False).drop(columns="_order")


# -- the blog's tables: a row per dataset, a column per model ----------------------------------------------
def blog(records: Iterable[ScoreRecord], metric: str) -> pd.DataFrame:
    """Tables 1-4 of the blog: `metric` (acc1, mean_per_class_recall, acc1_adjusted) per dataset and model,
    with the column mean as the last row."""
    rows = [{"dataset": r.dataset, "model": f"{r.model} {r.pretrained}".strip(), "value": r.value(metric)}
            for r in records]
    if not rows:
        return pd.DataFrame(columns=["dataset"])
    long = pd.DataFrame(rows)
    table = long.pivot_table(index="dataset", columns="model", values="value", aggfunc="first", dropna=False)
    table = table.reindex(index=list(dict.fromkeys(long["dataset"])), columns=list(dict.fromkeys(long["model"])))
    table.loc[MEAN_COLUMN] = table.mean(axis=0, skipna=False)
    return table.reset_index().rename_axis(columns=None)
