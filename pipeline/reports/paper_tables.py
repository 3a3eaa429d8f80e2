"""The CLIP paper's Table 11 (zero-shot) and Table 10 (linear probes) as it prints them, pure functions from score
records: a row per model, the paper's nine first in its order and any other model after them; a column per
dataset in the paper's order, filled from a result under any name of that dataset (`clip_paper.PAPER_COPIES`);
each cell Table 9's metric for that dataset, in percent with one decimal; a dataset without a result left empty
(those without a public copy, `clip_paper.UNAVAILABLE`, have results only from files).
"""
from __future__ import annotations

import math
from typing import Iterable

import pandas as pd

from pipeline.data.languages import ENGLISH
from pipeline.errors import PipelineError
from pipeline.reports import references
from pipeline.reports.clip_paper import CLIP_BENCHMARK_PROBE, PAPER_PROBE, paper_dataset
from pipeline.reports.references import PAPER_DATASETS, PAPER_MODELS, QUICKGELU
from pipeline.reports.results import ScoreRecord
from pipeline.reports.tables import row_name
from pipeline.stages.heads import ALL_SHOTS, LINEAR_PROBE, ZEROSHOT

PROMPTS = "clip_paper"  # the prompt set of Table 11's own prompts
MODEL_COLUMN = "model"
# Table 9's metric of each dataset, by the catalog's key: the column it fills and the metric read for it.
BY_KEY = {key: (column, metric) for column, (key, metric) in PAPER_DATASETS.items()}
TABLES = {ZEROSHOT: ("clip_paper_table11", "the CLIP paper's Table 11 — zero-shot"),
          LINEAR_PROBE: ("clip_paper_table10", "the CLIP paper's Table 10 — linear probes (full train split)")}


def paper_model(record: ScoreRecord) -> str:
    """The paper's name of OpenAI's weights (RN50, ViT-L/14@336, with either activation); other models as
    `name pretrained`."""
    if record.pretrained == "openai":
        arch = record.model.removesuffix(QUICKGELU)
        for name, paper_arch in PAPER_MODELS.items():
            if paper_arch == arch:
                return name
    return f"{row_name(record)} {record.pretrained}".strip()


def column(record: ScoreRecord) -> str | None:
    """The paper's column a result fills, under whatever name it read the dataset; None for other datasets."""
    found = BY_KEY.get(paper_dataset(record.dataset))
    return found[0] if found else None


def fits(record: ScoreRecord, head: str) -> bool:
    """A result one of the tables holds: a dataset of the paper's, zero-shot or the full linear probe (this
    project's or CLIP_benchmark's own)."""
    if column(record) is None or record.language != ENGLISH:  # the paper's tables are English
        return False
    if head == LINEAR_PROBE:
        return record.head == LINEAR_PROBE and record.k_shot == ALL_SHOTS
    return record.head == ZEROSHOT


def chosen(records: Iterable[ScoreRecord], head: str) -> list[ScoreRecord]:
    """The results a table is drawn from; for Table 11 those with the paper's prompts when there are any. A cell
    with results on the dataset under the paper's name (the copy `suite=clip_paper` sweeps) and under another
    (`vtab/cifar10` beside `cifar10`) takes the former."""
    found = [r for r in records if fits(r, head)]
    if head == ZEROSHOT and any(r.prompts == PROMPTS for r in found):
        found = [r for r in found if r.prompts == PROMPTS]
    own_name = {(paper_model(r), column(r)) for r in found if r.dataset in BY_KEY}
    return [r for r in found if r.dataset in BY_KEY or (paper_model(r), column(r)) not in own_name]


def paper_table(records: Iterable[ScoreRecord], head: str) -> pd.DataFrame:
    """Table 11 (`head=zeroshot`) or Table 10 (`head=linear_probe`; a probe's cell is its mean over seeds)."""
    cells: dict[tuple[str, str], list[float]] = {}
    variants: dict[tuple[str, str], set[tuple[str, ...]]] = {}
    for record in chosen(records, head):
        name, metric = BY_KEY[paper_dataset(record.dataset)]
        cell = (paper_model(record), name)
        cells.setdefault(cell, []).append(record.metrics.get(metric, math.nan))
        variants.setdefault(cell, set()).add((record.model, record.dataset, record.source, record.protocol,
                                              record.prompts, record.features))
    for (model, name), found in variants.items():
        if len(found) > 1:
            raise PipelineError(f"the CLIP paper's table has one cell per model and dataset, but {model} on {name} "
                                f"has results for several (architecture, dataset, source, protocol, prompts, "
                                f"features): {', '.join(sorted(map(str, found)))}; keep one with source=, "
                                f"protocol=, prompts= (or one activation of OpenAI's weights, one copy of the data)")
    models = {model for model, _ in cells}
    order = [m for m in PAPER_MODELS if m in models] + sorted(models - set(PAPER_MODELS))
    rows = [{MODEL_COLUMN: model, **{column: percent(cells.get((model, column), [])) for column in PAPER_DATASETS}}
            for model in order]
    return pd.DataFrame(rows, columns=[MODEL_COLUMN, *PAPER_DATASETS])


def percent(values: list[float]) -> str:
    """The paper's cell: percent with one decimal; empty without a value (NaN counts as none)."""
    if not values or any(math.isnan(v) for v in values):
        return ""
    return f"{100 * sum(values) / len(values):.1f}"


def note(records: Iterable[ScoreRecord], head: str) -> str:
    """What the table's markdown says under it: which columns `suite=clip_paper` cannot fill, and why; for Table
    10, whose cells are CLIP_benchmark's probe rather than the paper's, and which probes it left out."""
    records = list(records)
    keys = {key: name for name, (key, _) in PAPER_DATASETS.items()}
    lines = ["Not swept by `suite=clip_paper` (no public copy): these columns hold only results read from files that "
             "have them (`results_dir=`), compared with the paper's like any other:",
             *(f"- {keys[key]}: {reason}" for key, reason in references.UNAVAILABLE.items())]
    if head != LINEAR_PROBE:
        return "\n".join(lines)
    drawn = chosen(records, head)
    theirs = sorted({paper_model(r) for r in drawn if r.is_clip_benchmark_probe})
    if theirs:
        lines += ["", f"Probe protocol: the cells read from CLIP_benchmark's `--task linear_probe` result files (in "
                      f"the rows of {', '.join(theirs)}) are its own probe, {CLIP_BENCHMARK_PROBE}. The paper's probe "
                      f"is {PAPER_PROBE}."]
    few = sum(1 for r in records if r.head == LINEAR_PROBE and column(r) is not None and r.k_shot != ALL_SHOTS)
    if few:
        lines += ["", f"Left out: {few} probe result(s) fitted on k examples per class; the table holds full probes."]
    return "\n".join(lines)


def applies(records: Iterable[ScoreRecord]) -> bool:
    """A sweep draws the tables when it ran the paper's prompts on one of its datasets."""
    return any(r.prompts == PROMPTS and column(r) is not None for r in records)
