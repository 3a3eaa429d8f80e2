"""What each report page holds: the "does it reproduce?" section every page leads with, the sweep page's sections
(that answer, the results with their intervals, every other report), and a layout's own page's."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pandas as pd

from pipeline.reports import layouts, page, references, reproduction
from pipeline.reports.references import Reference
from pipeline.reports.results import ScoreRecord

REPRODUCTION = layouts.LAYOUTS["reproduction"]
ANSWER_TITLE = "Does it reproduce?"
VERDICTS_TITLE = "Verdicts, differences and their causes"  # the reproduction page's, whose title asks the question
DIFFERING = ["reference", "model", "pretrained", "dataset", "metric", "ours", "ci_low", "ci_high", "published", "delta",
             "cause"]


@dataclass(frozen=True)
class Verdicts:
    """The reproduction report as a page says it: one sentence, the verdicts per (reference, model), and the results
    that differ with their detected causes, largest difference first (both empty when nothing could be compared)."""

    sentence: str
    summary: pd.DataFrame
    differing: pd.DataFrame


def verdicts(report: reproduction.Reproduction, chosen: Sequence[Reference]) -> Verdicts:
    if report.rows.empty:
        searched = ", ".join(reference.name for reference in chosen)
        return Verdicts(f"Nothing here can be checked: none of the {report.results} results has a published "
                        f"counterpart (the same model, weights and dataset) in the references searched: {searched} "
                        f"(their models are listed in pipeline/reports/published/).",
                        pd.DataFrame(columns=reproduction.SUMMARY), pd.DataFrame(columns=DIFFERING))
    counts = report.rows["verdict"].value_counts()
    reproduced, differs, other = (int(counts.get(verdict, 0)) for verdict in reproduction.VERDICTS)
    compared = reproduction.described(report, chosen)
    sentence = (f"{reproduced} of {reproduced + differs} published values reproduce (each lies within our 95 % "
                f"interval, widened by its rounding); {differs} differ"
                + (f" and {other} cannot be compared (a metric defined otherwise)" if other else "")
                + f". {compared[0].upper()}{compared[1:]}.")
    differing = report.rows[report.rows["verdict"] == reproduction.DIFFERS]
    differing = differing.reindex(differing["delta"].abs().sort_values(ascending=False).index)[DIFFERING]
    differing = differing.assign(cause=differing["cause"].replace("", "none detected"))
    return Verdicts(sentence, report.summary, differing.reset_index(drop=True))


def answer(records: list[ScoreRecord], reference: str, own: layouts.Written | None = None) -> page.Section:
    """What every page answers first: one sentence, the verdicts per (reference, model) and the results that differ
    with their causes. On the reproduction layout's own page (`own`: its files) it is the page's main section, with
    the plot and every comparison; elsewhere its tables are kept short (paged, the differing results folded)."""
    chosen = references.chosen(reference)
    found = verdicts(reproduction.reproduce(records, chosen), chosen)
    items: list[page.Item] = [page.Text(found.sentence)]
    rows = page.PAGE_ROWS if own else page.SHORT_ROWS
    if not found.summary.empty:
        items.append(page.Table(found.summary, "verdicts per reference and model",
                                reproduction.SUMMARY_FILE if own else None, rows=rows))
    items += [f for f in (own.files if own else []) if f.suffix == ".png"]
    if not found.differing.empty:
        items.append(page.Table(found.differing, f"the {len(found.differing)} results that differ, largest difference "
                                                 f"first, with what can be detected of the cause", folded=not own))
    items += [f for f in (own.files if own else []) if f.name == reproduction.ROWS_FILE]
    return page.Section(VERDICTS_TITLE if own else ANSWER_TITLE, items, main=own is not None)


def sweep(records: list[ScoreRecord], written: dict[str, layouts.Written]) -> list[page.Section]:
    """The sweep page: does it reproduce, the results with their intervals (the main section), every other report,
    then the reproduction's plot and every comparison."""
    if not records:
        return [page.Section(title, done.on_page) for title, done in written.items()]
    reports = [(title, done) for title, done in written.items() if title != REPRODUCTION.title]
    sections = [answer(records, references.ALL)]
    sections += [page.Section(title, done.on_page, main=not number) for number, (title, done) in enumerate(reports)]
    if REPRODUCTION.title in written:
        shown = [f for f in written[REPRODUCTION.title].on_page if f.name != reproduction.SUMMARY_FILE]
        sections.append(page.Section("Each result against the published value", shown))
    return sections


def layout(shown: layouts.Layout, records: list[ScoreRecord], reference: str, written: layouts.Written
           ) -> list[page.Section]:
    """A layout's own page: does it reproduce, then the layout's table and plots; the reproduction layout's page is
    its answer."""
    if shown is REPRODUCTION:
        return [answer(records, reference, written)]
    return [answer(records, reference), page.Section("Results", written.on_page, main=True)]
