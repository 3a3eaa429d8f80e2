"""Table layouts, pure functions from score records to DataFrames: per prompt set, open_clip's 38-dataset CSV,
and the blog's dataset-by-model tables."""
from __future__ import annotations

import logging
import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from pipeline.data import catalog
from pipeline.data.languages import ENGLISH
from pipeline.data.prompts import PROMPT_FREE
from pipeline.errors import PipelineError
from pipeline.models.params import parameter_counts
from pipeline.reports.results import ScoreRecord
from pipeline.stages.heads import ZEROSHOT

log = logging.getLogger(__name__)

ROW_KEYS = ["model", "pretrained", "protocol", "head"]
MEAN_COLUMN = "mean"
WEIGHTED_COLUMN = "size-weighted mean"
OPENCLIP38_AVERAGE = "Average perf. on 38 datasets"
OPENCLIP38_LEAD = ["name", "pretrained", "params (M)", "FLOPs (B)", OPENCLIP38_AVERAGE]


def natural_key(label: str) -> str:
    """A sort key that orders the numbers inside labels by value: step_300 before step_1200, RN50x4 before RN50x16."""
    return re.sub(r"\d+", lambda number: number.group().zfill(20), str(label))


def natural(labels: pd.Series) -> pd.Series:
    return labels.map(natural_key)


def metric_label(metric: str) -> str:
    """How a plot or heading names the metric: `main` stands for each dataset's own."""
    return "main metric of each dataset" if metric == "main" else metric


# -- one table per prompt set: rows (model, pretrained), a column per dataset, the mean --------------------
def dataset_labels(records: Iterable[ScoreRecord]) -> dict[tuple[str, str, str], str]:
    """Column label per (dataset, source, language): the dataset key, with the source appended only where one
    dataset was read from several copies (DataComp's and CLIP_benchmark's), and a language other than English
    after a slash (`imagenet1k/it`, `babel_imagenet/de`)."""
    records = list(records)
    sources: dict[str, set[str]] = {}
    for record in records:
        sources.setdefault(record.dataset, set()).add(record.source)
    labels = {}
    for record in records:
        found = sources[record.dataset]
        label = record.dataset if len(found) == 1 else f"{record.dataset} ({record.source})"
        in_language = label if record.language == ENGLISH else f"{label}/{record.language}"
        labels[record.dataset, record.source, record.language] = in_language
    return labels


def build_table(records: Iterable[ScoreRecord], metric: str) -> pd.DataFrame:
    """`metric="main"` takes each dataset's own main metric; a probe's cell is its mean over the seeds swept
    (`fewshot.comparison` gives their spread). The mean stays empty (NaN) for a row that lacks a dataset or whose
    metric is undefined there, rather than averaging fewer."""
    records = list(records)
    labels = dataset_labels(records)
    rows = [{"model": r.model, "pretrained": r.pretrained, "protocol": r.protocol, "head": r.head_label,
             "dataset": labels[(r.dataset, r.source, r.language)], "value": r.value(metric), "n": r.units}
            for r in records]
    if not rows:
        return pd.DataFrame(columns=ROW_KEYS + [MEAN_COLUMN, WEIGHTED_COLUMN])
    long = pd.DataFrame(rows)
    datasets = list(dict.fromkeys(long["dataset"]))
    # groupby, not pivot_table: pivoting with dropna=False would add a row for every combination of row keys
    # (a zero-shot-only model would get empty probe rows); a seed without the metric leaves its mean NaN.
    table = long.groupby(ROW_KEYS + ["dataset"], sort=True)["value"].agg(lambda v: v.mean(skipna=False)).unstack("dataset")
    table = table.reindex(columns=datasets)
    sizes = long.groupby(ROW_KEYS + ["dataset"], sort=True)["n"].first().unstack("dataset").reindex(columns=datasets)
    table[MEAN_COLUMN] = table[datasets].mean(axis=1, skipna=False)
    # seed 000's other average: each dataset weighted by its number of test samples (images, games)
    table[WEIGHTED_COLUMN] = (table[datasets] * sizes).sum(axis=1, min_count=len(datasets)) / sizes.sum(
        axis=1, min_count=len(datasets))
    table = table.reset_index().rename_axis(columns=None)
    order = table["head"].map(head_order)
    return table.assign(_order=order).sort_values(["model", "pretrained", "protocol", "_order"],
                                                  key=lambda c: natural(c) if c.name in ("model", "pretrained") else c) \
        .drop(columns="_order").reset_index(drop=True)


def head_order(label: str) -> tuple[int, int]:
    """Zero-shot first, then k-shot probes by k, then the full probe: the order of the paper's comparisons."""
    head, _, rest = label.partition(" ")
    shots = rest.split("-shot")[0]
    if head == ZEROSHOT:
        return (0, 0)
    return (1, int(shots)) if shots.isdigit() else (2, 0)


def by_prompts_label(records: Iterable[ScoreRecord]) -> dict[str, list[ScoreRecord]]:
    by_prompts: dict[str, list[ScoreRecord]] = {}
    for record in records:
        by_prompts.setdefault(record.prompts, []).append(record)
    return by_prompts


def build_tables(records: Iterable[ScoreRecord], metric: str) -> dict[str, pd.DataFrame]:
    """One table per prompt set."""
    return {prompts: build_table(group, metric) for prompts, group in by_prompts_label(records).items()}


def to_markdown(tables: Mapping[str, pd.DataFrame], metric: str) -> str:
    return "\n".join(f"### {metric} — prompts: {prompts}\n\n{table.to_markdown(index=False, floatfmt='.4f')}\n"
                     for prompts, table in tables.items())


def by_prompt_set_with_prompt_free(records: Iterable[ScoreRecord]) -> dict[str, list[ScoreRecord]]:
    """Records grouped by prompt set; prompt-free results (retrieval, WinoGAViL) belong to every group."""
    records = list(records)
    shared = [r for r in records if r.prompts == PROMPT_FREE]
    groups: dict[str, list[ScoreRecord]] = {}
    for record in records:
        if record.prompts != PROMPT_FREE:
            groups.setdefault(record.prompts, []).append(record)
    return {prompts: group + shared for prompts, group in groups.items()} or ({PROMPT_FREE: shared} if shared else {})


# -- open_clip's docs/openclip_results.csv -----------------------------------------------------------------
# open_clip's table as published (its params (M) and FLOPs (B) columns are read here; see published/README.md).
PUBLISHED_TABLE = Path(__file__).with_name("published") / "openclip_results.csv"
OPENCLIP38_PROTOCOL = "datacomp"


@lru_cache(maxsize=1)
def published_figures() -> dict[str, tuple[str, str]]:
    """(params (M), FLOPs (B)) by published model name, as strings."""
    table = pd.read_csv(PUBLISHED_TABLE, dtype=str, keep_default_na=False, usecols=OPENCLIP38_LEAD[:4])
    return {row["name"]: (row["params (M)"], row["FLOPs (B)"]) for _, row in table.iterrows()}


def model_figures(models: set[tuple[str, str]]) -> dict[tuple[str, str], tuple[str, str]]:
    """(params (M), FLOPs (B)) by (arch, published name): open_clip's published figures where it published the
    model, else params counted once per architecture (`models.params`, remembered, never online) and no FLOPs,
    which are not computed here; empty where neither exists."""
    published = published_figures()
    unpublished = {arch for arch, name in models if name not in published}
    counted = parameter_counts(unpublished) if unpublished else {}
    figures = {}
    for arch, name in models:
        if name in published:
            figures[arch, name] = published[name]
        else:
            params = counted[arch]
            figures[arch, name] = ("" if math.isnan(params) else f"{params:.2f}", "")
    return figures


def published_name(arch: str, pretrained: str) -> str:
    """open_clip's table lists OpenAI weights under the plain architecture name (ViT-B-32, not ViT-B-32-quickgelu)."""
    return arch.removesuffix("-quickgelu") if pretrained == "openai" else arch


def row_name(record: ScoreRecord) -> str:
    """Our runs use published names; result files keep theirs verbatim, so their rows never merge."""
    return record.model if record.is_external else published_name(record.model, record.pretrained)


def openclip38_eligible(record: ScoreRecord) -> bool:
    """A result open_clip's table can hold: a datacomp38 dataset read from DataComp's own copy, under DataComp's
    protocol, or a result file (whose producer chose both); zero-shot results only, as the table reports."""
    entry = catalog.lookup(record.dataset)
    if record.head != ZEROSHOT or record.language != ENGLISH:  # its columns are the English results
        return False
    if entry is None or entry.key not in catalog.suite("datacomp38"):
        return False
    return record.is_external or (record.source == entry.source and record.protocol == OPENCLIP38_PROTOCOL)


def openclip38(records: Iterable[ScoreRecord]) -> pd.DataFrame:
    """Header, column order and cells of open_clip's results CSV: main metrics and the plain mean of all 38,
    each to 4 decimals; a row missing datasets keeps them empty and its average reads `incomplete (n/38)`.
    `records` hold one prompt set (see `by_prompt_set_with_prompt_free`); only `openclip38_eligible` ones are used."""
    keys = catalog.suite("datacomp38")
    columns = [catalog.lookup(key).column for key in keys]
    cells: dict[tuple[str, str, str], dict[str, float]] = {}
    for record in filter(openclip38_eligible, records):
        entry = catalog.lookup(record.dataset)
        value = record.metrics.get(entry.main_metric, math.nan)
        cells.setdefault((row_name(record), record.model, record.pretrained), {})[entry.column] = value
    figures = model_figures({(arch, name) for name, arch, _ in cells})
    rows = []
    for (name, arch, pretrained), values in cells.items():
        present = [values[c] for c in columns if c in values and not math.isnan(values[c])]
        average = (f"{sum(present) / len(columns):.4f}" if len(present) == len(columns)
                   else f"incomplete ({len(present)}/{len(columns)})")
        params, flops = figures[arch, name]
        rows.append({"name": name, "pretrained": pretrained, "params (M)": params, "FLOPs (B)": flops,
                     OPENCLIP38_AVERAGE: average,
                     **{c: (f"{values[c]:.4f}" if c in values and not math.isnan(values[c]) else "") for c in columns}})
    table = pd.DataFrame(rows, columns=OPENCLIP38_LEAD + columns)
    complete = pd.to_numeric(table[OPENCLIP38_AVERAGE], errors="coerce")
    return table.assign(_order=complete.fillna(-1)).sort_values("_order", ascending=False).drop(columns="_order")


# -- the blog's tables: a row per dataset, a column per model ----------------------------------------------
def blog(records: Iterable[ScoreRecord], metric: str, mean_row: bool = False) -> pd.DataFrame:
    """Tables 1-4 of the blog: `metric` (acc1, mean_per_class_recall, acc1_adjusted) for each classification
    dataset (rows, sorted by key) and model (columns "arch pretrained" with published names, sorted), as the
    blog prints them; the column mean as a last row only when asked for."""
    rows = [{"dataset": r.dataset, "model": f"{row_name(r)} {r.pretrained}".strip(), "value": r.value(metric),
             "variant": (r.source, r.protocol, r.prompts)} for r in records
            if r.task == "zeroshot_classification" and r.head == ZEROSHOT and r.language == ENGLISH]
    if not rows:
        return pd.DataFrame(columns=["dataset"])
    long = pd.DataFrame(rows)
    variants = long.groupby(["dataset", "model"])["variant"].nunique()
    if (variants > 1).any():
        (dataset, model) = variants[variants > 1].index[0]
        found = sorted(map(str, set(long.loc[(long["dataset"] == dataset) & (long["model"] == model), "variant"])))
        raise PipelineError(f"the blog layout has one cell per dataset and model, but {model} on {dataset} has "
                            f"results for several (source, protocol, prompts): {', '.join(found)}; keep one with "
                            f"protocol=NAME and prompts=NAME")
    table = long.pivot_table(index="dataset", columns="model", values="value", aggfunc="first", dropna=False)
    table = table.reindex(index=sorted(set(long["dataset"])), columns=sorted(set(long["model"])))
    if mean_row:
        table.loc[MEAN_COLUMN] = table.mean(axis=0, skipna=False)
    return table.reset_index().rename_axis(columns=None)
