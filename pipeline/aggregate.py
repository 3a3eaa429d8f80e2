"""Aggregate stage: tables (one row per model, one column per dataset, plus the mean) from score runs in MLflow.

It runs by itself at the end of every multirun (`AggregateCallback`), and
`python -m pipeline.aggregate` rebuilds the tables from everything in the tracking store.
"""
from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import hydra
import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pipeline import PipelineError, tracking
from pipeline.cache import mlflow_metric_name
from pipeline.job import RESULT_FILE, headline_metric
from pipeline.tracking import TrackingStore

log = logging.getLogger(__name__)

ROW_KEYS = ["model", "pretrained"]
MEAN_COLUMN = "mean"


@dataclass(frozen=True)
class ScoreRecord:
    """One score run as the tables see it."""

    model: str
    pretrained: str
    dataset: str
    prompts: str
    main_metric: str
    metrics: Mapping[str, float]
    run_id: str
    start_time: int


def _record(run) -> ScoreRecord:
    tags = run.data.tags
    return ScoreRecord(tags["model"], tags["pretrained"], tags["dataset"], tags["prompts"],
                       tags.get("main_metric", "acc1"), dict(run.data.metrics), run.info.run_id, run.info.start_time)


def scores_by_run_id(store: TrackingStore, run_ids: Iterable[str]) -> list[ScoreRecord]:
    client = store.client
    return [_record(client.get_run(run_id)) for run_id in run_ids]


def latest_scores(store: TrackingStore) -> list[ScoreRecord]:
    """The newest FINISHED score run for each (model, pretrained, dataset, prompts) in the store."""
    runs = store.client.search_runs(
        [store.experiment_id], filter_string="tags.stage = 'score' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=50000,
    )
    newest: dict[tuple[str, ...], ScoreRecord] = {}
    for record in map(_record, runs):
        newest.setdefault((record.model, record.pretrained, record.dataset, record.prompts), record)
    return list(newest.values())


def build_table(records: Iterable[ScoreRecord], metric: str) -> pd.DataFrame:
    """Rows (model, pretrained), one column per dataset in first-seen order, then the unweighted mean.

    `metric="main"` takes each dataset's own main metric. The mean is left empty (NaN) for a
    row that lacks a dataset or whose metric is undefined there, rather than averaging fewer.
    """
    rows = [{"model": r.model, "pretrained": r.pretrained, "dataset": r.dataset,
             "value": r.metrics.get(mlflow_metric_name(headline_metric(metric, r.main_metric)), math.nan)}
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
    sections = [f"### {metric} — prompts: {prompts}\n\n{table.to_markdown(index=False, floatfmt='.4f')}\n"
                for prompts, table in tables.items()]
    return "\n".join(sections)


def plot(tables: Mapping[str, pd.DataFrame], metric: str, path: Path) -> Path:
    """A grouped bar chart: one group per dataset (and the mean), one bar per (model, prompts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {}
    for prompts, table in tables.items():
        for _, row in table.iterrows():
            label = f"{row['model']} / {row['pretrained']} / {prompts}"
            series[label] = row.drop(ROW_KEYS)
    frame = pd.DataFrame(series).astype(float)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(frame.index) + 0.4 * len(series)), 4.5))
    frame.plot.bar(ax=ax, rot=30)
    ax.set_ylabel(metric)
    ax.set_title(f"zero-shot {metric}")
    ax.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_tables(tables: Mapping[str, pd.DataFrame], metric: str, out_dir: Path) -> list[Path]:
    """table.csv (all prompt sets, with a `prompts` column), table.md and table.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    combined = pd.concat([t.assign(prompts=p) for p, t in tables.items()], ignore_index=True)
    combined = combined[["prompts"] + [c for c in combined.columns if c != "prompts"]]
    csv_path, md_path = out_dir / "table.csv", out_dir / "table.md"
    combined.to_csv(csv_path, index=False, float_format="%.4f")
    md_path.write_text(to_markdown(tables, metric))
    return [csv_path, md_path, plot(tables, metric, out_dir / "table.png")]


def log_aggregate_run(store: TrackingStore, files: list[Path], tags: Mapping[str, str]) -> str:
    client = store.client
    run = client.create_run(store.experiment_id, tags={**tags, "stage": "aggregate"}, run_name="aggregate")
    try:
        for path in files:
            client.log_artifact(run.info.run_id, str(path))
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def aggregate(store: TrackingStore, records: list[ScoreRecord], metric: str, out_dir: Path,
              tags: Mapping[str, str]) -> dict[str, pd.DataFrame]:
    """Build, write, log and print the tables for `records`."""
    if not records:
        raise PipelineError(f"no finished score runs found in {store.uri}; run `python -m pipeline` first")
    tables = build_tables(records, metric)
    files = write_tables(tables, metric, out_dir)
    log_aggregate_run(store, files, {**tags, "metric": metric})
    print(f"\n{to_markdown(tables, metric)}\nTables written to {out_dir}", flush=True)
    return tables


def sweep_run_ids(sweep_dir: Path) -> list[str]:
    """Score run ids recorded by the jobs of one sweep (Hydra gives the callback no job results)."""
    return [json.loads(path.read_text())["score_run_id"] for path in sorted(Path(sweep_dir).glob(f"*/{RESULT_FILE}"))]


class AggregateCallback(Callback):
    """Hydra callback: prepare the tracking store before a multirun, write its tables after."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Created once here, so parallel jobs never race to create the schema or experiment.
        tracking.connect_cfg(config.tracking)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        run_ids = sweep_run_ids(sweep_dir)
        if not run_ids:
            log.warning("no job of sweep %s finished; no table written", sweep_dir)
            return
        store = tracking.connect_cfg(config.tracking)
        aggregate(store, scores_by_run_id(store, run_ids), config.metric.name, sweep_dir, {"sweep_dir": str(sweep_dir)})


@hydra.main(config_path="../conf", config_name="aggregate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    store = tracking.connect_cfg(cfg.tracking)
    aggregate(store, latest_scores(store), cfg.metric.name, Path(cfg.output_dir), {"source": "tracking_store"})


if __name__ == "__main__":
    main()
