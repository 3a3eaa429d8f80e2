"""The CLIP paper's zero-shot against few-shot comparison (Figures 6-7): per model and dataset, the k-shot probes'
mean and standard deviation over seeds, the full probe, the zero-shot result, and the number of shots per class
at which a probe matches zero-shot. Pure functions from score records to a table, and a plot of it."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from pipeline.reports import plots
from pipeline.reports.results import ScoreRecord
from pipeline.stages.heads import ALL_SHOTS, LINEAR_PROBE, ZEROSHOT

GROUP = ["model", "pretrained", "protocol", "dataset", "source", "features"]
SHOTS = re.compile(r"\d+-shot")
ZERO_SHOT_COLUMN, FULL_COLUMN, MATCH_COLUMN = "zero-shot", "full probe", "zero-shot matches"


def setting(record: ScoreRecord) -> tuple[str, ...]:
    """What a probe and a zero-shot result must share to be compared: the model, the protocol and the data."""
    return (record.model, record.pretrained, record.protocol, record.dataset, record.source)


def zero_shot_partners(records: Iterable[ScoreRecord], candidates: Iterable[ScoreRecord]) -> list[ScoreRecord]:
    """The zero-shot results among `candidates` (e.g. a store's) in a setting where `records` hold probes and no
    zero-shot result: a probe sweep is compared with the zero-shot runs made before it."""
    records = list(records)
    covered = {setting(r) for r in records if r.head == ZEROSHOT}
    wanted = {setting(r) for r in records if r.head == LINEAR_PROBE} - covered
    return [r for r in candidates if r.head == ZEROSHOT and setting(r) in wanted]


def shots_column(k: int) -> str:
    return f"{k}-shot"


def matching_shots(shots: list[int], means: list[float], zero_shot: float) -> str:
    """Shots per class at which the probe's mean curve first reaches zero-shot, interpolated linearly in log2(k) as
    in the paper's Figure 7; `< k_min` or `> k_max` outside the curve, empty without a zero-shot result."""
    if math.isnan(zero_shot) or not shots:
        return ""
    if means[0] >= zero_shot:
        return f"< {shots[0]}" if means[0] > zero_shot else str(shots[0])
    for (k0, m0), (k1, m1) in zip(zip(shots, means), zip(shots[1:], means[1:])):
        if m1 >= zero_shot:
            t = (zero_shot - m0) / (m1 - m0)
            return f"{2 ** (math.log2(k0) + t * (math.log2(k1) - math.log2(k0))):.1f}"
    return f"> {shots[-1]}"


def comparison(records: Iterable[ScoreRecord], metric: str) -> pd.DataFrame:
    """A row per (model, pretrained, protocol, dataset, source, probe features) with probe results: zero-shot (the
    best prompt set's, named), each k-shot mean and std over seeds, the full probe, the seeds, and the match."""
    records = list(records)
    probes: dict[tuple, dict[str, list[float]]] = {}
    for r in records:
        if r.head == LINEAR_PROBE and not r.is_external:  # result files do not say how many shots they used
            key = (*setting(r), r.features)
            probes.setdefault(key, {}).setdefault(r.k_shot, []).append(r.value(metric))
    zero_shot: dict[tuple, tuple[float, str]] = {}
    for r in records:
        if r.head == ZEROSHOT and r.task == "zeroshot_classification":
            key, value = setting(r), r.value(metric)
            if key not in zero_shot or value > zero_shot[key][0] or math.isnan(zero_shot[key][0]):
                zero_shot[key] = (value, r.prompts)
    all_shots = sorted({int(k) for runs in probes.values() for k in runs if k != ALL_SHOTS})
    rows = []
    for key, runs in probes.items():
        zs, prompts = zero_shot.get(key[:5], (math.nan, ""))
        row = dict(zip(GROUP, key), prompts=prompts, **{ZERO_SHOT_COLUMN: zs})
        for k in all_shots:
            values = runs.get(str(k), [])
            row[shots_column(k)] = float(np.mean(values)) if values else math.nan
            row[shots_column(k) + " std"] = float(np.std(values)) if values else math.nan
        full = runs.get(ALL_SHOTS, [])
        row[FULL_COLUMN] = float(np.mean(full)) if full else math.nan
        row["seeds"] = max(len(values) for values in runs.values())
        curve = [(k, row[shots_column(k)]) for k in all_shots if not math.isnan(row[shots_column(k)])]
        row[MATCH_COLUMN] = matching_shots([k for k, _ in curve], [m for _, m in curve], zs)
        rows.append(row)
    return pd.DataFrame(rows)


def plot(table: pd.DataFrame, metric: str, path: Path) -> Path:
    """One panel per dataset: each probe's k-shot mean ± std against k (log2 axis), its full probe as a dotted
    line, and zero-shot as a dashed line in the same colour."""
    plt = plots.pyplot()

    datasets = list(dict.fromkeys(table["dataset"]))
    shots = [int(c.removesuffix("-shot")) for c in table.columns if SHOTS.fullmatch(c)]
    columns = min(3, len(datasets))
    rows = math.ceil(len(datasets) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.6 * rows), squeeze=False)
    label = "main metric" if metric == "main" else metric
    for ax, dataset in zip(axes.flat, datasets):
        for index, (_, row) in enumerate(table[table["dataset"] == dataset].iterrows()):
            colour = f"C{index % 10}"
            name = f"{row['model']} / {row['pretrained']} / {row['protocol']} ({row['features']})"
            means = [row[shots_column(k)] for k in shots]
            stds = [row[shots_column(k) + " std"] for k in shots]
            if shots:
                ax.errorbar(shots, means, yerr=stds, marker="o", capsize=3, color=colour, label=f"{name}: k-shot probe")
            if not math.isnan(row[FULL_COLUMN]):
                ax.axhline(row[FULL_COLUMN], color=colour, linestyle=":", label=f"{name}: full probe")
            if not math.isnan(row[ZERO_SHOT_COLUMN]):
                ax.axhline(row[ZERO_SHOT_COLUMN], color=colour, linestyle="--",
                           label=f"{name}: zero-shot ({row['prompts']}), matches {row[MATCH_COLUMN]}-shot")
        if shots:  # full probes alone are horizontal lines, with no k axis
            ax.set_xscale("log", base=2)
            ax.set_xticks(shots, [str(k) for k in shots])
            ax.set_xlabel("labelled examples per class")
        ax.set_ylabel(label)
        ax.set_title(dataset)
    for ax in list(axes.flat)[len(datasets):]:
        ax.axis("off")
    legend: dict[str, object] = {}
    for ax in axes.flat:
        for handle, text in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(text, handle)
    fig.suptitle(f"zero-shot against k-shot linear probes ({label}; mean ± std over seeds)")
    fig.tight_layout()
    fig.legend(list(legend.values()), list(legend), loc="upper center", bbox_to_anchor=(0.5, 0.0),
               fontsize="small", frameon=False)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
