"""Metrics over training: a sweep over the checkpoints of one training run (`model.pretrained=<dir>/epoch_1.pt,
<dir>/epoch_2.pt,...`) as a table and a plot of each dataset's metric against the checkpoint's epoch or step.

A checkpoint's position is read by the job (`job_run.checkpoint_position`: its file name, else the `epoch`/`step`
open_clip's trainer saves in it) and kept as job-run tags, so this module only reads records.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

from pipeline.reports import plots, tables
from pipeline.reports.results import ScoreRecord

GROUP = ["model", "checkpoint_run", "protocol", "prompts", "head"]


def position_of(record: ScoreRecord) -> dict[str, float]:
    return {name: float(record.tags[f"checkpoint_{name}"]) for name in ("epoch", "step")
            if f"checkpoint_{name}" in record.tags}


def applies(records: Iterable[ScoreRecord]) -> bool:
    """Whether two or more checkpoints of one training run were evaluated."""
    table = frame(records, "main")
    return not table.empty and table.groupby(GROUP)["checkpoint"].nunique().max() > 1


def frame(records: Iterable[ScoreRecord], metric: str) -> pd.DataFrame:
    """A row per checkpoint (and prompt set, head, protocol), a column per dataset, then the mean; `epoch` and
    `step` where known."""
    rows = []
    for r in records:
        position = position_of(r)
        if not position:
            continue
        rows.append({"model": r.model, "checkpoint_run": r.tags.get("checkpoint_run", ""), "protocol": r.protocol,
                     "prompts": r.prompts, "head": r.head_label, "checkpoint": r.pretrained, **position,
                     "dataset": r.dataset, "value": r.value(metric)})
    if not rows:
        return pd.DataFrame()
    long = pd.DataFrame(rows)
    index = GROUP + ["checkpoint"] + [c for c in ("epoch", "step") if c in long.columns]
    wide = long.groupby(index + ["dataset"], dropna=False)["value"].mean().unstack("dataset")
    wide[tables.MEAN_COLUMN] = wide.mean(axis=1, skipna=False)
    wide = wide.reset_index()
    for position in ("epoch", "step"):  # a step is a count: 300, not 300.0000
        if position in wide.columns and (wide[position].dropna() % 1 == 0).all():
            wide[position] = wide[position].astype("Int64")
    return wide.sort_values(GROUP + [axis_of(wide)]).reset_index(drop=True)


def axis_of(table: pd.DataFrame) -> str:
    """The step where every checkpoint has one (finer than epochs), else the epoch."""
    return "step" if "step" in table.columns and table["step"].notna().all() else "epoch"


def plot(table: pd.DataFrame, metric: str, path: Path) -> Path:
    """One panel per training run (and prompt set, head, protocol): a line per dataset and the mean."""
    plt = plots.pyplot()
    from matplotlib.ticker import MaxNLocator

    axis = axis_of(table)
    value_columns = [c for c in table.columns if c not in GROUP + ["checkpoint", "epoch", "step"]]
    if len(value_columns) == 2:  # one dataset: its mean is the same line
        value_columns.remove(tables.MEAN_COLUMN)
    panels = list(table.groupby(GROUP, sort=False))
    fig, axes = plt.subplots(len(panels), 1, squeeze=False, figsize=(8, 3.8 * len(panels)))
    for ax, (group, rows) in zip(axes[:, 0], panels):
        for column in value_columns:
            mean = column == tables.MEAN_COLUMN
            ax.plot(rows[axis].astype(float), rows[column], marker="o", markersize=3, label=column,
                    linewidth=2.5 if mean else 1.2, color="black" if mean else None)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(axis)
        ax.set_ylabel(tables.metric_label(metric))
        ax.set_title(" / ".join(map(str, group)))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("Zero-shot performance over training")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
