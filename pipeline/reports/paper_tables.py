"""The CLIP paper's Table 11 (zero-shot) and Table 10 (linear probes) as it prints them, pure functions from score
records: a row per model, the paper's nine first in its order and any other model after them; a column per
dataset in the paper's order; each cell Table 9's metric for that dataset, in percent with one decimal; a dataset
without a result, or without a public copy (`references.UNAVAILABLE`), left empty.
"""
from __future__ import annotations

import math
from typing import Iterable

import pandas as pd

from pipeline.data.languages import ENGLISH
from pipeline.errors import PipelineError
from pipeline.reports import references
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


def fits(record: ScoreRecord, head: str) -> bool:
    """A result one of the tables holds: a dataset of the paper's, zero-shot or the full linear probe."""
    if record.dataset not in BY_KEY or record.language != ENGLISH:  # the paper's tables are English
        return False
    if head == LINEAR_PROBE:
        return record.head == LINEAR_PROBE and record.k_shot == ALL_SHOTS
    return record.head == ZEROSHOT


def chosen(records: Iterable[ScoreRecord], head: str) -> list[ScoreRecord]:
    """The results a table is drawn from; for Table 11 those with the paper's prompts when there are any."""
    found = [r for r in records if fits(r, head)]
    if head == ZEROSHOT and any(r.prompts == PROMPTS for r in found):
        found = [r for r in found if r.prompts == PROMPTS]
    return found


def paper_table(records: Iterable[ScoreRecord], head: str) -> pd.DataFrame:
    """Table 11 (`head=zeroshot`) or Table 10 (`head=linear_probe`; a probe's cell is its mean over seeds)."""
    cells: dict[tuple[str, str], list[float]] = {}
    variants: dict[tuple[str, str], set[tuple[str, ...]]] = {}
    for record in chosen(records, head):
        column, metric = BY_KEY[record.dataset]
        cell = (paper_model(record), column)
        cells.setdefault(cell, []).append(record.metrics.get(metric, math.nan))
        variants.setdefault(cell, set()).add((record.model, record.source, record.protocol, record.prompts,
                                              record.features))
    for (model, column), found in variants.items():
        if len(found) > 1:
            raise PipelineError(f"the CLIP paper's table has one cell per model and dataset, but {model} on {column} "
                                f"has results for several (architecture, source, protocol, prompts, features): "
                                f"{', '.join(sorted(map(str, found)))}; keep one with source=, protocol=, "
                                f"prompts= (or one activation of OpenAI's weights)")
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


def missing_note() -> str:
    """Why some columns are always empty, for the table's markdown."""
    keys = {key: column for column, (key, _) in PAPER_DATASETS.items()}
    return "\n".join(f"- {keys[key]}: {reason}" for key, reason in references.UNAVAILABLE.items())


def applies(records: Iterable[ScoreRecord]) -> bool:
    """A sweep draws the tables when it ran the paper's prompts on one of its datasets."""
    return any(r.prompts == PROMPTS and r.dataset in BY_KEY for r in records)
