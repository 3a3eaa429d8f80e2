"""The report pages a person opens first: a sweep's `report.html`, each aggregate layout's page, and the index of
those pages. A page is titled by what it shows, answers "does it reproduce?" at the top, then leads with the results
table and the plot that summarizes it; every other report follows, each table before its plots.

Plots are embedded as data URIs and the table script inline, so a page stays whole when it is mailed or downloaded
from MLflow's artifact view on its own; links to CSVs are relative, so they work beside the page and in MLflow.
Tables sort, filter and page in the page itself (`page.js`); with scripts off every row is still there.
"""
from __future__ import annotations

import base64
import datetime
import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import pandas as pd

from pipeline.reports import html_tables, titles
from pipeline.reports.results import ScoreRecord
from pipeline.store.links import run_url, runs_url

REPORT_FILE = "report.html"
INDEX_FILE = "index.html"
SHORT_ROWS = 5  # the page size of a table that must leave the first screen to the results
PAGE_ROWS, RESULTS_ID = html_tables.PAGE_ROWS, html_tables.RESULTS_ID
SCRIPT = Path(__file__).with_name("page.js")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1em 2em 3em; color: #222; max-width: 110em; }
h1 { font-size: 1.45em; margin: 0 0 0.25em; overflow-wrap: anywhere; }
h2 { font-size: 1.15em; margin: 1.1em 0 0.35em; }
p { margin: 0.3em 0; max-width: 75em; }
.about { color: #555; font-size: 0.88em; overflow-wrap: anywhere; }
.answer { font-size: 1.02em; }
table { border-collapse: collapse; font-size: 0.82em; margin: 0.3em 0 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.15em 0.45em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; font-weight: 600; }
td.num { text-align: right; }
td.num span { white-space: nowrap; }
table.data th { cursor: pointer; }
table.many { font-size: 0.74em; }
th[aria-sort=ascending]::after { content: " \\25B2"; font-size: 0.7em; }
th[aria-sort=descending]::after { content: " \\25BC"; font-size: 0.7em; }
.controls { display: flex; flex-wrap: wrap; gap: 0.6em; align-items: center; font-size: 0.82em; margin-top: 0.4em; }
.controls input { width: 18em; }
figure { margin: 0.3em 0 1em; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
details { margin: 0.3em 0 1em; } summary { cursor: pointer; color: #036; }
.scroll { overflow-x: auto; }
.file { font-size: 0.85em; margin: 0.6em 0 0; }
"""


@dataclass(frozen=True)
class Table:
    """A table shown from a DataFrame: `caption` above it, `csv` (a file beside the page) linked when given,
    `folded` behind a summary line that names it, `rows` a page."""

    frame: pd.DataFrame
    caption: str = ""
    csv: str | None = None
    folded: bool = False
    rows: int = PAGE_ROWS


@dataclass(frozen=True)
class Text:
    """A paragraph of plain text (escaped on the page)."""

    text: str


Item = Union[Path, Table, Text]


@dataclass(frozen=True)
class Section:
    """A heading and what is under it: PNG plots and CSV tables (files beside the page), tables and text. Each
    section leads with its first table, then its plots; the `main` section's first table is the page's results
    table."""

    title: str
    files: Sequence[Item]
    main: bool = False


@dataclass(frozen=True)
class Links:
    """Where the MLflow UI is, for the links: its base URL and the experiment."""

    ui_url: str
    experiment_id: str
    sweep_run: str | None = None
    aggregate_run: str | None = None
    jobs_view: str | None = None  # a saved view of the sweep's job runs with their metric columns (`links.share_view`)


def _csv_link(name: str) -> str:
    return f'<a href="{html.escape(name, quote=True)}"><code>{html.escape(name)}</code></a>'


def _table_html(table: Table, main: bool) -> str:
    link = f" ({_csv_link(table.csv)})" if table.csv else ""
    body = html_tables.frame_html(table.frame, main, rows=table.rows)
    if table.folded:
        return f"<details><summary>{html.escape(table.caption)}{link}</summary>{body}</details>"
    caption = f'<p class="file">{html.escape(table.caption)}{link}</p>' if table.caption or link else ""
    return caption + body


def _file_html(path: Path, main: bool) -> str:
    name = html.escape(path.name)
    if path.suffix == ".png":
        encoded = base64.b64encode(path.read_bytes()).decode()
        return f'<figure><img alt="{name}" src="data:image/png;base64,{encoded}"></figure>'
    if path.suffix == ".csv":
        frame = pd.read_csv(path, dtype=str, keep_default_na=False).map(html_tables.printed)
        shown = html_tables.frame_html(html_tables.with_spread(frame), main)
        return f'<p class="file">{_csv_link(path.name)}</p>{shown}'
    return ""


def _is_table(item: Item) -> bool:
    return isinstance(item, Table) or (isinstance(item, Path) and item.suffix == ".csv")


def arranged(items: Sequence[Item]) -> list[Item]:
    """The section's first table moved before its plots: the numbers first, then the plot that summarizes them."""
    items = list(items)
    first_table = next((i for i, item in enumerate(items) if _is_table(item)), None)
    first_plot = next((i for i, item in enumerate(items) if isinstance(item, Path) and item.suffix == ".png"), None)
    if first_table is None or first_plot is None or first_table < first_plot:
        return items
    return items[:first_plot] + [items[first_table]] + items[first_plot:first_table] + items[first_table + 1:]


def _section_html(section: Section) -> str:
    parts, main = [], section.main
    for item in arranged(section.files):
        if isinstance(item, Text):
            parts.append(f'<p class="answer">{html.escape(item.text)}</p>')
            continue
        parts.append(_table_html(item, main) if isinstance(item, Table) else _file_html(Path(item), main))
        main = main and not _is_table(item)  # only the first table is the results table
    body = "".join(parts)
    return f"<section><h2>{html.escape(section.title)}</h2>{body}</section>" if body else ""


def _runs_html(records: Sequence[ScoreRecord], links: Links | None) -> str:
    if links is None:  # records from result files: no job runs to link to
        return ""
    one_metric = len({r.main_metric for r in records}) == 1
    rows = [{"job run": f'<a href="{html.escape(run_url(links.ui_url, links.experiment_id, r.run_id))}">'
                        f'{html.escape(r.run_id[:12])}</a>',
             "model": r.model, "pretrained": r.pretrained, "dataset": r.dataset, "prompts": r.prompts,
             "head": r.head_label, "seed": r.seed, "protocol": r.protocol,
             (r.main_metric if one_metric else "main metric"): f"{r.value('main'):.4f}"}
            for r in titles.table_order(records) if not r.is_external]
    if not rows:
        return ""
    frame = pd.DataFrame(rows)
    frame = frame.drop(columns=[c for c in ("seed",) if set(frame[c]) <= {"", "-"}])
    return html_tables.frame_html(frame, linked=["job run"])


def _navigation(links: Links | None) -> str:
    if links is None:
        return ""
    found = []
    if links.jobs_view:
        url = runs_url(links.ui_url, links.experiment_id, view=links.jobs_view)
        found.append(f'<a href="{html.escape(url)}">these jobs in the MLflow UI</a>')
    for label, run in (("the sweep's run", links.sweep_run), ("the aggregate run (these files)", links.aggregate_run)):
        if run:
            found.append(f'<a href="{html.escape(run_url(links.ui_url, links.experiment_id, run))}">{label}</a>')
    found.append(f'<a href="{html.escape(runs_url(links.ui_url, links.experiment_id))}">every run</a>')
    return f"MLflow: {' · '.join(found)} (start the UI with <code>make ui</code>)"


def write(path: Path, title: str, sections: Sequence[Section], records: Sequence[ScoreRecord], links: Links | None,
          about: str = "") -> Path:
    """The page: `sections` in order (the first ones are what a reader sees first), then the job runs (none when
    the page was built without the tracking store, from result files). `about` says where the results come from."""
    written = datetime.datetime.now().isoformat(timespec="seconds")
    line = " · ".join(part for part in (html.escape(about), f"written {written.replace('T', ' ')}",
                                         _navigation(links)) if part)
    parts = [f"<header><h1>{html.escape(title)}</h1><p class=\"about\">{line}</p></header>"]
    parts += [_section_html(section) for section in sections]
    runs = _runs_html(records, links)
    if runs:
        parts.append(f"<section><h2>Job runs</h2>{runs}</section>")
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title>'
            f'<meta name="clip-tables-written" content="{written}"><meta name="clip-tables-about" '
            f'content="{html.escape(about, quote=True)}"><style>{_STYLE}</style></head><body>{"".join(parts)}'
            f"<script>{SCRIPT.read_text()}</script></body></html>")
    return _save(path, page)


def _save(path: Path, text: str) -> Path:
    partial = path.with_name(f".{path.name}.partial")  # never half a page served to a reader
    partial.write_text(text)
    partial.replace(path)
    return path


_META = re.compile(r'<title>(?P<title>.*?)</title><meta name="clip-tables-written" content="(?P<written>[^"]*)">'
                   r'<meta name="clip-tables-about" content="(?P<about>[^"]*)">', re.S)


def write_index(folder: Path) -> Path:
    """`index.html`: every page in `folder`, the latest first, each with its title, when it was written and from
    what; the pages themselves are never overwritten by one another."""
    rows = []
    for page in folder.glob("*.html"):
        found = _META.search(page.read_text()[:4000]) if page.name != INDEX_FILE else None
        if found:
            rows.append({"page": f'<a href="{html.escape(page.name, quote=True)}">{found["title"]}</a>',
                         "written": found["written"].replace("T", " "), "from": found["about"]})
    rows.sort(key=lambda row: row["written"], reverse=True)
    frame = pd.DataFrame(rows, columns=["page", "written", "from"])
    title = "Tables rebuilt by python -m pipeline.aggregate"
    body = (f"<header><h1>{title}</h1><p class=\"about\">one page per layout in {html.escape(str(folder))}</p>"
            f"</header><section><h2>Pages</h2>{html_tables.frame_html(frame, main=True, linked=['page'])}</section>")
    return _save(folder / INDEX_FILE, f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}'
                 f"</title><style>{_STYLE}</style></head><body>{body}<script>{SCRIPT.read_text()}</script></body></html>")
