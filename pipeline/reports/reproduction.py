"""Does it reproduce? Each result set beside the published cell of the same model, dataset and metric: the
difference, whether the published value lies within the result's 95 % interval (widened by the published value's
rounding), and what can be detected of the cause when it does not.

A result with an interval is `reproduced` when the published value lies in [ci_low − r, ci_high + r], r being half
the published value's last digit; one without (a result file) when |ours − published| ≤ max(r, 0.005). A
published metric this project does not compute under the same definition is `not comparable`, never set beside
another metric.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from pipeline.data.languages import ENGLISH
from pipeline.data.prompts import PROMPT_FREE
from pipeline.errors import PipelineError
from pipeline.reports import clip_paper, plots, references
from pipeline.reports.references import QUICKGELU, Reference
from pipeline.reports.results import EXTERNAL_PROMPTS, ScoreRecord
from pipeline.stages.heads import ALL_SHOTS, LINEAR_PROBE
from pipeline.stages.score.uncertainty import CI_HIGH, CI_LOW

REPRODUCED, DIFFERS, NOT_COMPARABLE = "reproduced", "differs", "not comparable"
VERDICTS = (REPRODUCED, DIFFERS, NOT_COMPARABLE)
TOLERANCE = 0.005  # how far a result without an interval may lie from the published value
COLUMNS = ["reference", "model", "pretrained", "dataset", "metric", "ours", "published", "delta", "ci_low", "ci_high",
           "verdict", "cause", "published_name", "protocol", "prompts", "n"]
ROWS_FILE, SUMMARY_FILE = "reproduction.csv", "reproduction_summary.csv"  # as the layout writes them
SUMMARY = ["reference", "model", "pretrained", "compared", "reproduced", "differs", "not comparable", "mean delta",
           "largest |delta|", "where"]


@dataclass(frozen=True)
class Reproduction:
    """The report: a row per (reference, result, metric) both sides have, the summary, and the results that have no
    published counterpart."""

    rows: pd.DataFrame
    summary: pd.DataFrame
    without_counterpart: int
    results: int


def model_key(record: ScoreRecord) -> str:
    """The architecture a record ran: a result file names models as the published tables do."""
    return references.arch_of(record.model, record.pretrained) if record.is_external else record.model


def dataset_key(record: ScoreRecord, reference: Reference) -> str:
    """The record's dataset as the reference names it: a result file's by the catalog, then any other name of the
    same dataset (`vtab/cifar10` is the paper's `cifar10`) by the reference's."""
    name = references.CLIP_BENCHMARK_DATASETS.get(record.dataset, record.dataset) if record.is_external \
        else record.dataset
    return reference.dataset(name)


def twin(model: str) -> str:
    """The same weights with the other activation: `X-quickgelu` <-> `X`."""
    return model.removesuffix(QUICKGELU) if model.endswith(QUICKGELU) else model + QUICKGELU


def head_fits(record: ScoreRecord, reference: Reference) -> bool:
    """Zero-shot results for zero-shot tables; the full probe (the paper's) for the paper's probe table."""
    if reference.head == LINEAR_PROBE:
        return record.head == LINEAR_PROBE and record.k_shot == ALL_SHOTS
    return record.head == reference.head


def indexed(cells: pd.DataFrame) -> dict[tuple[str, str, str, str], list]:
    """A reference's cells by (model, weights, dataset, language)."""
    index: dict[tuple[str, str, str, str], list] = {}
    for cell in cells.itertuples(index=False):
        index.setdefault((cell.model, cell.weights, cell.dataset, cell.language), []).append(cell)
    return index


@lru_cache(maxsize=None)
def published_index(name: str) -> dict[tuple[str, str, str, str], list]:
    """A reference's cells by (model, weights, dataset, language), indexed once per process (walked as Python
    objects: iterating pandas' Arrow-backed strings cell by cell costs three times as much)."""
    return indexed(references.published_cells(name).astype(object))


def counterparts(record: ScoreRecord, reference: Reference, index: dict[tuple[str, str, str, str], list]
                 ) -> tuple[list, bool]:
    """The reference's cells for this record's model, weights and dataset, and whether they ran another activation
    (only the QuickGELU twin of the record's architecture has a row)."""
    if not head_fits(record, reference):
        return [], False
    for model, other in ((model_key(record), False), (twin(model_key(record)), True)):
        found = index.get((model, record.pretrained, dataset_key(record, reference), record.language), [])
        if found:
            return found, other
    return [], False


def causes(record: ScoreRecord, reference: Reference, other_activation: bool, sizes: pd.DataFrame | None) -> list[str]:
    """What can be detected of why a result may differ from the reference's."""
    found = []
    if reference.protocol and not record.is_external and record.protocol != reference.protocol:
        found.append(f"protocol {record.protocol} (the reference's: {reference.protocol})")
    if reference.prompts and record.prompts not in (PROMPT_FREE, EXTERNAL_PROMPTS) \
            and record.prompts not in reference.prompts:
        found.append(f"prompts {record.prompts} (the reference's: {' or '.join(reference.prompts)})")
    if reference.head == LINEAR_PROBE and record.is_clip_benchmark_probe:
        found.append(clip_paper.probe_cause(record.metrics))
    if other_activation:
        activation = "QuickGELU" if model_key(record).endswith(QUICKGELU) else "GELU"
        found.append(f"activation: run with {activation} ({model_key(record)}), the reference's row with the other")
    if sizes is not None and dataset_key(record, reference) in sizes.index:
        size, classes = sizes.loc[dataset_key(record, reference), ["size", "classes"]]
        n, ours_classes = record.units, record.metrics.get("num_classes", math.nan)
        if not math.isnan(n) and n != size:
            found.append(f"test set of {n:.0f} (the reference's: {size:.0f})")
        if not (math.isnan(ours_classes) or math.isnan(classes)) and ours_classes != classes:
            found.append(f"{ours_classes:.0f} classes (the reference's: {classes:.0f})")
    return found


def verdict(ours: float, published: float, low: float, high: float, rounding: float) -> str:
    if math.isnan(low) or math.isnan(high):
        return REPRODUCED if abs(ours - published) <= max(rounding, TOLERANCE) else DIFFERS
    return REPRODUCED if low - rounding <= published <= high + rounding else DIFFERS


def compare(record: ScoreRecord, reference: Reference, index: dict[tuple[str, str, str, str], list],
            sizes: pd.DataFrame | None) -> list[dict]:
    """The report's rows for one result against one reference."""
    found, other_activation = counterparts(record, reference, index)
    rows = []
    for cell in found:
        detected = causes(record, reference, other_activation, sizes)
        ours = float(record.metrics.get(cell.metric, math.nan))
        low, high = (float(record.metrics.get(bound + cell.metric, math.nan)) for bound in (CI_LOW, CI_HIGH))
        row = {"reference": reference.name, "model": record.model, "pretrained": record.pretrained,
               "dataset": record.dataset if record.language == ENGLISH else f"{record.dataset}/{record.language}",
               "metric": cell.metric, "published": cell.published,
               "published_name": f"{cell.name} {cell.pretrained}", "protocol": record.protocol,
               "prompts": record.prompts, "n": record.units}
        if not cell.comparable or math.isnan(ours):
            reason = cell.note if not cell.comparable else f"this result has no {cell.metric}" + (
                f": {references.DEFINITIONS[cell.metric]}" if cell.metric in references.DEFINITIONS else "")
            rows.append({**row, "ours": math.nan, "delta": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                         "verdict": NOT_COMPARABLE, "cause": reason})
            continue
        outcome = verdict(ours, cell.published, low, high, cell.rounding)
        rows.append({**row, "ours": ours, "delta": ours - cell.published, "ci_low": low, "ci_high": high,
                     "verdict": outcome, "cause": "; ".join(detected) if outcome == DIFFERS else ""})
    return rows


def reproduce(records: Iterable[ScoreRecord], chosen: Sequence[Reference]) -> Reproduction:
    """Every result against every chosen reference."""
    records = list(records)
    rows: list[dict] = []
    matched: set[int] = set()
    for reference in chosen:
        index = published_index(reference.name)
        sizes = reference.sizes().set_index("dataset") if reference.sizes else None
        for number, record in enumerate(records):
            compared = compare(record, reference, index, sizes)
            if compared:
                matched.add(number)
                rows.extend(compared)
    table = pd.DataFrame(rows, columns=COLUMNS)
    return Reproduction(table, summarize(table), len(records) - len(matched), len(records))


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Per (reference, model, pretrained): cells compared, how many reproduce, differ, or cannot be compared, the
    mean difference and the largest one with its dataset."""
    rows = []
    for (reference, model, pretrained), group in table.groupby(["reference", "model", "pretrained"], sort=False):
        compared = group[group["verdict"] != NOT_COMPARABLE]
        largest = compared.loc[compared["delta"].abs().idxmax()] if not compared.empty else None
        rows.append({"reference": reference, "model": model, "pretrained": pretrained, "compared": len(compared),
                     REPRODUCED: int((group["verdict"] == REPRODUCED).sum()),
                     DIFFERS: int((group["verdict"] == DIFFERS).sum()),
                     NOT_COMPARABLE: int((group["verdict"] == NOT_COMPARABLE).sum()),
                     "mean delta": compared["delta"].mean() if not compared.empty else math.nan,
                     "largest |delta|": abs(largest["delta"]) if largest is not None else math.nan,
                     "where": f"{largest['dataset']} ({largest['metric']})" if largest is not None else ""})
    return pd.DataFrame(rows, columns=SUMMARY)


def applies(records: Sequence[ScoreRecord]) -> bool:
    """A sweep always reports on reproduction: when nothing has a published counterpart, it says so."""
    return bool(records)


LABELLED = 8  # a panel names the datasets of its largest differences, at most this many
LABEL_GAP = 0.05  # the least distance between two labels, as a fraction of the panel's height


def spread(positions: Sequence[float], gap: float = LABEL_GAP) -> list[float]:
    """Label heights (fractions of the panel, in the order given) as close as they can be to `positions` with at
    least `gap` between any two and all within [0, 1]: pushed up past their lower neighbour, then back down from
    the top."""
    order = sorted(range(len(positions)), key=lambda i: positions[i])
    placed = [min(max(positions[i], 0.0), 1.0) for i in order]
    for k in range(1, len(placed)):
        placed[k] = max(placed[k], placed[k - 1] + gap)
    for k in range(len(placed) - 1, -1, -1):
        ceiling = 1.0 if k == len(placed) - 1 else placed[k + 1] - gap
        placed[k] = max(min(placed[k], ceiling), 0.0)
    heights = [0.0] * len(positions)
    for k, i in enumerate(order):
        heights[i] = placed[k]
    return heights


def worst_by_dataset(rows: pd.DataFrame, limit: int = LABELLED) -> pd.DataFrame:
    """The differing results a panel names: each dataset once, at its largest |delta|, with how many of its
    results differ (`count`), the `limit` largest first."""
    differing = rows[rows["verdict"] == DIFFERS]
    if differing.empty:
        return differing.assign(count=pd.Series(dtype=int))
    worst = differing.loc[differing.groupby("dataset")["delta"].apply(lambda d: d.abs().idxmax())]
    worst = worst.assign(count=differing.groupby("dataset").size().reindex(worst["dataset"]).to_numpy())
    return worst.reindex(worst["delta"].abs().sort_values(ascending=False).index).head(limit)


def figure(table: pd.DataFrame):
    """Ours against published, one panel per reference: each result with its interval, the line y = x, and the
    datasets that differ most named in a column beside the panel, each label joined to its point (labels never
    cover each other or the points)."""
    plt = plots.pyplot()

    shown = table[table["verdict"] != NOT_COMPARABLE]
    panels = list(shown.groupby("reference", sort=False))
    fig, axes = plt.subplots(1, len(panels), figsize=(8.8 * len(panels), 6.5), squeeze=False)
    colours = {REPRODUCED: "C0", DIFFERS: "C3"}
    for ax, (reference, rows) in zip(axes[0], panels):
        low = min(rows["published"].min(), rows["ours"].min())
        high = max(rows["published"].max(), rows["ours"].max())
        pad = 0.05 * max(high - low, 0.02)
        ax.plot([low - pad, high + pad], [low - pad, high + pad], color="black", linewidth=0.8, linestyle="--",
                label="y = x")
        for outcome, group in rows.groupby("verdict"):
            errors = np.abs(np.stack([group["ours"] - group["ci_low"], group["ci_high"] - group["ours"]]))
            ax.errorbar(group["published"], group["ours"], yerr=np.nan_to_num(errors.astype(float)), fmt="o",
                        markersize=4, capsize=2, linewidth=0.8, color=colours[outcome],
                        label=f"{outcome} ({len(group)})")
        ax.set_xlim(low - pad, high + pad)
        ax.set_ylim(low - pad, high + pad)
        ax.set_aspect("equal")
        worst = worst_by_dataset(rows)
        heights = spread([(y - (low - pad)) / (high - low + 2 * pad) for y in worst["ours"]])
        for (_, row), height in zip(worst.iterrows(), heights):
            count = f" ×{row['count']}" if row["count"] > 1 else ""
            ax.annotate(f"{row['dataset'].split('/')[-1]}{count}: {row['delta']:+.3f}", (row["published"], row["ours"]),
                        xytext=(1.03, height), textcoords="axes fraction", fontsize=7, va="center",
                        arrowprops={"arrowstyle": "-", "color": "C3", "linewidth": 0.5, "alpha": 0.6})
        ax.set_xlabel(f"published ({reference})")
        ax.set_ylabel("ours")
        named = f"; named: the {len(worst)} datasets that differ most (×n results, largest delta)" if len(worst) else ""
        ax.set_title(f"{references.REFERENCES[reference].title}{named}", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="upper left")
    fig.suptitle("Does it reproduce? Each result against the published value (whiskers: our 95 % interval)")
    fig.tight_layout()
    return fig


def plot(table: pd.DataFrame, path: Path) -> Path:
    plt = plots.pyplot()
    fig = figure(table)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def described(report: Reproduction, chosen: Sequence[Reference]) -> str:
    """One line that says what was compared, and how many results had no published counterpart."""
    names = ", ".join(reference.name for reference in chosen)
    return (f"{report.results - report.without_counterpart} of {report.results} results have a published "
            f"counterpart in {names}; {report.without_counterpart} have none")


def nothing_to_compare(report: Reproduction, chosen: Sequence[Reference]) -> PipelineError:
    return PipelineError(f"none of the {report.results} results has a published counterpart in "
                         f"{', '.join(r.name for r in chosen)} (the same model, weights and dataset); the references "
                         f"list their models in pipeline/reports/published/")
