"""`report.html`: one page a person can open from the sweep folder, with every table (its CSV rendered, intervals
included) and plot the aggregate step wrote, and links to the MLflow runs behind them.

Plots are embedded as data URIs, so the page stays whole when it is mailed or downloaded from MLflow's
artifact view on its own.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from pipeline.results import ScoreRecord

from pipeline.ui import run_url, runs_url

REPORT_FILE = "report.html"

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0 1.5em; }
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
    jobs_view: str | None = None  # a saved view of the sweep's job runs with their metric columns (`ui.share_view`)


def _file_html(path: Path) -> str:
    if path.suffix == ".png":
        encoded = base64.b64encode(path.read_bytes()).decode()
        return f'<figure><img alt="{html.escape(path.name)}" src="data:image/png;base64,{encoded}"></figure>'
    if path.suffix == ".csv":
        table = pd.read_csv(path, keep_default_na=False)
        rendered = table.to_html(index=False, float_format=lambda v: f"{v:.4f}", border=0, escape=True)
        return f'<p><code>{html.escape(path.name)}</code></p><div class="scroll">{rendered}</div>'
    return ""


def _runs_html(records: Sequence[ScoreRecord], links: Links) -> str:
    rows = [{"job run": f'<a href="{html.escape(run_url(links.ui_url, links.experiment_id, r.run_id))}">'
                        f'{html.escape(r.run_id[:12])}</a>',
             "model": r.model, "pretrained": r.pretrained, "dataset": r.dataset, "prompts": r.prompts,
             "head": r.head_label, "protocol": r.protocol, r.main_metric if len({x.main_metric for x in records}) == 1
             else "main metric": f"{r.value('main'):.4f}"}
            for r in records if not r.is_external]
    if not rows:
        return ""
    return pd.DataFrame(rows).to_html(index=False, escape=False, border=0)


def write(path: Path, title: str, sections: Sequence[Section], records: Sequence[ScoreRecord], links: Links) -> Path:
    parts = [f"<h1>{html.escape(title)}</h1>"]
    navigation = [f'<a href="{html.escape(runs_url(links.ui_url, links.experiment_id))}">all runs in the MLflow UI</a>']
    if links.jobs_view:
        url = runs_url(links.ui_url, links.experiment_id, view=links.jobs_view)
        navigation.append(f'<a href="{html.escape(url)}">this sweep\'s jobs with their metrics</a>')
    for label, run in (("this sweep's run", links.sweep_run), ("the aggregate run (these files)", links.aggregate_run)):
        if run:
            navigation.append(f'<a href="{html.escape(run_url(links.ui_url, links.experiment_id, run))}">{label}</a>')
    parts.append(f"<p>{' · '.join(navigation)} (start the UI with <code>make ui</code>)</p>")
    for section in sections:
        body = "".join(_file_html(Path(f)) for f in section.files)
        if body:
            parts.append(f"<h2>{html.escape(section.title)}</h2>{body}")
    runs = _runs_html(records, links)
    if runs:
        parts.append(f"<h2>Job runs</h2><div class=\"scroll\">{runs}</div>")
    page = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>")
    path.write_text(page)
    return path
