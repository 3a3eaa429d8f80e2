"""Aggregate stage: results tables from score records, written to outputs/ and logged to an MLflow `aggregate` run.

It runs by itself at the end of every multirun (`AggregateCallback`), and `python -m pipeline.aggregate`
rebuilds any layout from the tracking store, or from result files produced elsewhere (`results_dir=`).
"""
from __future__ import annotations

import logging
import sys
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator, Mapping

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pipeline import CONF_DIR
from pipeline.data.prompts import PROMPT_FREE
from pipeline.errors import PipelineError, check_sweep_choices, is_mlflow_error, one_line, reported, reported_hook
from pipeline.jobs import sweep
from pipeline.reports import comparisons, fewshot, layouts, page, plots, references, results, robustness
from pipeline.reports import sections as report_sections
from pipeline.reports import titles
from pipeline.reports.results import ScoreRecord
from pipeline.store import bulk, links, orphans, tracking
from pipeline.store.index import StoreIndex
from pipeline.store.artifacts import ArtifactUnavailable, CorruptArtifact
from pipeline.store.tracking import JOB_STAGE, PARENT_TAG, TrackingStore

log = logging.getLogger(__name__)


@contextmanager
def aggregate_run(store: TrackingStore, tags: Mapping[str, str], parent_run_id: str | None = None,
                  required: bool = True) -> Iterator[str | None]:
    """The `aggregate` run whose artifacts are every file written; a child of the sweep's run after a multirun.
    Where the store lets this user read but not write (`required=False`), the files are written all the same,
    without a run, and one line says so."""
    tags = {**tags, "stage": "aggregate", **({PARENT_TAG: parent_run_id} if parent_run_id else {})}
    with ExitStack() as stack:
        try:
            run_id = stack.enter_context(tracking.finished_run(store, tags, "aggregate"))
        except Exception as exc:
            if required or not is_mlflow_error(exc) or exc.error_code != "PERMISSION_DENIED":
                raise
            log.warning("written to the folder, not logged to the store: user %r has no EDIT on its experiment",
                        tracking.Credentials.from_env().username)
            run_id = None
        yield run_id


def log_files(store: TrackingStore, run_id: str | None, files: list[Path]) -> None:
    for path in files if run_id else ():
        store.client.log_artifact(run_id, str(path))


def sweep_run_ids(sweep_dir: Path) -> list[str]:
    """Job run ids recorded by the scoring jobs of one sweep."""
    return [job["job_run_id"] for job in sweep.job_results(sweep_dir, sweep.SCORE_KIND)]


def jobs_view(store: TrackingStore, sweep_run: str, records: list[ScoreRecord]) -> str:
    """A saved view of the runs table listing this sweep's job runs in the results table's order (each run tagged
    with its row), with what each ran and its main metric with its interval (a link alone cannot choose columns)."""
    ordered = titles.table_order(records)
    bulk.tag(store, {record.run_id: {links.TABLE_ROW_TAG: f"{row:05d}"} for row, record in enumerate(ordered)})
    indexed = StoreIndex.of(store).fetched([record.run_id for record in ordered])
    search = f"{links.JOB_FILTER} and tags.`{PARENT_TAG}` = '{sweep_run}'"
    return links.save_job_view(store.client, store.experiment_id, links.sweep_view_name(sweep_run), search,
                               order_by=f"tags.`{links.TABLE_ROW_TAG}`",
                               labelled=[(run.tags, run.metrics) for run in indexed.values()])


def ui_base(tracking_cfg: DictConfig, store: TrackingStore, overrides: list[str]) -> str:
    """Where the page's links point: `tracking.ui_url` when given on the command line, else where `make ui` last
    served this store, else the configured default."""
    configured = str(tracking_cfg.get("ui_url") or store.uri)
    if any(override.lstrip("+").startswith("tracking.ui_url=") for override in overrides):
        return configured
    return links.ui_base(store.client, store.experiment_id, configured)


def write_report(path: Path, title: str, sections: list[page.Section], records: list[ScoreRecord],
                 store: TrackingStore | None, ui_url: str, sweep_run: str | None, aggregate: str | None,
                 about: str) -> Path:
    found = None
    if store is not None:
        view = jobs_view(store, sweep_run, records) if sweep_run and records else None  # explain jobs: no metrics
        found = page.Links(ui_url, store.experiment_id, sweep_run, aggregate, view)
    return page.write(path, title, sections, records, found, about)


class AggregateCallback(Callback):
    """Hydra callback: prepare the tracking store and the sweep's run before a multirun; write its tables, plots
    and report after, as artifacts of an aggregate run under the sweep's run."""

    @reported_hook("preparing the sweep")
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # a misspelt choice creates nothing
        check_sweep_choices(list(config.hydra.overrides.task), list(config.hydra.searchpath or ()))
        if config.get("plan"):  # a plan reads the store and writes nothing to it
            return
        # Created once here, so parallel jobs never race to create the schema or experiment.
        store = tracking.connect_cfg(config.tracking)
        orphans.close_dead_runs(store)  # what killed sweeps left RUNNING
        sweep.start(store, Path(config.hydra.sweep.dir))

    @reported_hook("the sweep's aggregate step")
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("plan"):
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        store = tracking.connect_cfg(config.tracking)
        orphans.close_dead_runs(store)  # what a task stopped mid-request left RUNNING before it was requeued
        sweep_run = sweep.recorded(sweep_dir, store)
        run_ids, explained = sweep_run_ids(sweep_dir), sweep.job_results(sweep_dir, sweep.EXPLAIN_KIND)
        unfinished = sweep.failures(sweep_dir)
        if not run_ids and not explained:
            log.warning("no job of sweep %s finished; no table written", sweep_dir)
            if sweep_run:
                sweep.finish(store, sweep_run, "FAILED")
            if unfinished:
                raise SystemExit(1)  # the launcher has said why, a line per cause
            return
        records = results.from_runs(store, run_ids)
        metric = config.metric.name
        with aggregate_run(store, {"sweep_dir": str(sweep_dir), "metric": metric}, sweep_run) as run_id:
            plot_cache = Path(config.paths.outputs) / plots.PLOT_CACHE
            written = sweep_tables(records, metric, sweep_dir, store, plot_cache) if records else {}
            if explained:
                from pipeline.reports import relevance  # the explain stage's figures: torch, which tables need not

                try:
                    grids = relevance.write_grids(store, explained, sweep_dir)
                    written[relevance.TITLE] = layouts.Written(grids, "")
                except Exception as exc:  # a grid it cannot draw leaves the tables and the report standing
                    expected = isinstance(exc, (PipelineError, CorruptArtifact, ArtifactUnavailable))
                    if not (expected or is_mlflow_error(exc)):
                        raise
                    log.warning("no relevance grid for this sweep: %s", one_line(exc))
            sections = report_sections.sweep(records, written)
            title = titles.describe(records) if records else "Relevance maps"
            report = write_report(sweep_dir / page.REPORT_FILE, title, sections, records, store,
                                  ui_base(config.tracking, store, list(config.hydra.overrides.task)), sweep_run,
                                  run_id, f"sweep {sweep_dir.parent.name} {sweep_dir.name} ({sweep_dir})")
            log_files(store, run_id, [f for done in written.values() for f in done.files] + [report])
        if sweep_run:
            sweep.finish(store, sweep_run, "FAILED" if unfinished else "FINISHED")
        markdown = "\n".join(done.markdown for done in written.values() if done.markdown)
        print(f"\n{markdown}\nTables, plots and {report.name} written to {sweep_dir}", flush=True)
        if unfinished:  # the table holds the jobs that finished; the sweep did not
            print(f"Error: {unfinished['unfinished']} job(s) did not finish (the lines above say why); the table holds "
                  f"the {len(run_ids) + len(explained)} that did", file=sys.stderr, flush=True)
            raise SystemExit(1)


def sweep_tables(records: list[ScoreRecord], metric: str, sweep_dir: Path, store: TrackingStore,
                 plot_cache: Path | None = None) -> dict[str, layouts.Written]:
    """Every layout the sweep's results call for, by title, the per-prompt-set tables first."""
    replicates = results.replicate_loader(store, records)
    written: dict[str, layouts.Written] = {}
    for layout in layouts.sweep_layouts(records):
        compared = records
        if layout.name == "fewshot":  # a probe sweep is compared with the zero-shot runs made before it
            compared = records + fewshot.zero_shot_partners(records, results.latest_in_store(store))
        request = layouts.Request(compared, metric, sweep_dir, replicates=replicates, store=store,
                                  plot_cache=plot_cache)
        try:
            written[layout.title] = layouts.write_layout(layout.name, request)
        except PipelineError as exc:  # a report the results cannot make costs that report, not the others
            if layout.name == "per_prompts":
                raise
            log.warning("no %s report for this sweep: %s", layout.name, exc)
    return written


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
        records = [r for r in records if r.prompts in (prompts, PROMPT_FREE, results.EXTERNAL_PROMPTS)]
    if protocol:
        records = [r for r in records if r.protocol == protocol or r.is_external]
    return records


def reads_files(cfg: DictConfig) -> bool:
    """Whether the table's records come from result files (`results_dir=`) rather than the tracking store."""
    return bool(cfg.results_dir) and cfg.layout != "robustness"


def check_store(tracking_cfg: DictConfig) -> None:
    """Refuse a table of a store that holds no finished job run: a local store that does not exist is never
    created (connecting would create it), and an empty one says so."""
    uri = str(tracking_cfg.uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise PipelineError(f"no tracking store at {uri.removeprefix('sqlite:///')}, so nothing to aggregate (none "
                            f"created); run `python -m pipeline` first, or give tracking.uri= or results_dir=")
    store = tracking.connect_cfg(tracking_cfg, access=tracking.READ)
    if not tracking.search_all(store, f"tags.stage = '{JOB_STAGE}' and attributes.status = 'FINISHED'", limit=1):
        raise PipelineError(f"no finished job runs in {uri}, so nothing to aggregate; run `python -m pipeline` first")


class InputCheck(Callback):
    """`python -m pipeline.aggregate`'s inputs checked before Hydra creates the job's folder (the tables folder), so
    that a refused table leaves nothing behind: the layout, the reference, the result files, the store."""

    @reported_hook("checking the table's inputs")
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        layouts.get(config.layout)
        references.chosen(config.reference)
        if config.results_dir:
            results.from_directory(Path(config.results_dir))  # main reads them again: a few ms a file
        if not reads_files(config):
            check_store(config.tracking)


@hydra.main(config_path=str(CONF_DIR), config_name="aggregate", version_base="1.3")
@reported
def main(cfg: DictConfig) -> None:
    layout = layouts.get(cfg.layout)  # an unknown layout or reference is refused before anything is read
    references.chosen(cfg.reference)
    from_files = reads_files(cfg)
    wants_replicates = (cfg.intervals or layout.needs_replicates) and not cfg.results_dir
    # A table of result files neither reads nor writes the store unless asked (`log_run=true`): it never waits
    # for a server, and on a node without one it still works.
    logged = cfg.log_run if cfg.log_run is not None else not from_files
    store = tracking.connect_cfg(cfg.tracking, access=tracking.READ) if logged or not from_files else None
    # The robustness layout reads its ImageNet-trained baseline models from results_dir; its points from the store.
    if from_files:
        records = results.from_directory(Path(cfg.results_dir))
        source = str(cfg.results_dir)
    else:
        records = results.latest_in_store(store)
        source = store.uri
    records = select(records, cfg.prompts.name if cfg.get("prompts") else None,
                     cfg.protocol.name if cfg.get("protocol") else None)
    if not records:
        raise PipelineError(f"no finished job runs found in {source}; run `python -m pipeline` first")
    replicates = results.replicate_loader(store, records) if wants_replicates else None
    if cfg.intervals and cfg.results_dir:
        log.warning("intervals=true: result files (results_dir=) carry no bootstrap replicates; no interval is shown")
    if replicates is not None:
        warn_without_replicates(records, replicates)
    baseline = (robustness_baseline(cfg) if cfg.layout == "robustness" else
                OmegaConf.to_container(cfg.baseline) if OmegaConf.is_config(cfg.baseline) else cfg.baseline)
    out_dir = Path(cfg.output_dir)
    request = layouts.Request(records, cfg.metric.name, out_dir, Path(cfg.output).resolve() if cfg.output else None,
                              cfg.mean_row, cfg.intervals, replicates, baseline, store, cfg.reference,
                              Path(cfg.paths.outputs) / plots.PLOT_CACHE)
    tags = {"source": source, "layout": cfg.layout, "metric": cfg.metric.name}
    with (aggregate_run(store, tags, required=False) if logged else nullcontext()) as run_id:
        written = layouts.write_layout(cfg.layout, request)
        ui_url = ui_base(cfg.tracking, store, list(HydraConfig.get().overrides.task)) if store else ""
        report = write_layout_page(layout, request, written, source, store, ui_url, run_id)
        if logged:
            log_files(store, run_id, written.files + [report])
    print(f"\n{written.markdown}\nWritten: {', '.join(map(str, written.files))}\nPage: {report} (every page: "
          f"{out_dir / page.INDEX_FILE})", flush=True)


def write_layout_page(layout: layouts.Layout, request: layouts.Request, written: layouts.Written, source: str,
                      store: TrackingStore | None = None, ui_url: str = "", run_id: str | None = None) -> Path:
    """The layout's own page, `<layout>.html` (never overwritten by another layout's), and the index of them all:
    does it reproduce, then the layout's table and plots; the reproduction layout's page is its answer."""
    records = request.records
    sections = report_sections.layout(layout, records, request.reference, written)
    report = write_report(request.out_dir / f"{layout.name}.html", f"{layout.title} — {titles.describe(records)}",
                          sections, records, store, ui_url, None, run_id,
                          f"python -m pipeline.aggregate layout={layout.name}: {len(records)} results from {source}")
    page.write_index(request.out_dir)
    return report


def robustness_baseline(cfg: DictConfig) -> robustness.Baseline:
    """The ImageNet models' fit: from the results in `results_dir` when given, else the bundled published points."""
    if not cfg.results_dir:
        return robustness.bundled_baseline()
    return robustness.baseline_from_records(results.from_directory(Path(cfg.results_dir)), str(cfg.results_dir))


if __name__ == "__main__":
    main()
