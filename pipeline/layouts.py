"""Layouts: each writes its tables and plots for a set of score records into a folder, and returns the files and
the markdown printed on the terminal. `write_layout` picks one by name; the aggregate step decides which apply.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from pipeline import PipelineError, comparisons, ensembling, fewshot, heatmap, prompt_gains, robustness, tables
from pipeline import training_curves
from pipeline.results import ScoreRecord
from pipeline.tracking import TrackingStore

log = logging.getLogger(__name__)

def bar_plot(per_prompts: Mapping[str, pd.DataFrame], metric: str, path: Path) -> Path:
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
    label = tables.metric_label(metric)
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
    given), table.md, table.png, heatmap.png, and results.csv (every metric of every result with its interval)."""
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
    plots = [bar_plot(per_prompts, metric, out_dir / "table.png"),
             heatmap.plot(heatmap.matrix(heatmap_rows(records, metric)), metric, out_dir / "heatmap.png")]
    return [csv_path, md_path, *plots, results_path], markdown


def heatmap_rows(records: list[ScoreRecord], metric: str) -> dict[str, pd.DataFrame]:
    """Per prompt set, the table with the prompt-free results (retrieval, WinoGAViL) in every row, as open_clip's
    table holds them, so a suite's row has one mean over all its datasets."""
    return {prompts: tables.build_table(group, metric) for prompts, group in tables.by_prompt_set(records).items()}


def write_compare(records: list[ScoreRecord], metric: str, out_dir: Path, baseline: Any,
                  replicates: comparisons.Replicates) -> tuple[list[Path], str]:
    """compare.csv and compare.md: every result against the baseline, paired, with `significant` marked."""
    table = comparisons.compare(records, metric, comparisons.parse_baseline(baseline), replicates)
    if table.empty:
        raise PipelineError("no result has a baseline partner (the same model, data and settings but for the "
                            "baseline's fields); check baseline= against the results' labels")
    csv_path, md_path = out_dir / "compare.csv", out_dir / "compare.md"
    table.to_csv(csv_path, index=False, float_format="%.6g")
    label = tables.metric_label(metric)
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


def write_prompt_gains(records: list[ScoreRecord], metric: str, out_dir: Path, replicates: comparisons.Replicates,
                       store: TrackingStore | None) -> tuple[list[Path], str]:
    """prompt_gains.csv/.md/.png (each prompt set against the class name alone), and ensembling.csv/.png (accuracy
    against the number of templates averaged) when the store holds the cached embeddings."""
    table = prompt_gains.gains(records, metric, replicates)
    csv_path, md_path = out_dir / "prompt_gains.csv", out_dir / "prompt_gains.md"
    table.to_csv(csv_path, index=False, float_format="%.6g")
    label = tables.metric_label(metric)
    markdown = (f"### prompt engineering — {label}: gain over prompts={prompt_gains.BASELINE}, 95 % paired-bootstrap "
                f"interval\n\n{table.to_markdown(index=False, floatfmt='.4f')}\n")
    md_path.write_text(markdown)
    files = [csv_path, md_path, prompt_gains.plot(table, out_dir / "prompt_gains.png")]
    curves = ensembling.from_store(store, prompt_gains.eligible(records)) if store is not None else pd.DataFrame()
    if not curves.empty:
        curves.to_csv(out_dir / "ensembling.csv", index=False, float_format="%.6g")
        files += [out_dir / "ensembling.csv", ensembling.plot(curves, out_dir / "ensembling.png")]
    return files, markdown


def write_robustness(records: list[ScoreRecord], out_dir: Path, baseline: robustness.Baseline
                     ) -> tuple[list[Path], str]:
    """robustness.csv/.md/.png: the CLIP paper's Figure 13, each model's effective robustness against `baseline`."""
    table = robustness.effective_robustness(records, baseline)
    csv_path, md_path = out_dir / "robustness.csv", out_dir / "robustness.md"
    table.to_csv(csv_path, index=False, float_format="%.4f")
    markdown = (f"### effective robustness — top-1 on {', '.join(robustness.SHIFTS)} against ImageNet; baseline: "
                f"{baseline.source}\n\n{table.to_markdown(index=False, floatfmt='.4f')}\n")
    md_path.write_text(markdown)
    return [csv_path, md_path, robustness.plot(table, baseline, out_dir / "robustness.png")], markdown


def write_training_curves(records: list[ScoreRecord], metric: str, out_dir: Path) -> tuple[list[Path], str]:
    """training_curves.csv/.md/.png: each dataset's metric against the checkpoint's epoch or step."""
    table = training_curves.frame(records, metric)
    if table.empty:
        raise PipelineError("no result comes from a checkpoint with a known epoch or step; sweep model.pretrained "
                            "over checkpoint files named like epoch_<n>.pt (or saved with an `epoch` entry)")
    csv_path, md_path = out_dir / "training_curves.csv", out_dir / "training_curves.md"
    table.to_csv(csv_path, index=False, float_format="%.4f")
    markdown = f"### over training — {metric}\n\n{table.to_markdown(index=False, floatfmt='.4f')}\n"
    md_path.write_text(markdown)
    return [csv_path, md_path, training_curves.plot(table, metric, out_dir / "training_curves.png")], markdown


def has_probes(records: list[ScoreRecord]) -> bool:
    return any(r.head == fewshot.LINEAR_PROBE for r in records)


TITLES = {"per_prompts": "Results per prompt set", "compare": "Paired comparison", "openclip38":
          "open_clip's 38-dataset table", "blog": "The blog's table", "fewshot": "Zero-shot against linear probes",
          "prompt_gains": "Prompt engineering", "robustness": "Effective robustness",
          "training_curves": "Over training", "relevance": "Relevance maps (images × models)"}


def write_layout(records: list[ScoreRecord], layout: str, metric: str, out_dir: Path,
                 output: Path | None = None, mean_row: bool = False,
                 replicates: comparisons.Replicates | None = None, baseline: Any = None,
                 store: TrackingStore | None = None) -> tuple[list[Path], str]:
    """`baseline`: the compare layout's baseline fields, or the robustness layout's `robustness.Baseline`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if layout in ("compare", "prompt_gains") and replicates is None:
        raise PipelineError(f"layout={layout} reads bootstrap replicates from the tracking store; it cannot compare "
                            f"result files (results_dir=)")
    if layout == "per_prompts":
        return write_per_prompts(records, metric, out_dir, replicates)
    if layout == "compare":
        return write_compare(records, metric, out_dir, baseline, replicates)
    if layout == "openclip38":
        return write_openclip38(records, out_dir, output)
    if layout == "blog":
        return write_blog(records, metric, output or out_dir / f"blog_{metric}.csv", mean_row)
    if layout == "fewshot":
        return write_fewshot(records, metric, out_dir)
    if layout == "prompt_gains":
        return write_prompt_gains(records, metric, out_dir, replicates, store)
    if layout == "robustness":
        return write_robustness(records, out_dir, baseline or robustness.bundled_baseline())
    if layout == "training_curves":
        return write_training_curves(records, metric, out_dir)
    raise PipelineError(f"unknown layout {layout!r}; use one of {tables.LAYOUTS}")
