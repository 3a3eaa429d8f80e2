"""`report.html`: the page a person opens first, from the sweep folder. It leads with each result and its 95 %
interval (a dot-and-whisker plot, then the table whose cells read `value [low, high]`), then every report the
aggregate step wrote, plots before tables; a long table is folded behind its plot with a link to its CSV, and the
MLflow runs behind it all are linked.

Plots are embedded as data URIs, so the page stays whole when it is mailed or downloaded from MLflow's artifact
view on its own; links to CSVs are relative, so they work beside the page in the sweep folder and in MLflow.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from pipeline.reports.results import ScoreRecord
from pipeline.store.links import run_url, runs_url

REPORT_FILE = "report.html"
FOLDED_ROWS = 15  # a table longer than this is folded behind its plot

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 110em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; white-space: nowrap; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0 1em; }
details { margin: 0.3em 0 1.5em; } summary { cursor: pointer; color: #036; }
.scroll { overflow-x: auto; }
"""


@dataclass(frozen=True)
class Section:
    """A heading and the files under it: CSV tables and PNG plots, in the order given."""

    title: str
    files: Sequence[Path]


@dataclass(frozen=True)
class Links:
    """Where the MLflow UI is, for the links: its base URL and the experiment."""

    ui_url: str
    experiment_id: str
    sweep_run: str | None = None
    aggregate_run: str | None = None
    jobs_view: str | None = None  # a saved view of the sweep's job runs with their metric columns (`links.share_view`)


def folded(summary: str, body: str) -> str:
    return f"<details><summary>{summary}</summary>{body}</details>"


def table_html(table: pd.DataFrame, escape: bool = True) -> str:
    rendered = table.to_html(index=False, float_format=lambda v: f"{v:.4f}", border=0, escape=escape, na_rep="")
    return f'<div class="scroll">{rendered}</div>'


def printed(cell: str) -> str:
    """A CSV cell as the page shows it: as the file prints it (a table rounded for print, the paper's one decimal,
    stays so), but a longer number to 4 decimals."""
    try:
        value = float(cell)
    except ValueError:
        return cell
    decimals = cell.split(".", 1)[1] if "." in cell else ""
    return cell if len(decimals) <= 4 and "e" not in cell.lower() and cell.strip() == cell else f"{value:.4f}"


def _file_html(path: Path) -> str:
    name = html.escape(path.name)
    if path.suffix == ".png":
        encoded = base64.b64encode(path.read_bytes()).decode()
        return f'<figure><img alt="{name}" src="data:image/png;base64,{encoded}"></figure>'
    if path.suffix == ".csv":
        table = pd.read_csv(path, dtype=str, keep_default_na=False).apply(lambda column: column.map(printed))
        link = f'<a href="{html.escape(path.name, quote=True)}"><code>{name}</code></a>'
        if len(table) > FOLDED_ROWS:
            return folded(f"{link}: {len(table)} rows", table_html(table))
        return f"<p>{link}</p>{table_html(table)}"
    return ""


def _runs_html(records: Sequence[ScoreRecord], links: Links | None) -> str:
    if links is None:  # records from result files: no job runs to link to
        return ""
    one_metric = len({r.main_metric for r in records}) == 1
    rows = [{"job run": f'<a href="{html.escape(run_url(links.ui_url, links.experiment_id, r.run_id))}">'
                        f'{html.escape(r.run_id[:12])}</a>',
             "model": html.escape(r.model), "pretrained": html.escape(r.pretrained), "dataset": html.escape(r.dataset),
             "prompts": html.escape(r.prompts), "head": html.escape(r.head_label), "protocol": html.escape(r.protocol),
             (r.main_metric if one_metric else "main metric"): f"{r.value('main'):.4f}"}
            for r in records if not r.is_external]
    if not rows:
        return ""
    runs = table_html(pd.DataFrame(rows), escape=False)
    return folded(f"{len(rows)} job runs", runs) if len(rows) > FOLDED_ROWS else runs


def _navigation(links: Links | None) -> str:
    if links is None:
        return ""
    found = [f'<a href="{html.escape(runs_url(links.ui_url, links.experiment_id))}">all runs in the MLflow UI</a>']
    if links.jobs_view:
        url = runs_url(links.ui_url, links.experiment_id, view=links.jobs_view)
        found.append(f'<a href="{html.escape(url)}">this sweep\'s jobs with their metrics</a>')
    for label, run in (("this sweep's run", links.sweep_run), ("the aggregate run (these files)", links.aggregate_run)):
        if run:
            found.append(f'<a href="{html.escape(run_url(links.ui_url, links.experiment_id, run))}">{label}</a>')
    return f"<p>{' · '.join(found)} (start the UI with <code>make ui</code>)</p>"


def write(path: Path, title: str, sections: Sequence[Section], records: Sequence[ScoreRecord], links: Links | None) -> Path:
    """The page: `sections` in order (the first is what a reader sees first), then the job runs (none when the
    page was built without the tracking store, from result files)."""
    parts = [f"<h1>{html.escape(title)}</h1>", _navigation(links)]
    for section in sections:
        body = "".join(_file_html(Path(f)) for f in section.files)
        if body:
            parts.append(f"<h2>{html.escape(section.title)}</h2>{body}")
    runs = _runs_html(records, links)
    if runs:
        parts.append(f"<h2>Job runs</h2>{runs}")
    page = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>")
    path.write_text(page)
    return path
