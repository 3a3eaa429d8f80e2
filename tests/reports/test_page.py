"""report.html: it leads with each result and its interval (the interval table, then the dot-and-whisker plot), then
the reports; long tables are paged and linked to their CSV; counts are never listed as metrics; every run is linked;
cells are escaped; the index lists every layout's page. (tests/reports/test_browser_pages.py reads them in a browser; test_html_tables.py, their tables.)"""
from __future__ import annotations

from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.reports import heatmap, layouts, page
from tests.records import prompt_record, replicates_from


class Outline(HTMLParser):
    """The page's headings, figures, tables and folded blocks, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.items: list[tuple[str, str]] = []
        self._heading: str | None = None
        self.folded_depth = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = dict(attrs)
        if tag == "h2":
            self._heading = ""
        elif tag == "img":
            self.items.append(("img", attributes.get("alt", "")))
        elif tag == "table":
            self.items.append(("table", attributes.get("id") or ("folded" if self.folded_depth else "open")))
        elif tag == "details":
            self.folded_depth += 1
        elif tag == "a" and attributes.get("href", "").endswith(".csv"):
            self.items.append(("csv link", attributes["href"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2" and self._heading is not None:
            self.items.append(("h2", self._heading))
            self._heading = None
        elif tag == "details":
            self.folded_depth -= 1

    def handle_data(self, data: str) -> None:
        if self._heading is not None:
            self._heading += data


def sweep_page(tmp_path: Path, datasets: int) -> tuple[str, Path]:
    """The per-prompt-set layout of two prompt sets over `datasets` datasets, and its page."""
    rng = np.random.default_rng(0)
    records = [prompt_record(f"d{i}", prompts, 0.88 + 0.002 * i + (0.003 if prompts == "dataset" else 0))
               for i in range(datasets) for prompts in ("classname", "dataset")]
    counts = {"num_samples": 100, "num_classes": 12, "ci_low/acc1": 0.85, "ci_high/acc1": 0.91, "acc5": 0.99,
              "mean_per_class_recall": 0.87}
    records = [replace(r, metrics={**r.metrics, **counts}) for r in records]
    reps = {r.score_run: r.value("acc1") + rng.normal(0, 0.01, 1000) for r in records}
    written = layouts.write_layout("per_prompts", layouts.Request(records, "acc1", tmp_path,
                                                                  replicates=replicates_from(reps)))
    links = page.Links("http://127.0.0.1:5000", "7", sweep_run="sweep1", aggregate_run="agg1")
    sections = [page.Section(layouts.LAYOUTS["per_prompts"].title, written.on_page, main=True)]
    report = page.write(tmp_path / "report.html", "Sweep", sections, records, links)
    return report.read_text(), tmp_path


def test_the_page_leads_with_each_result_and_its_interval(tmp_path: Path):
    text, folder = sweep_page(tmp_path, datasets=3)
    outline = Outline()
    outline.feed(text)
    assert outline.items[0] == ("h2", "Results with 95 % intervals")
    assert outline.items[1:4] == [("csv link", "intervals.csv"), ("table", page.RESULTS_ID), ("img", "table.png")]
    intervals = pd.read_csv(folder / "intervals.csv")
    assert intervals.loc[0, "d0"].startswith("0.8800 [") and intervals.loc[0, "mean"].count("[") == 1
    # The plot's axis is fitted to the values (0.85-0.91 here), not 0-1.
    assert (folder / "table.png").read_bytes()[:4] == b"\x89PNG"


def test_long_tables_are_paged_and_linked_and_counts_are_no_metrics(tmp_path: Path):
    text, folder = sweep_page(tmp_path, datasets=4)
    outline = Outline()
    outline.feed(text)
    results = pd.read_csv(folder / "results.csv")
    assert len(results) > page.PAGE_ROWS
    assert set(results["metric"]) == {"acc1", "acc5", "mean_per_class_recall"}  # num_samples and num_classes are columns, not metrics
    assert set(results["n"]) == {100} and set(results["classes"]) == {12}
    where = outline.items.index(("csv link", "results.csv"))
    assert outline.items[where + 1] == ("table", "open")
    assert ("img", "heatmap.png") in outline.items[:where]
    assert text.count(f'data-rows="{page.PAGE_ROWS}"') == 3  # intervals, results, job runs: paged by the script
    body = text[text.index("results.csv"):text.index("<h2>Job runs</h2>")]
    assert body.count("<tr>") == len(results) + 1  # every row is in the HTML: read whole with scripts off
    assert "#/experiments/7/runs/agg1" in text and "#/experiments/7/runs/sweep1" in text
    assert "#/experiments/7/runs/d0-dataset" in text  # the job run's own link


def test_a_plain_table_and_plot_render_with_every_cell_escaped(tmp_path: Path):
    pd.DataFrame({"model": ["<b>ViT</b>"], "cars": [0.51234]}).to_csv(tmp_path / "table.csv", index=False)
    heatmap.plot(pd.DataFrame({"cars": [0.5], "mean": [0.5]}, index=["m"]), "acc1", tmp_path / "heatmap.png")
    links = page.Links("http://127.0.0.1:5000", "7")
    written = page.write(tmp_path / "report.html", "Sweep", [page.Section("Results", [tmp_path / "heatmap.png",
                                                                                       tmp_path / "table.csv"])],
                         [prompt_record("cars", "dataset", 0.51234, model="<script>x</script>")], links)
    text = written.read_text()
    assert "<h2>Results</h2>" in text and "0.5123" in text and "data:image/png;base64," in text
    assert "<b>ViT</b>" not in text and "<script>x</script>" not in text


def test_each_layout_page_stays_and_the_index_lists_them_latest_first(tmp_path: Path):
    records = [prompt_record("cars", "dataset", 0.5)]
    for name in ("compare", "per_prompts"):
        page.write(tmp_path / f"{name}.html", f"{name} — ViT-B-32 on cars", [], records, None, f"layout={name}")
    index = page.write_index(tmp_path).read_text()
    assert index.count("<tr>") == 3 and 'href="per_prompts.html"' in index and 'href="compare.html"' in index
    assert "compare — ViT-B-32 on cars" in index and "layout=compare" in index
    assert (tmp_path / "compare.html").is_file() and not (tmp_path / ".compare.html.partial").exists()
