"""Uncertainty in the tables (issue 11), pure functions from score records (and their bootstrap replicates) to
DataFrames: `results.csv` (every metric with its interval), tables whose cells carry `[low, high]`, and paired
comparisons against a baseline, per dataset and for the averages over datasets."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import pandas as pd

from pipeline.data.prompts import PROMPT_FREE
from pipeline.errors import PipelineError
from pipeline.reports import heatmap, plots, tables
from pipeline.reports.results import Bootstrap, ScoreRecord
from pipeline.reports.tables import MEAN_COLUMN, WEIGHTED_COLUMN
from pipeline.stages.score import ties, uncertainty

Replicates = Callable[[ScoreRecord], Bootstrap]
RESULT_KEYS = ["model", "pretrained", "dataset", "source", "protocol", "prompts", "head", "k_shot", "seed", "features",
               "language"]
BASELINE_FIELDS = ("model", "pretrained", "protocol", "prompts", "head", "k_shot", "seed", "features", "source",
                   "language")


# Counts a score logs beside its metrics: the resampled units (`n`: samples, images or games) and the sizes that
# describe the data. results.csv gives them as columns of each result, never as metrics.
UNIT_COUNTS = ("num_samples", "num_images", "num_games")
COUNT_COLUMNS = {"num_classes": "classes", "num_captions": "captions", "skipped_samples": "skipped"}
# The outcomes a tie decided (`pipeline/stages/score/ties.py`): a column of results.csv, and so of the report, only where
# some result has one.
TIES_COLUMNS = {ties.TIES: "ties"}


def base_metrics(record: ScoreRecord) -> list[str]:
    """A record's metrics, without interval bounds and counts."""
    skip = {uncertainty.N_METRIC, "ci_low", "ci_high", *UNIT_COUNTS, *COUNT_COLUMNS, *TIES_COLUMNS}
    return [m for m in record.metrics if m not in skip and not m.startswith((uncertainty.CI_LOW, uncertainty.CI_HIGH))]


def results_frame(records: Iterable[ScoreRecord]) -> pd.DataFrame:
    """`results.csv`: one row per (result, metric) with value, ci_low, ci_high, and the result's counts as columns:
    n (the resampled units), classes, captions, skipped samples (empty where unknown or not applicable), and the
    outcomes a tie decided (`ties`) where any result has one."""
    records = list(records)
    counted = dict(COUNT_COLUMNS)
    if any(r.metrics.get(name, 0) > 0 for r in records for name in TIES_COLUMNS):
        counted.update(TIES_COLUMNS)
    rows = []
    for r in records:
        labels = dict(zip(RESULT_KEYS, (r.model, r.pretrained, r.dataset, r.source, r.protocol, r.prompts,
                                        r.head, r.k_shot, r.seed, r.features, r.language)))
        counts = {"n": r.units, **{column: r.metrics.get(name, math.nan) for name, column in counted.items()}}
        for metric in base_metrics(r):
            rows.append({**labels, "metric": metric, "value": r.metrics[metric],
                         "ci_low": r.metrics.get(uncertainty.CI_LOW + metric, math.nan),
                         "ci_high": r.metrics.get(uncertainty.CI_HIGH + metric, math.nan), **counts})
    columns = RESULT_KEYS + ["metric", "value", "ci_low", "ci_high", "n", *counted.values()]
    return pd.DataFrame(rows, columns=columns).astype({c: "Int64" for c in ["n", *counted.values()]})


def replicates_of(record: ScoreRecord, metric: str, replicates: Replicates) -> np.ndarray | None:
    name = record.main_metric if metric == "main" else metric
    found = replicates(record).replicates.get(name)
    return None if found is None else np.asarray(found, dtype=np.float64)


def cell(value: float, low: float, high: float) -> str:
    if math.isnan(value):
        return ""
    return f"{value:.4f}" if math.isnan(low) else f"{value:.4f} [{low:.4f}, {high:.4f}]"


# -- paired comparisons ------------------------------------------------------------------------------------
def parse_baseline(given: Mapping[str, str] | str | None) -> dict[str, str]:
    """The fields that make a result the baseline: `baseline=prompts:dataset`, or several as Hydra's dict,
    `baseline={model:ViT-B-32,pretrained:openai}`."""
    if isinstance(given, str):
        given = dict([given.replace("=", ":", 1).split(":", 1)]) if ":" in given or "=" in given else None
    pairs = {str(k).strip(): str(v).strip() for k, v in (given or {}).items()}
    if not pairs or not set(pairs) <= set(BASELINE_FIELDS):
        raise PipelineError(f"baseline={given!r}: name the baseline as baseline=field:value, or "
                            f"baseline={{field:value,field:value}}, with fields among {', '.join(BASELINE_FIELDS)}; "
                            f"e.g. baseline=prompts:dataset")
    return pairs


def field_value(record: ScoreRecord, field: str) -> str:
    return str(getattr(record, field))


def compare(records: Iterable[ScoreRecord], metric: str, baseline: Mapping[str, str],
            replicates: Replicates) -> pd.DataFrame:
    """Each result against the baseline result that differs only in the baseline's fields, on the same dataset:
    the difference (candidate − baseline), its paired-bootstrap interval and p-value, per dataset and for the
    plain and size-weighted means over the datasets both have. Prompt-free results (prompts `*`) are their own
    partner when the baseline names a prompt set, so averages over a whole suite keep them (difference 0)."""
    records = [r for r in records if not r.is_external]
    fixed = [f for f in BASELINE_FIELDS if f not in baseline]

    def context(r: ScoreRecord) -> tuple:
        return tuple(field_value(r, f) for f in fixed)

    def shared(r: ScoreRecord) -> bool:
        return all(field_value(r, f) == PROMPT_FREE for f in baseline)

    base = {(context(r), r.dataset): r for r in records if all(field_value(r, f) == v for f, v in baseline.items())}
    if not base:
        raise PipelineError(f"no result matches baseline {', '.join(f'{k}={v}' for k, v in baseline.items())}")
    groups: dict[tuple, list[tuple[ScoreRecord, ScoreRecord]]] = {}
    for r in records:
        if shared(r) or all(field_value(r, f) == v for f, v in baseline.items()):
            continue
        partner = base.get((context(r), r.dataset))
        if partner is not None:
            groups.setdefault((context(r), tuple(field_value(r, f) for f in baseline)), []).append((r, partner))
    for key, pairs in groups.items():
        done = {r.dataset for r, _ in pairs}
        pairs.extend((r, r) for r in records if shared(r) and context(r) == key[0] and r.dataset not in done)
    rows = []
    for (ctx, candidate), pairs in groups.items():
        label = ", ".join(f"{f}={v}" for f, v in zip(baseline, candidate))
        common = dict(zip(fixed, ctx), candidate=label, baseline=", ".join(f"{k}={v}" for k, v in baseline.items()))
        for r, b in sorted(pairs, key=lambda pair: pair[0].dataset):
            rows.append({**common, "dataset": r.dataset, **paired_row(r, b, metric, replicates)})
        if len(pairs) > 1:
            rows.extend({**common, "dataset": name, **row} for name, row in averaged_rows(pairs, metric, replicates))
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    # Settings every row shares (no probe swept, one source) only widen the table; the model always stays.
    constant = [f for f in fixed if f not in ("model", "pretrained", "protocol") and table[f].nunique() == 1]
    return table.drop(columns=constant)


def paired_row(candidate: ScoreRecord, baseline: ScoreRecord, metric: str, replicates: Replicates) -> dict:
    a, b = replicates_of(candidate, metric, replicates), replicates_of(baseline, metric, replicates)
    orders = replicates(candidate).order, replicates(baseline).order
    if candidate.units != baseline.units or (all(orders) and orders[0] != orders[1]):
        raise PipelineError(f"{candidate.dataset}: {candidate.run_id} and {baseline.run_id} were scored on different "
                            f"test samples (in another order, or numbers: {candidate.units:.0f}, "
                            f"{baseline.units:.0f}), so they cannot be paired; a result scored before samples were "
                            f"stored in the dataset's order (issue 35) pairs once its job is run again")
    return summary(candidate.value(metric), baseline.value(metric), a, b, candidate.units)


def averaged_rows(pairs: list[tuple[ScoreRecord, ScoreRecord]], metric: str, replicates: Replicates):
    sizes = [r.units for r, _ in pairs]
    candidate = means_over_datasets([replicates_of(r, metric, replicates) for r, _ in pairs], sizes)
    base = means_over_datasets([replicates_of(b, metric, replicates) for _, b in pairs], sizes)
    for name, weights in ((MEAN_COLUMN, None), (WEIGHTED_COLUMN, sizes)):
        if weights is not None and np.isnan(sizes).any():
            continue
        value = np.average([r.value(metric) for r, _ in pairs], weights=weights)
        base_value = np.average([b.value(metric) for _, b in pairs], weights=weights)
        yield f"{name} ({len(pairs)} datasets)", summary(value, base_value, candidate[name], base[name],
                                                          float(np.nansum(sizes)))


def means_over_datasets(per_dataset: list[np.ndarray | None], sizes: list[float]) -> dict[str, np.ndarray | None]:
    """Replicates of the plain and the size-weighted mean over datasets; None where a dataset has no replicates
    (or, weighted, no size)."""
    complete = bool(per_dataset) and all(x is not None for x in per_dataset)
    return {MEAN_COLUMN: uncertainty.mean_replicates(per_dataset) if complete else None,
            WEIGHTED_COLUMN: (uncertainty.mean_replicates(per_dataset, sizes)
                           if complete and not np.isnan(sizes).any() else None)}


def summary(value: float, base_value: float, a: np.ndarray | None, b: np.ndarray | None, n: float) -> dict:
    low, high, p = (math.nan,) * 3 if a is None or b is None else uncertainty.paired(a, b)
    significant = "" if math.isnan(low) else ("yes" if low > 0 or high < 0 else "no")
    return {"candidate value": value, "baseline value": base_value, "difference": value - base_value,
            "ci_low": low, "ci_high": high, "p": p, "significant": significant, "n": n if math.isnan(n) else int(n)}


# -- tables whose cells carry their interval --------------------------------------------------------------
@dataclass(frozen=True)
class Bounds:
    """`tables.build_table`'s layout three times: the values, and the low and high ends of their 95 % intervals
    (NaN where unknown)."""

    values: pd.DataFrame
    low: pd.DataFrame
    high: pd.DataFrame

    @property
    def value_columns(self) -> list[str]:
        return [c for c in self.values.columns if c not in tables.ROW_KEYS]


def own_interval(record: ScoreRecord, metric: str) -> tuple[float, float]:
    """The interval the score stage logged beside the metric (NaN for result files and older scores)."""
    name = record.main_metric if metric == "main" else metric
    return (float(record.metrics.get(uncertainty.CI_LOW + name, math.nan)),
            float(record.metrics.get(uncertainty.CI_HIGH + name, math.nan)))


def interval_bounds(records: Iterable[ScoreRecord], metric: str, replicates: Replicates | None = None) -> Bounds:
    """Every cell's interval: a result's own, the interval of the mean over seeds for a probe swept over seeds, and
    the plain and size-weighted means' intervals from the datasets' replicates. Without `replicates` each result
    keeps the interval its score logged, and averages (over seeds or datasets) have none."""
    records = list(records)
    values = tables.build_table(records, metric)
    labels = tables.dataset_labels(records)
    cells: dict[tuple, list[ScoreRecord]] = {}
    for r in records:
        label = labels[(r.dataset, r.source, r.language)]
        cells.setdefault((r.model, r.pretrained, r.protocol, r.head_label, label), []).append(r)
    datasets = [c for c in values.columns if c not in tables.ROW_KEYS + [MEAN_COLUMN, WEIGHTED_COLUMN]]
    low, high = values.copy(), values.copy()
    for i, row in values.iterrows():
        per_dataset, sizes = [], []
        for dataset in datasets:
            found = cells.get((*row[tables.ROW_KEYS], dataset), [])
            reps = [replicates_of(r, metric, replicates) for r in found] if replicates is not None else [None]
            joint = np.mean(reps, axis=0) if found and all(x is not None for x in reps) else None
            if joint is not None:
                bounds = uncertainty.interval(joint)
            else:
                bounds = own_interval(found[0], metric) if len(found) == 1 else (math.nan, math.nan)
            low.at[i, dataset], high.at[i, dataset] = bounds
            per_dataset.append(joint)
            sizes.append(found[0].units if found else math.nan)
        means = means_over_datasets(per_dataset, sizes)
        for column in (MEAN_COLUMN, WEIGHTED_COLUMN):
            bounds = uncertainty.interval(means[column]) if means[column] is not None else (math.nan, math.nan)
            low.at[i, column], high.at[i, column] = bounds
    return Bounds(values, low, high)


def interval_table(records: Iterable[ScoreRecord], metric: str, replicates: Replicates | None = None) -> pd.DataFrame:
    """`tables.build_table`'s layout with every cell as `value [low, high]` (see `interval_bounds`)."""
    bounds = interval_bounds(records, metric, replicates)
    out = bounds.values.astype(object)
    for column in bounds.value_columns:
        out[column] = [cell(v, lo, hi) for v, lo, hi in zip(bounds.values[column], bounds.low[column],
                                                              bounds.high[column])]
    return out


def plot(per_prompts: Mapping[str, Bounds], metric: str, path: Path) -> Path:
    """Each result as a dot with its 95 % interval as a whisker, one panel per dataset (and the mean, where its
    interval is known), rows labelled by what varies, each panel's axis fitted to its values: differences of a
    point stay visible where a 0–1 axis would flatten them."""
    plt = plots.pyplot()

    frames = {part: heatmap.combined_tables({p: getattr(b, part) for p, b in per_prompts.items()})
              for part in ("values", "low", "high")}
    labels = list(heatmap.row_labels(frames["values"]))
    columns = [c for c in frames["values"].columns if c not in tables.ROW_KEYS + ["prompts", WEIGHTED_COLUMN]]
    # The mean of one dataset is that dataset; a mean without an interval adds nothing to the table's column.
    if len(columns) == 2 or frames["high"][MEAN_COLUMN].isna().all():
        columns.remove(MEAN_COLUMN)
    wide = min(4, len(columns))
    grid = -(-len(columns) // wide)
    fig, axes = plt.subplots(grid, wide, squeeze=False, sharey=True,
                             figsize=(3.2 * wide + 2.5, max(1.6, 0.28 * len(labels) + 1.0) * grid))
    rows = np.arange(len(labels))
    for ax, column in zip(axes.flat, columns):
        value, low, high = (frames[part][column].to_numpy(dtype=float) for part in ("values", "low", "high"))
        errors = np.nan_to_num(np.abs(np.stack([value - low, high - value])))
        ax.errorbar(value, rows, xerr=errors, fmt="o", color="C0" if column != MEAN_COLUMN else "black",
                    markersize=4, capsize=2, linewidth=1)
        shown = np.concatenate([value, low, high])
        shown = shown[np.isfinite(shown)]
        if shown.size:
            span = max(float(shown.max() - shown.min()), 0.01)
            ax.set_xlim(float(shown.min()) - 0.15 * span, float(shown.max()) + 0.15 * span)
        ax.set_title(column, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    axes[0, 0].set_yticks(rows, labels)
    axes[0, 0].invert_yaxis()
    fig.suptitle(f"{tables.metric_label(metric)} with 95 % bootstrap intervals (each panel's axis fitted to its values)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
