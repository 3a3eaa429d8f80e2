"""Tables as the report pages show them: every cell as its file prints it (longer numbers to 4 decimals), numbers
right-aligned, and wide tables made to fit the page: a value wraps above its interval and a path after its `/`, a
column and its `std` show as `mean ± std`, columns empty in every row are left out, a wide and short table is turned.
The rows are all in the HTML; `page.js` sorts, filters and pages them."""
from __future__ import annotations

import html
import itertools
import re
from typing import Sequence

import pandas as pd

PAGE_ROWS = 15  # a longer table is shown a page at a time (all of it with scripts off)
MANY_COLUMNS = 12  # a table with more columns is set smaller, to fit the page
TURNED_COLUMNS = 18  # a table with more columns, and fewer rows than columns, is shown turned (`turned`)
RESULTS_ID = "results"  # the page's main table, which its first screen shows
_BREAKS = re.compile(r"([/_])(?=[^/_\s])")
_INTERVAL = re.compile(r"^(\S+) (\[[^\]]*\])$")  # `value [low, high]`, as comparisons.cell prints it


def printed(cell: str) -> str:
    """A CSV cell as the page shows it: as the file prints it (a table rounded for print, the paper's one decimal,
    stays so), but a longer number to 4 decimals."""
    try:
        value = float(cell)
    except ValueError:
        return cell
    decimals = cell.split(".", 1)[1] if "." in cell else ""
    return cell if len(decimals) <= 4 and "e" not in cell.lower() and cell.strip() == cell else f"{value:.4f}"


def _text(value: object) -> str:
    if isinstance(value, float):
        return "" if pd.isna(value) else printed(repr(value))
    return "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def _is_number(text: str) -> bool:
    try:
        float(_INTERVAL.sub(r"\1", text).split(" ± ")[0])
        return True
    except ValueError:
        return False


def _cell(text: str, linked: bool) -> str:
    """A cell's HTML: a value and its interval kept apart, so a narrow column wraps between them and nowhere else."""
    if linked:
        return text
    found = _INTERVAL.match(text)
    if found:
        return f"<span>{html.escape(found.group(1))}</span> <span>{html.escape(found.group(2))}</span>"
    if _is_number(text):  # `mean ± std` may wrap before its ±
        return " ".join(f"<span>{html.escape(part)}</span>" for part in text.replace(" ± ", " \0± ").split(" \0"))
    return _breakable(text)


def _breakable(text: str) -> str:
    """Escaped, and free to wrap after / and _ (a path, a snake_case name) where a column is narrow."""
    return _BREAKS.sub(r"\1<wbr>", html.escape(text))


def with_spread(frame: pd.DataFrame) -> pd.DataFrame:
    """A column `X` followed by `X std` shown as one, `mean ± std` (the few-shot table: half as many columns)."""
    columns, shown = list(frame.columns), {}
    for column in columns:
        spread = f"{column} std"
        if column.endswith(" std") and column.removesuffix(" std") in columns:
            continue
        if spread in columns:
            shown[f"{column} ± std"] = [f"{v} ± {s}" if v and s else v for v, s in zip(frame[column], frame[spread])]
        else:
            shown[column] = list(frame[column])
    return pd.DataFrame(shown, columns=list(shown))


def turned(texts: pd.DataFrame, numeric: set[str]) -> pd.DataFrame:
    """A wide, short table turned a quarter: a row per column after its leading labels, a column per row, named by
    those labels (open_clip's 38 datasets down the page rather than across it)."""
    labels = list(itertools.takewhile(lambda c: c not in numeric, texts.columns)) or list(texts.columns[:1])
    names = texts[labels].agg(" / ".join, axis=1)
    body = texts.drop(columns=labels).T
    body.columns = [name if list(names).count(name) == 1 else f"{name} ({n + 1})" for n, name in enumerate(names)]
    body.insert(0, " / ".join(labels), list(body.index))
    return body.reset_index(drop=True)


def frame_html(frame: pd.DataFrame, main: bool = False, linked: Sequence[str] = (), rows: int = PAGE_ROWS) -> str:
    """A sortable, filterable table; numeric columns right-aligned; `linked` columns hold HTML already; a column
    empty in every row is left out (its file keeps it); a wide, short table is shown turned (`turned`)."""
    texts = frame.apply(lambda column: column.map(_text)) if len(frame) else frame.astype(str)
    if len(texts):
        texts = texts[[c for c in texts.columns if (texts[c] != "").any()]]
    numeric = _numeric(texts, linked)
    note = ""
    if len(texts.columns) > TURNED_COLUMNS and len(texts) < len(texts.columns) and not linked:
        texts = turned(texts, numeric)
        numeric, note = _numeric(texts, linked), '<p class="file">shown turned: a row per column of the file</p>'
    head = "".join(f"<th>{_breakable(str(c))}</th>" for c in texts.columns)
    opened = [f'<td{" class=num" if c in numeric else ""}>' for c in texts.columns]
    links = [c in linked for c in texts.columns]
    body = "".join("<tr>" + "".join(f"{start}{_cell(value, link)}</td>" for start, link, value in zip(opened, links, row))
                   + "</tr>" for row in texts.itertuples(index=False, name=None))
    marked = f' id="{RESULTS_ID}"' if main else ""
    many = " many" if len(texts.columns) > MANY_COLUMNS else ""
    return (f'{note}<div class="scroll"><table class="data{many}"{marked} data-rows="{rows}"><thead><tr>{head}</tr>'
            f"</thead><tbody>{body}</tbody></table></div>")


def _numeric(texts: pd.DataFrame, linked: Sequence[str]) -> set[str]:
    return {c for c in texts.columns if c not in linked and (texts[c] != "").any()
            and texts[c][texts[c] != ""].map(_is_number).all()}
