"""Aggregate stage: results tables from score records, written to outputs/ and logged to an MLflow `aggregate` run.

It runs by itself at the end of every multirun (`AggregateCallback`), and `python -m pipeline.aggregate`
rebuilds any layout from the tracking store, or from result files produced elsewhere (`results_dir=`).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import hydra
from hydra.experimental.callback import Callback
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from pipeline import (PipelineError, comparisons, fewshot, layouts, one_line, prompt_gains, report, results,
                      robustness, sweep, tables, tracking, training_curves, ui)
from pipeline.artifacts import ArtifactUnavailable, CorruptArtifact
from pipeline.cli import reported, reported_hook
from pipeline.explain import grids
from pipeline.explain.job import KIND
from pipeline.results import ScoreRecord
from pipeline.tracking import PARENT_TAG, TrackingStore

log = logging.getLogger(__name__)


@contextmanager
def aggregate_run(store: TrackingStore, tags: Mapping[str, str], parent_run_id: str | None = None) -> Iterator[str]:
    """The `aggregate` run whose artifacts are every file written; a child of the sweep's run after a multirun."""
    tags = {**tags, "stage": "aggregate", **({PARENT_TAG: parent_run_id} if parent_run_id else {})}
    with tracking.finished_run(store, tags, "aggregate") as run_id:
        yield run_id


def log_files(store: TrackingStore, run_id: str, files: list[Path]) -> None:
    for path in files:
        store.client.log_artifact(run_id, str(path))


def sweep_run_ids(sweep_dir: Path) -> list[str]:
    """Job run ids recorded by the scoring jobs of one sweep."""
    return [job["job_run_id"] for job in sweep.job_results(sweep_dir, "score")]


def sweep_layouts(records: list[ScoreRecord]) -> list[str]:
    """The layouts a sweep's results call for, beyond the per-prompt-set tables."""
    wanted = [("openclip38", any(map(tables.openclip38_eligible, records))),
              ("fewshot", layouts.has_probes(records)),
              ("prompt_gains", prompt_gains.applies(records)),
              ("robustness", robustness.covers(records)),
              ("training_curves", training_curves.applies(records))]
    return [name for name, applies in wanted if applies]


def jobs_view(store: TrackingStore, sweep_run: str) -> str:
    """A saved view of the runs table listing this sweep's job runs with their metric columns (a link alone cannot
    choose columns)."""
    client = store.client
    search = f"{ui.JOB_FILTER} and tags.`{PARENT_TAG}` = '{sweep_run}'"
    return ui.share_view(client, store.experiment_id, f"sweep-{sweep_run}", search,
                         ui.job_metric_columns(client, store.experiment_id, search))


def write_report(out_dir: Path, title: str, written: Mapping[str, list[Path]], records: list[ScoreRecord],
                 store: TrackingStore, ui_url: str, sweep_run: str | None, aggregate: str) -> Path:
    sections = [report.Section(layouts.TITLES[name], [f for f in files if f.suffix in (".csv", ".png")])
                for name, files in written.items()]
    view = jobs_view(store, sweep_run) if sweep_run and records else None  # explain jobs have no metric columns
    links = report.Links(ui_url, store.experiment_id, sweep_run, aggregate, view)
    return report.write(out_dir / report.REPORT_FILE, title, sections, records, links)


class AggregateCallback(Callback):
    """Hydra callback: prepare the tracking store and the sweep's run before a multirun; write its tables, plots
    and report after, as artifacts of an aggregate run under the sweep's run."""

    @reported_hook("preparing the sweep")
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Created once here, so parallel jobs never race to create the schema or experiment.
        store = tracking.connect_cfg(config.tracking)
        sweep.start(store, Path(config.hydra.sweep.dir))

    @reported_hook("the sweep's aggregate step")
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        store = tracking.connect_cfg(config.tracking)
        sweep_run = sweep.recorded(sweep_dir, store)
        run_ids, explained = sweep_run_ids(sweep_dir), sweep.job_results(sweep_dir, KIND)
        if not run_ids and not explained:
            log.warning("no job of sweep %s finished; no table written", sweep_dir)
            if sweep_run:
                sweep.finish(store, sweep_run, "FAILED")
            return
        records = results.from_runs(store, run_ids)
        metric = config.metric.name
        with aggregate_run(store, {"sweep_dir": str(sweep_dir), "metric": metric}, sweep_run) as run_id:
            written, markdown = sweep_tables(records, metric, sweep_dir, store) if records else ({}, "")
            if explained:
                try:
                    written["relevance"] = grids.write_grids(store, explained, sweep_dir)
                except (PipelineError, CorruptArtifact, ArtifactUnavailable, MlflowException) as exc:
                    log.warning("no relevance grid for this sweep: %s", one_line(exc))
            page = write_report(sweep_dir, f"Sweep {sweep_dir.parent.name}/{sweep_dir.name}", written, records, store,
                                str(config.tracking.get("ui_url") or store.uri), sweep_run, run_id)
            log_files(store, run_id, [f for files in written.values() for f in files] + [page])
        if sweep_run:
            sweep.finish(store, sweep_run)
        print(f"\n{markdown}\nTables, plots and {page.name} written to {sweep_dir}", flush=True)


def sweep_tables(records: list[ScoreRecord], metric: str, sweep_dir: Path, store: TrackingStore
                 ) -> tuple[dict[str, list[Path]], str]:
    """The per-prompt-set tables and every layout the sweep's results call for: their files by layout, and the
    markdown printed at the end."""
    replicates = results.replicate_loader(store)
    written: dict[str, list[Path]] = {}
    files, markdown = layouts.write_layout(records, "per_prompts", metric, sweep_dir)
    written["per_prompts"] = files
    for layout in sweep_layouts(records):
        compared = records
        if layout == "fewshot":
            compared = records + fewshot.zero_shot_partners(records, results.latest_in_store(store))
        try:
            files, more = layouts.write_layout(compared, layout, metric, sweep_dir, replicates=replicates, store=store)
        except PipelineError as exc:  # a report the results cannot make costs that report, not the others
            log.warning("no %s report for this sweep: %s", layout, exc)
            continue
        written[layout] = files
        markdown += "\n" + more
    return written, markdown


def warn_without_replicates(records: list[ScoreRecord], replicates: comparisons.Replicates) -> None:
    """Name the results whose intervals will stay empty, rather than leave blank cells unexplained."""
    missing = [r for r in records if not r.is_external and not replicates(r).replicates]
    if missing:
        log.warning("%d result(s) were scored before intervals existed (e.g. %s on %s, job run %s): their intervals "
                    "stay empty; rerun those jobs to add them (only the score stage is recomputed)", len(missing),
                    missing[0].model, missing[0].dataset, missing[0].run_id)


def select(records: list[ScoreRecord], prompts: str | None, protocol: str | None) -> list[ScoreRecord]:
    """One prompt set's results (with the prompt-free tasks' and result files'), one protocol's (and result files')."""
    if prompts:
        records = [r for r in records if r.prompts in (prompts, tables.ANY_PROMPTS, results.EXTERNAL_PROMPTS)]
    if protocol:
        records = [r for r in records if r.protocol == protocol or r.is_external]
    return records


@hydra.main(config_path="../conf", config_name="aggregate", version_base="1.3")
@reported
def main(cfg: DictConfig) -> None:
    store = tracking.connect_cfg(cfg.tracking)
    # The robustness layout reads its ImageNet-trained baseline models from results_dir; its points from the store.
    if cfg.results_dir and cfg.layout != "robustness":
        records = results.from_directory(Path(cfg.results_dir))
        source = str(cfg.results_dir)
    else:
        records = results.latest_in_store(store)
        source = store.uri
    records = select(records, cfg.prompts.name if cfg.get("prompts") else None,
                     cfg.protocol.name if cfg.get("protocol") else None)
    if not records:
        raise PipelineError(f"no finished job runs found in {source}; run `python -m pipeline` first")
    output = Path(cfg.output).resolve() if cfg.output else None
    wants_replicates = (cfg.intervals or cfg.layout in ("compare", "prompt_gains")) and not cfg.results_dir
    replicates = results.replicate_loader(store) if wants_replicates else None
    if cfg.intervals and cfg.results_dir:
        log.warning("intervals=true: result files (results_dir=) carry no bootstrap replicates; no interval is shown")
    if replicates is not None:
        warn_without_replicates(records, replicates)
    baseline = (robustness_baseline(cfg) if cfg.layout == "robustness" else
                OmegaConf.to_container(cfg.baseline) if OmegaConf.is_config(cfg.baseline) else cfg.baseline)
    out_dir = Path(cfg.output_dir)
    with aggregate_run(store, {"source": source, "layout": cfg.layout, "metric": cfg.metric.name}) as run_id:
        files, markdown = layouts.write_layout(records, cfg.layout, cfg.metric.name, out_dir, output, cfg.mean_row,
                                               replicates, baseline, store)
        page = write_report(out_dir, f"{layouts.TITLES[cfg.layout]} ({source})", {cfg.layout: files}, records, store,
                            str(cfg.tracking.get("ui_url") or store.uri), None, run_id)
        log_files(store, run_id, files + [page])
    print(f"\n{markdown}\nWritten: {', '.join(map(str, files + [page]))}", flush=True)


def robustness_baseline(cfg: DictConfig) -> robustness.Baseline:
    """The ImageNet models' fit: from the results in `results_dir` when given, else the bundled published points."""
    if not cfg.results_dir:
        return robustness.bundled_baseline()
    return robustness.baseline_from_records(results.from_directory(Path(cfg.results_dir)), str(cfg.results_dir))


if __name__ == "__main__":
    main()
