"""Aggregate stage: results tables from score records, written to outputs/ and logged to an MLflow `aggregate` run.

It runs by itself at the end of every multirun (`AggregateCallback`), and `python -m pipeline.aggregate`
rebuilds any layout from the tracking store, or from result files produced elsewhere (`results_dir=`).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

import hydra
import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pipeline import PipelineError, comparisons, fewshot, results, tables, tracking
from pipeline.cli import reported
from pipeline.job import RESULT_FILE
from pipeline.results import ScoreRecord
from pipeline.tracking import TrackingStore

log = logging.getLogger(__name__)


def plot(per_prompts: Mapping[str, pd.DataFrame], metric: str, path: Path) -> Path:
    """A grouped bar chart: one group per dataset (and the mean), one bar per (model, prompts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {}
    for prompts, table in per_prompts.items():
        for _, row in table.iterrows():
            name = f"{row['model']} / {row['pretrained']} / {row['protocol']} / {row['head']} / {prompts}"
            series[name] = row.drop(tables.ROW_KEYS)
    frame = pd.DataFrame(series).astype(float)
    width = 1.5 + 0.25 * len(frame.index) * len(series)  # a bar is about a quarter inch wide
    fig, ax = plt.subplots(figsize=(min(30, max(5, width)), 4.5))
    frame.plot.bar(ax=ax, rot=30)
    label = "main metric of each dataset" if metric == "main" else metric
    ax.set_ylabel(label)
    ax.set_ylim(min(0.0, float(frame.min().min())), 1.0)
    ax.set_title(label)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0),
              title="model / weights / protocol / head / prompts")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def write_per_prompts(records: list[ScoreRecord], metric: str, out_dir: Path,
                      replicates: comparisons.Replicates | None = None) -> tuple[list[Path], str]:
    """table.csv (all prompt sets, with a `prompts` column; cells `value [low, high]` when `replicates` are
    given), table.md, table.png, and results.csv (every metric of every result with its interval)."""
    per_prompts = tables.build_tables(records, metric)
    shown = per_prompts if replicates is None else {
        prompts: comparisons.interval_table(group, metric, replicates)
        for prompts, group in tables.group_by_prompts(records).items()}
    combined = pd.concat([t.assign(prompts=p) for p, t in shown.items()], ignore_index=True)
    combined = combined[["prompts"] + [c for c in combined.columns if c != "prompts"]]
    csv_path, md_path, results_path = out_dir / "table.csv", out_dir / "table.md", out_dir / "results.csv"
    combined.to_csv(csv_path, index=False, float_format="%.4f")
    comparisons.results_frame(records).to_csv(results_path, index=False, float_format="%.6g")
    markdown = tables.to_markdown(shown, metric)
    md_path.write_text(markdown)
    return [csv_path, md_path, plot(per_prompts, metric, out_dir / "table.png"), results_path], markdown


def write_compare(records: list[ScoreRecord], metric: str, out_dir: Path, baseline: Any,
                  replicates: comparisons.Replicates) -> tuple[list[Path], str]:
    """compare.csv and compare.md: every result against the baseline, paired, with `significant` marked."""
    table = comparisons.compare(records, metric, comparisons.parse_baseline(baseline), replicates)
    if table.empty:
        raise PipelineError("no result has a baseline partner (the same model, data and settings but for the "
                            "baseline's fields); check baseline= against the results' labels")
    csv_path, md_path = out_dir / "compare.csv", out_dir / "compare.md"
    table.to_csv(csv_path, index=False, float_format="%.6g")
    label = "main metric of each dataset" if metric == "main" else metric
    markdown = (f"### paired comparison — {label}: difference = candidate − baseline, 95 % paired-bootstrap "
                f"interval, two-sided p; significant where the interval excludes 0\n\n"
                f"{table.to_markdown(index=False, floatfmt='.4f')}\n")
    md_path.write_text(markdown)
    return [csv_path, md_path], markdown


def write_openclip38(records: list[ScoreRecord], out_dir: Path, output: Path | None) -> tuple[list[Path], str]:
    """openclip38.csv, or openclip38_<prompts>.csv per prompt set when several were swept."""
    groups = tables.by_prompt_set(filter(tables.openclip38_eligible, records))
    if not groups:
        raise PipelineError("no result fits open_clip's 38-dataset table: it takes datacomp38 datasets read from "
                            "DataComp's copies (source) under protocol=datacomp, or result files (results_dir=)")
    if output is not None and len(groups) > 1:
        raise PipelineError(f"results hold several prompt sets ({', '.join(groups)}); pick one with prompts=NAME")
    files, sections = [], []
    for prompts, group in groups.items():
        path = output or out_dir / ("openclip38.csv" if len(groups) == 1 else f"openclip38_{prompts}.csv")
        table = tables.openclip38(group)
        table.to_csv(path, index=False)
        files.append(path)
        sections.append(f"### openclip38 — prompts: {prompts}\n\n{table.to_markdown(index=False)}\n")
    return files, "\n".join(sections)


def write_blog(records: list[ScoreRecord], metric: str, path: Path, mean_row: bool) -> tuple[list[Path], str]:
    table = tables.blog(records, metric, mean_row)
    table.to_csv(path, index=False, float_format="%.4f")
    markdown = f"### {metric}\n\n{table.to_markdown(index=False, floatfmt='.4f')}\n"
    md_path = path.with_suffix(".md")
    md_path.write_text(markdown)
    return [path, md_path], markdown


def write_fewshot(records: list[ScoreRecord], metric: str, out_dir: Path) -> tuple[list[Path], str]:
    """fewshot.csv, .md and .png: zero-shot against the k-shot probes (mean ± std over seeds) and the full probe."""
    table = fewshot.comparison(records, metric)
    if table.empty:
        raise PipelineError("no linear-probe results to compare with zero-shot; run jobs with head=linear_probe")
    csv_path, md_path = out_dir / "fewshot.csv", out_dir / "fewshot.md"
    table.to_csv(csv_path, index=False, float_format="%.4f")
    markdown = f"### zero-shot against linear probes — {metric}\n\n{table.to_markdown(index=False, floatfmt='.4f')}\n"
    md_path.write_text(markdown)
    return [csv_path, md_path, fewshot.plot(table, metric, out_dir / "fewshot.png")], markdown


def has_probes(records: list[ScoreRecord]) -> bool:
    return any(r.head == fewshot.LINEAR_PROBE for r in records)


def write_layout(records: list[ScoreRecord], layout: str, metric: str, out_dir: Path,
                 output: Path | None = None, mean_row: bool = False,
                 replicates: comparisons.Replicates | None = None, baseline: Any = None) -> tuple[list[Path], str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    if layout == "per_prompts":
        return write_per_prompts(records, metric, out_dir, replicates)
    if layout == "compare":
        if replicates is None:
            raise PipelineError("layout=compare reads bootstrap replicates from the tracking store; it cannot "
                                "compare result files (results_dir=)")
        return write_compare(records, metric, out_dir, baseline, replicates)
    if layout == "openclip38":
        return write_openclip38(records, out_dir, output)
    if layout == "blog":
        return write_blog(records, metric, output or out_dir / f"blog_{metric}.csv", mean_row)
    if layout == "fewshot":
        return write_fewshot(records, metric, out_dir)
    raise PipelineError(f"unknown layout {layout!r}; use one of {tables.LAYOUTS}")


def log_aggregate_run(store: TrackingStore, files: list[Path], tags: Mapping[str, str]) -> str:
    with tracking.finished_run(store, {**tags, "stage": "aggregate"}, "aggregate") as run_id:
        for path in files:
            store.client.log_artifact(run_id, str(path))
    return run_id


def sweep_run_ids(sweep_dir: Path) -> list[str]:
    """Job run ids recorded by the jobs of one sweep (Hydra gives the callback no job results)."""
    return [json.loads(path.read_text())["job_run_id"] for path in sorted(Path(sweep_dir).glob(f"*/{RESULT_FILE}"))]




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
        records = results.from_runs(store, run_ids)
        files, markdown = write_layout(records, "per_prompts", config.metric.name, sweep_dir)
        if any(map(tables.openclip38_eligible, records)):
            more, _ = write_layout(records, "openclip38", config.metric.name, sweep_dir)
            files += more
        if has_probes(records):
            compared = records + fewshot.zero_shot_partners(records, results.latest_in_store(store))
            more, comparison = write_layout(compared, "fewshot", config.metric.name, sweep_dir)
            files += more
            markdown += "\n" + comparison
        log_aggregate_run(store, files, {"sweep_dir": str(sweep_dir), "metric": config.metric.name})
        print(f"\n{markdown}\nTables written to {sweep_dir}", flush=True)


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
    if cfg.results_dir:
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
    wants_replicates = (cfg.intervals or cfg.layout == "compare") and not cfg.results_dir
    replicates = results.replicate_loader(store) if wants_replicates else None
    baseline = OmegaConf.to_container(cfg.baseline) if OmegaConf.is_config(cfg.baseline) else cfg.baseline
    if cfg.intervals and cfg.results_dir:
        log.warning("intervals=true: result files (results_dir=) carry no bootstrap replicates; no interval is shown")
    if replicates is not None:
        warn_without_replicates(records, replicates)
    files, markdown = write_layout(records, cfg.layout, cfg.metric.name, Path(cfg.output_dir), output, cfg.mean_row,
                                   replicates, baseline)
    log_aggregate_run(store, files, {"source": source, "layout": cfg.layout, "metric": cfg.metric.name})
    print(f"\n{markdown}\nWritten: {', '.join(map(str, files))}", flush=True)


if __name__ == "__main__":
    main()
