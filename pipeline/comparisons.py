"""Uncertainty in the tables (issue 11), pure functions from score records (and their bootstrap replicates) to
DataFrames: `results.csv` (every metric with its interval), tables whose cells carry `[low, high]`, and paired
comparisons against a baseline, per dataset and for the averages over datasets."""
from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping

import numpy as np
import pandas as pd

from pipeline import PipelineError, uncertainty
from pipeline.results import Bootstrap, ScoreRecord

Replicates = Callable[[ScoreRecord], Bootstrap]
RESULT_KEYS = ["model", "pretrained", "dataset", "source", "protocol", "prompts", "head", "k_shot", "seed", "features"]
BASELINE_FIELDS = ("model", "pretrained", "protocol", "prompts", "head", "k_shot", "seed", "features", "source")
ANY = "*"  # a prompts value that belongs to every prompt set (retrieval, WinoGAViL)
MEAN_ROW, WEIGHTED_ROW = "mean", "size-weighted mean"


def base_metrics(record: ScoreRecord) -> list[str]:
    """A record's metrics, without interval bounds and counts."""
    skip = {uncertainty.N_METRIC, "ci_low", "ci_high"}
    return [m for m in record.metrics if m not in skip and not m.startswith((uncertainty.CI_LOW, uncertainty.CI_HIGH))]


def results_frame(records: Iterable[ScoreRecord]) -> pd.DataFrame:
    """`results.csv`: one row per (result, metric) with value, ci_low, ci_high and n (empty where unknown)."""
    rows = []
    for r in records:
        labels = dict(zip(RESULT_KEYS, (r.model, r.pretrained, r.dataset, r.source, r.protocol, r.prompts,
                                        r.head, r.k_shot, r.seed, r.features)))
        for metric in base_metrics(r):
            rows.append({**labels, "metric": metric, "value": r.metrics[metric],
                         "ci_low": r.metrics.get(uncertainty.CI_LOW + metric, math.nan),
                         "ci_high": r.metrics.get(uncertainty.CI_HIGH + metric, math.nan), "n": r.units})
    return pd.DataFrame(rows, columns=RESULT_KEYS + ["metric", "value", "ci_low", "ci_high", "n"])


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
        return all(field_value(r, f) == ANY for f in baseline)

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
        raise PipelineError(f"{candidate.dataset}: {candidate.run_id} and {baseline.run_id} were scored on the test "
                            f"samples in different orders (or numbers: {candidate.units:.0f}, {baseline.units:.0f}), so "
                            f"they cannot be paired; embed both with the same batch_size and num_workers")
    return summary(candidate.value(metric), baseline.value(metric), a, b, candidate.units)


def averaged_rows(pairs: list[tuple[ScoreRecord, ScoreRecord]], metric: str, replicates: Replicates):
    sizes = [r.units for r, _ in pairs]
    candidate = means_over_datasets([replicates_of(r, metric, replicates) for r, _ in pairs], sizes)
    base = means_over_datasets([replicates_of(b, metric, replicates) for _, b in pairs], sizes)
    for name, weights in ((MEAN_ROW, None), (WEIGHTED_ROW, sizes)):
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
    return {MEAN_ROW: uncertainty.mean_replicates(per_dataset) if complete else None,
            WEIGHTED_ROW: (uncertainty.mean_replicates(per_dataset, sizes)
                           if complete and not np.isnan(sizes).any() else None)}


def summary(value: float, base_value: float, a: np.ndarray | None, b: np.ndarray | None, n: float) -> dict:
    low, high, p = (math.nan,) * 3 if a is None or b is None else uncertainty.paired(a, b)
    significant = "" if math.isnan(low) else ("yes" if low > 0 or high < 0 else "no")
    return {"candidate value": value, "baseline value": base_value, "difference": value - base_value,
            "ci_low": low, "ci_high": high, "p": p, "significant": significant, "n": n if math.isnan(n) else int(n)}


# -- tables whose cells carry their interval --------------------------------------------------------------
def interval_table(records: Iterable[ScoreRecord], metric: str, replicates: Replicates) -> pd.DataFrame:
    """`tables.build_table`'s layout with every cell as `value [low, high]`: a result's own interval, the interval
    of the mean over seeds for a probe swept over seeds, and the plain and size-weighted means' intervals from the
    datasets' replicates."""
    from pipeline import tables

    records = list(records)
    numeric = tables.build_table(records, metric)
    labels = tables.dataset_labels(records)
    cells: dict[tuple, list[ScoreRecord]] = {}
    for r in records:
        key = (r.model, r.pretrained, r.protocol, r.head_label, labels[(r.dataset, r.source)])
        cells.setdefault(key, []).append(r)
    datasets = [c for c in numeric.columns if c not in tables.ROW_KEYS + [tables.MEAN_COLUMN, tables.WEIGHTED_COLUMN]]
    out = numeric.astype(object)
    for i, row in numeric.iterrows():
        per_dataset, sizes = [], []
        for dataset in datasets:
            found = cells.get((*row[tables.ROW_KEYS], dataset), [])
            reps = [replicates_of(r, metric, replicates) for r in found]
            joint = np.mean(reps, axis=0) if found and all(x is not None for x in reps) else None
            low, high = uncertainty.interval(joint) if joint is not None else (math.nan, math.nan)
            out.at[i, dataset] = cell(row[dataset], low, high)
            per_dataset.append(joint)
            sizes.append(found[0].units if found else math.nan)
        means = means_over_datasets(per_dataset, sizes)
        for column, name in ((tables.MEAN_COLUMN, MEAN_ROW), (tables.WEIGHTED_COLUMN, WEIGHTED_ROW)):
            bounds = uncertainty.interval(means[name]) if means[name] is not None else (math.nan, math.nan)
            out.at[i, column] = cell(row[column], *bounds)
    return out
