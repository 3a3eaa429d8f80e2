"""The registry of layouts: everything the aggregate step can draw from score records, each with its title, its
writer, and when a sweep draws it by itself. A writer puts its tables and plots into a folder and returns them
with the markdown printed on the terminal; `python -m pipeline.aggregate layout=NAME` draws any one of them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from pipeline.errors import PipelineError
from pipeline.reports import (comparisons, ensembling, fewshot, heatmap, multilingual, paper_tables, plots, prompt_gains,
                              references, reproduction, robustness, tables, training_curves)
from pipeline.reports.results import ScoreRecord
from pipeline.stages.heads import LINEAR_PROBE
from pipeline.store.tracking import TrackingStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """What a layout is drawn from, and where it goes.

    `baseline` is the compare layout's baseline fields, or the robustness layout's `robustness.Baseline`;
    `intervals` prints the per-prompt-set tables with `value [low, high]` cells."""

    records: list[ScoreRecord]
    metric: str
    out_dir: Path
    output: Path | None = None
    mean_row: bool = False
    intervals: bool = False
    replicates: comparisons.Replicates | None = None
    baseline: Any = None
    store: TrackingStore | None = None
    reference: str = references.ALL  # the reproduction layout's references
    plot_cache: Path | None = None  # plots kept by their inputs (`plots.drawn`); None draws every plot


@dataclass(frozen=True)
class Written:
    """A layout's files, the markdown printed for it, and the files its section of report.html shows, in order
    (by default its plots, then its tables)."""

    files: list[Path]
    markdown: str
    shown: list[Path] = field(default_factory=list)

    @property
    def on_page(self) -> list[Path]:
        if self.shown:
            return self.shown
        return [f for f in self.files if f.suffix == ".png"] + [f for f in self.files if f.suffix == ".csv"]


@dataclass(frozen=True)
class Layout:
    name: str
    title: str
    write: Callable[[Request], Written]
    # When a sweep draws it by itself (None: only when asked for with layout=NAME).
    applies: Callable[[Sequence[ScoreRecord]], bool] | None = None
    needs_replicates: bool = False  # reads bootstrap replicates, which only the tracking store holds


def table_files(table: pd.DataFrame, csv_path: Path, heading: str, csv_format: str = "%.4f") -> tuple[list[Path], str]:
    """The table as `csv_path` and as markdown beside it (`.md`), and that markdown under `heading`."""
    md_path = csv_path.with_suffix(".md")
    table.to_csv(csv_path, index=False, float_format=csv_format)
    markdown = f"### {heading}\n\n{table.to_markdown(index=False, floatfmt='.4f')}\n"
    md_path.write_text(markdown)
    return [csv_path, md_path], markdown


# -- the writers --------------------------------------------------------------------------------------------
def write_per_prompts(request: Request) -> Written:
    """table.csv (all prompt sets, with a `prompts` column), table.md (cells `value [low, high]` with
    `intervals`), intervals.csv (every cell with its 95 % interval), table.png (each result with its interval),
    heatmap.png, and results.csv (every metric of every result with its interval)."""
    records, metric, out_dir = request.records, request.metric, request.out_dir
    groups = tables.by_prompts_label(records)
    per_prompts = {prompts: tables.build_table(group, metric) for prompts, group in groups.items()}
    bounds = {prompts: comparisons.interval_bounds(group, metric, request.replicates)
              for prompts, group in groups.items()}
    with_intervals = {prompts: comparisons.interval_table(group, metric, request.replicates)
                      for prompts, group in groups.items()}
    stacked = lambda shown: heatmap.combined_tables(shown)[["prompts", *next(iter(shown.values())).columns]]
    stacked(per_prompts).to_csv(out_dir / "table.csv", index=False, float_format="%.4f")
    stacked(with_intervals).to_csv(out_dir / "intervals.csv", index=False)
    markdown = tables.to_markdown(with_intervals if request.intervals else per_prompts, metric)
    (out_dir / "table.md").write_text(markdown)
    comparisons.results_frame(records).to_csv(out_dir / "results.csv", index=False, float_format="%.6g")
    cache = request.plot_cache
    plot = plots.drawn(cache, comparisons.plot, bounds, metric, path=out_dir / "table.png")
    heat = plots.drawn(cache, heatmap.plot, heatmap.matrix(heatmap_rows(records, metric)), metric,
                       path=out_dir / "heatmap.png")
    files = [out_dir / name for name in ("table.csv", "table.md", "intervals.csv", "table.png", "heatmap.png",
                                         "results.csv")]
    return Written(files, markdown, shown=[plot, out_dir / "intervals.csv", heat, out_dir / "results.csv"])


def heatmap_rows(records: list[ScoreRecord], metric: str) -> dict[str, pd.DataFrame]:
    """Per prompt set, the table with the prompt-free results (retrieval, WinoGAViL) in every row, as open_clip's
    table holds them, so a suite's row has one mean over all its datasets."""
    return {prompts: tables.build_table(group, metric)
            for prompts, group in tables.by_prompt_set_with_prompt_free(records).items()}


def write_compare(request: Request) -> Written:
    """compare.csv and compare.md: every result against the baseline, paired, with `significant` marked."""
    table = comparisons.compare(request.records, request.metric, comparisons.parse_baseline(request.baseline),
                                request.replicates)
    if table.empty:
        raise PipelineError("no result has a baseline partner (the same model, data and settings but for the "
                            "baseline's fields); check baseline= against the results' labels")
    heading = (f"paired comparison — {tables.metric_label(request.metric)}: difference = candidate − baseline, "
               f"95 % paired-bootstrap interval, two-sided p; significant where the interval excludes 0")
    return Written(*table_files(table, request.out_dir / "compare.csv", heading, "%.6g"))


PREVIEW_ROWS = 20  # a terminal shows the top of a longer table; the file holds all of it


def preview(table: pd.DataFrame, path: Path) -> str:
    """The table as Markdown for the terminal: its first PREVIEW_ROWS rows, and where the rest is."""
    shown = table.head(PREVIEW_ROWS).to_markdown(index=False)
    more = len(table) - PREVIEW_ROWS
    return shown if more <= 0 else f"{shown}\n\n... {more} more rows in {path}"


def write_openclip38(request: Request) -> Written:
    """openclip38.csv, or openclip38_<prompts>.csv per prompt set when several were swept."""
    groups = tables.by_prompt_set_with_prompt_free(filter(tables.openclip38_eligible, request.records))
    if not groups:
        raise PipelineError("no result fits open_clip's 38-dataset table: it takes datacomp38 datasets read from "
                            "DataComp's copies (source) under protocol=datacomp, or result files (results_dir=)")
    if request.output is not None and len(groups) > 1:
        raise PipelineError(f"results hold several prompt sets ({', '.join(groups)}); pick one with prompts=NAME")
    files, sections = [], []
    for prompts, group in groups.items():
        path = request.output or request.out_dir / ("openclip38.csv" if len(groups) == 1 else f"openclip38_{prompts}.csv")
        table = tables.openclip38(group)
        table.to_csv(path, index=False)
        files.append(path)
        sections.append(f"### openclip38 — prompts: {prompts}\n\n{preview(table, path)}\n")
    return Written(files, "\n".join(sections))


def write_blog(request: Request) -> Written:
    """blog_<metric>.csv and .md (or `output`): a row per dataset, a column per model, as the blog prints them."""
    table = tables.blog(request.records, request.metric, request.mean_row)
    path = request.output or request.out_dir / f"blog_{request.metric}.csv"
    return Written(*table_files(table, path, request.metric))


def write_clip_paper(request: Request) -> Written:
    """clip_paper_table11.csv/.md (zero-shot) and clip_paper_table10.csv/.md (full linear probes), each where the
    results have some: the paper's rows and columns, percent with one decimal."""
    files, sections = [], []
    for head, (stem, title) in paper_tables.TABLES.items():
        table = paper_tables.paper_table(request.records, head)
        if table.empty:
            continue
        path = request.out_dir / f"{stem}.csv"
        table.to_csv(path, index=False)
        printed = table.to_markdown(index=False, disable_numparse=True)  # "75.0" stays as the paper prints it
        markdown = f"### {title}\n\n{printed}\n\n{paper_tables.note(request.records, head)}\n"
        path.with_suffix(".md").write_text(markdown)
        files += [path, path.with_suffix(".md")]
        sections.append(markdown)
    if not files:
        raise PipelineError("no result fits the CLIP paper's tables: run its datasets (suite=clip_paper) zero-shot, "
                            "or with head=linear_probe head.k_shot=null")
    return Written(files, "\n".join(sections))


def write_multilingual(request: Request) -> Written:
    """multilingual.csv: open_clip's multilingual retrieval columns (per dataset and recall, the mean over languages
    and each language); the terminal shows the means."""
    wide = multilingual.table(request.records)
    if wide.empty:
        raise PipelineError("no multilingual retrieval result: run a multilingual dataset with language= (suite=xtd10, "
                            "xtd200, flickr30k_200)")
    path = request.output or request.out_dir / "multilingual.csv"
    wide.to_csv(path, index=False, float_format="%.4f")
    shown = multilingual.summary(wide)
    return Written([path], f"### multilingual retrieval — mean over languages (every language in {path.name})\n\n"
                           f"{preview(shown, path)}\n")


def write_fewshot(request: Request) -> Written:
    """fewshot.csv, .md and .png: zero-shot against the k-shot probes (mean ± std over seeds) and the full probe."""
    table = fewshot.comparison(request.records, request.metric)
    if table.empty:
        raise PipelineError("no linear-probe results to compare with zero-shot; run jobs with head=linear_probe")
    files, markdown = table_files(table, request.out_dir / "fewshot.csv",
                                  f"zero-shot against linear probes — {request.metric}")
    return Written([*files, plots.drawn(request.plot_cache, fewshot.plot, table, request.metric,
                                           path=request.out_dir / "fewshot.png")], markdown)


def write_prompt_gains(request: Request) -> Written:
    """prompt_gains.csv/.md/.png (each prompt set against the class name alone), and ensembling.csv/.png (accuracy
    against the number of templates averaged) when the store holds the cached embeddings."""
    out_dir = request.out_dir
    table = prompt_gains.gains(request.records, request.metric, request.replicates)
    heading = (f"prompt engineering — {tables.metric_label(request.metric)}: gain over prompts={prompt_gains.BASELINE}, "
               f"95 % paired-bootstrap interval")
    files, markdown = table_files(table, out_dir / "prompt_gains.csv", heading, "%.6g")
    files.append(plots.drawn(request.plot_cache, prompt_gains.plot, table, path=out_dir / "prompt_gains.png"))
    curves = (ensembling.from_store(request.store, prompt_gains.eligible(request.records))
              if request.store is not None else pd.DataFrame())
    if not curves.empty:
        curves.to_csv(out_dir / "ensembling.csv", index=False, float_format="%.6g")
        files += [out_dir / "ensembling.csv", plots.drawn(request.plot_cache, ensembling.plot, curves,
                                                                path=out_dir / "ensembling.png")]
    return Written(files, markdown)


def write_robustness(request: Request) -> Written:
    """robustness.csv/.md/.png: the CLIP paper's Figure 13, each model's effective robustness against the baseline."""
    baseline = request.baseline or robustness.bundled_baseline()
    table = robustness.effective_robustness(request.records, baseline)
    heading = (f"effective robustness — top-1 on {', '.join(robustness.SHIFTS)} against ImageNet; baseline: "
               f"{baseline.source}")
    files, markdown = table_files(table, request.out_dir / "robustness.csv", heading)
    return Written([*files, plots.drawn(request.plot_cache, robustness.plot, table, baseline,
                                             path=request.out_dir / "robustness.png")], markdown)


def write_training_curves(request: Request) -> Written:
    """training_curves.csv/.md/.png: each dataset's metric against the checkpoint's epoch or step."""
    table = training_curves.frame(request.records, request.metric)
    if table.empty:
        raise PipelineError("no result comes from a checkpoint with a known epoch or step; sweep model.pretrained "
                            "over checkpoint files named like epoch_<n>.pt (or saved with an `epoch` entry)")
    files, markdown = table_files(table, request.out_dir / "training_curves.csv", f"over training — {request.metric}")
    plot = plots.drawn(request.plot_cache, training_curves.plot, table, request.metric,
                       path=request.out_dir / "training_curves.png")
    return Written([*files, plot], markdown)


def write_reproduction(request: Request) -> Written:
    """reproduction.csv/.md/.png: each result against the published cell of the same model, dataset and metric,
    with its verdict and detected cause, and a summary per reference and model."""
    chosen = references.chosen(request.reference)
    report = reproduction.reproduce(request.records, chosen)
    if report.rows.empty:
        raise reproduction.nothing_to_compare(report, chosen)
    out_dir = request.out_dir
    report.rows.to_csv(out_dir / "reproduction.csv", index=False, float_format="%.6g")
    counts = report.rows["verdict"].value_counts()
    heading = (f"does it reproduce? {reproduction.described(report, chosen)}; "
               + ", ".join(f"{counts.get(v, 0)} {v}" for v in reproduction.VERDICTS))
    markdown = (f"### {heading}\n\n{report.summary.to_markdown(index=False, floatfmt='.4f')}\n\n"
                f"{report.rows.to_markdown(index=False, floatfmt='.4f')}\n")
    (out_dir / "reproduction.md").write_text(markdown)
    report.summary.to_csv(out_dir / "reproduction_summary.csv", index=False, float_format="%.6g")
    files = [out_dir / "reproduction.csv", out_dir / "reproduction.md", out_dir / "reproduction_summary.csv"]
    if (report.rows["verdict"] != reproduction.NOT_COMPARABLE).any():
        files.append(plots.drawn(request.plot_cache, reproduction.plot, report.rows, path=out_dir / "reproduction.png"))
    printed = f"### {heading}\n\n{report.summary.to_markdown(index=False, floatfmt='.4f')}\n"
    return Written(files, printed, shown=[f for f in files if f.suffix == ".png"]
                   + [out_dir / "reproduction_summary.csv", out_dir / "reproduction.csv"])


def has_probes(records: Sequence[ScoreRecord]) -> bool:
    return any(r.head == LINEAR_PROBE for r in records)


LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (
    Layout("per_prompts", "Results with 95 % intervals", write_per_prompts, applies=lambda records: True),
    Layout("compare", "Paired comparison", write_compare, needs_replicates=True),
    Layout("openclip38", "open_clip's 38-dataset table", write_openclip38,
           applies=lambda records: any(map(tables.openclip38_eligible, records))),
    Layout("blog", "The blog's table", write_blog),
    Layout("clip_paper", "The CLIP paper's Tables 11 and 10", write_clip_paper, applies=paper_tables.applies),
    Layout("multilingual", "Multilingual retrieval, languages in columns", write_multilingual,
           applies=multilingual.applies),
    Layout("fewshot", "Zero-shot against linear probes", write_fewshot, applies=has_probes),
    Layout("prompt_gains", "Prompt engineering", write_prompt_gains, applies=prompt_gains.applies,
           needs_replicates=True),
    Layout("robustness", "Effective robustness", write_robustness, applies=robustness.covers),
    Layout("training_curves", "Over training", write_training_curves, applies=training_curves.applies),
    Layout("reproduction", "Does it reproduce the published numbers?", write_reproduction,
           applies=reproduction.applies),
)}


def get(name: str) -> Layout:
    if name not in LAYOUTS:
        raise PipelineError(f"unknown layout {name!r}; use one of {', '.join(LAYOUTS)}")
    return LAYOUTS[name]


def sweep_layouts(records: Sequence[ScoreRecord]) -> list[Layout]:
    """The layouts a sweep's results call for, in the registry's order (the per-prompt-set tables first)."""
    return [layout for layout in LAYOUTS.values() if layout.applies is not None and layout.applies(records)]


def write_layout(name: str, request: Request) -> Written:
    layout = get(name)
    if layout.needs_replicates and request.replicates is None:
        raise PipelineError(f"layout={name} reads bootstrap replicates from the tracking store; it cannot compare "
                            f"result files (results_dir=)")
    request.out_dir.mkdir(parents=True, exist_ok=True)
    return layout.write(request)
