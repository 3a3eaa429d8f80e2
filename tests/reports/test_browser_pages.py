"""Every kind of report page read in headless Chromium, as a person opens it: a sweep's report.html (prompt sets,
probes, a training run's checkpoints and results with published counterparts, so every sweep report is on it), each
aggregate layout's page, the reproduction page and the index. Each fails on a console error, an image not shown, a
table wider than the page, or a first screen without the results table; the tables sort, filter and page, and with
scripts off every row is still there. Screenshots: outputs/test_artifacts/report_pages/ (printed)."""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import aggregate
from pipeline.errors import PipelineError
from pipeline.reports import layouts, page, references, reproduction, results, robustness, titles
from pipeline.reports import sections as report_sections
from pipeline.reports.results import Bootstrap, ScoreRecord
from tests import browser
from tests.conftest import ASSETS
from tests.records import PUBLISHED, published_records
from tests.reports.test_multilingual import xtd10_records

pytestmark = pytest.mark.slow  # a browser: about 30 s for the dozen pages
ARTIFACTS = ASSETS / "test_artifacts" / "report_pages"
BENCHMARK = references.PUBLISHED / "clip_benchmark_benchmark.csv"
MODEL, WEIGHTS = "ViT-B-32-quickgelu", "openai"  # open_clip's table has this row (OpenAI's weights, QuickGELU)
STEPS = [1200, 300, 600]  # swept out of order: the page lists them by step


def scored(model: str, pretrained: str, dataset: str, prompts: str, value: float, **fields) -> ScoreRecord:
    """A job's result with its interval and its own score run (bootstrap replicates in `replicated`)."""
    label = f"{model}:{pretrained}:{dataset}:{prompts}:{fields.get('k_shot', '')}:{fields.get('seed', '')}"
    metrics = {"acc1": value, "ci_low/acc1": value - 0.02, "ci_high/acc1": value + 0.02, "num_samples": 500,
               "num_classes": 10, "acc5": min(1.0, value + 0.1)}
    return ScoreRecord(model, pretrained, dataset, prompts, "acc1", metrics, run_id=f"run-{label}",
                       source="datacomp", protocol="datacomp", task="zeroshot_classification",
                       score_run=f"score-{label}", **fields)


def sweep_records() -> list[ScoreRecord]:
    """What one sweep's jobs could hold: two prompt sets of a model with published counterparts (one near its
    published value, one far from it), its k-shot probes, and three checkpoints of a training run."""
    published = references.published_cells("openclip").set_index(["model", "weights", "dataset", "metric"])["published"]
    records = [scored(MODEL, WEIGHTS, dataset, prompts, float(published[(MODEL, WEIGHTS, dataset, "acc1")]) + shift)
               for dataset, shift in (("cifar10", 0.001), ("food101", -0.06), ("vtab/dtd", 0.004))
               for prompts in ("classname", "dataset")]
    records += [scored(MODEL, WEIGHTS, "cifar10", "*", 0.6 + 0.05 * i + 0.01 * seed, head="linear_probe",
                       k_shot=k, seed=str(seed), features="pre_projection")
                for i, k in enumerate(("1", "2", "4", "16", "all")) for seed in (0, 1)]
    records += [replace(scored("tiny-clip", f"tiny-clip-run/step_{step}.pt", "cifar10", "dataset", 0.3 + step / 3000),
                        tags={"checkpoint_step": str(step), "checkpoint_run": "tiny-clip-run"}) for step in STEPS]
    return records


def replicated(records: list[ScoreRecord]):
    """Bootstrap replicates for every record, in one sample order, so every interval and pair can be computed."""
    rng = np.random.default_rng(0)
    table = {r.score_run: r.value("acc1") + rng.normal(0, 0.01, 500) for r in records}
    return lambda r: Bootstrap({"acc1": table[r.score_run]}, order="same") if r.score_run in table \
        else results.NO_BOOTSTRAP


def sweep_page(folder: Path) -> Path:
    """The sweep's page, built as the multirun's aggregate step builds it, links to a UI included."""
    records = sweep_records()
    request = layouts.Request(records, "main", folder, replicates=replicated(records))
    written = {}
    for layout in layouts.sweep_layouts(records):
        try:
            written[layout.title] = layouts.write_layout(layout.name, request)
        except PipelineError:  # as aggregate.sweep_tables: a report the results cannot make is left out
            pass
    assert set(written) >= {"Prompt engineering", "Zero-shot against linear probes", "Over training",
                            report_sections.REPRODUCTION.title}
    links = page.Links("http://127.0.0.1:5000", "1", "sweep-run", "aggregate-run", "sweep-sweep-run")
    return page.write(folder / page.REPORT_FILE, titles.describe(records), report_sections.sweep(records, written),
                      records, links, "sweep 2026-12-07 10-00-00")


def layout_page(folder: Path, name: str, records: list[ScoreRecord], **request) -> Path:
    """`python -m pipeline.aggregate layout=NAME`'s page, as its `main` writes it (without a store)."""
    layout = layouts.get(name)
    made = layouts.Request(records, "main", folder, **request)
    return aggregate.write_layout_page(layout, made, layouts.write_layout(name, made), "the test's records")


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, Path]:
    """One folder of layout pages and one sweep folder, built once for every check below."""
    root = tmp_path_factory.mktemp("pages")
    tables = root / "tables"
    ours = sweep_records()
    zero_shot = [r for r in ours if r.head == "zeroshot" and "checkpoint_run" not in r.tags]
    published = [r for _, row in PUBLISHED.iterrows() for r in published_records(row)]
    benchmark = results.from_directory(BENCHMARK)  # CLIP_benchmark's own results: 13 models on its datasets
    found = {"sweep": sweep_page(root / "sweep")}
    for name, records, extra in (
            ("per_prompts", ours, {"intervals": True, "replicates": replicated(ours)}),
            ("compare", zero_shot, {"baseline": "prompts:classname", "replicates": replicated(ours)}),
            ("prompt_gains", zero_shot, {"replicates": replicated(ours)}),
            ("fewshot", ours, {}),
            ("training_curves", ours, {}),
            ("openclip38", published, {}),
            ("blog", benchmark, {}),
            ("clip_paper", published, {}),
            ("robustness", published, {"baseline": robustness.bundled_baseline()}),
            ("multilingual", xtd10_records("nllb-clip-base", "v1"), {}),
            ("reproduction", benchmark, {"reference": "openclip"})):
        found[name] = layout_page(tables, name, records, **extra)
    found["index"] = tables / page.INDEX_FILE
    return found


@pytest.fixture(scope="module")
def chromium():
    with browser.chromium_or_skip() as running:
        yield running


@pytest.mark.parametrize("name", ["sweep", *layouts.LAYOUTS, "index"])
def test_each_page_renders_whole_and_fits_with_its_results_on_the_first_screen(pages, chromium, name):
    shot = ARTIFACTS / f"{name}.png"
    rendered = chromium.render(pages[name].as_uri(), shot)
    print(f"screenshot: {shot}")
    assert rendered.problems == [], (name, rendered.problems)
    assert rendered.measured["images"] >= (0 if name in ("openclip38", "blog", "clip_paper", "multilingual", "compare",
                                                          "index") else 1)
    chromium.render(pages[name].as_uri(), ARTIFACTS / f"{name}-whole.png", full_page=True)


def outline(text: str) -> list[str]:
    """The page's section headings, in order."""
    return re.findall(r"<h2>(.*?)</h2>", text)


def test_every_page_answers_does_it_reproduce_first(pages):
    sweep = pages["sweep"].read_text()
    assert outline(sweep)[:2] == [report_sections.ANSWER_TITLE, "Results with 95 % intervals"]
    assert outline(sweep)[-2:] == ["Each result against the published value", "Job runs"]
    compared = reproduction.reproduce(sweep_records(), references.chosen(references.ALL)).rows["verdict"]
    counts = compared.value_counts()
    assert (f"{counts['reproduced']} of {counts['reproduced'] + counts['differs']} published values reproduce"
            in sweep)
    differing = sweep[sweep.index(f"the {counts['differs']} results that differ"):sweep.index("<h2>Results with 95 %")]
    assert differing.count("<tr>") == counts["differs"] + 1 and "food101" in differing  # 6 points below published
    for name in ("per_prompts", "compare", "openclip38", "multilingual"):
        assert outline(pages[name].read_text())[:2] == [report_sections.ANSWER_TITLE, "Results"], name
    assert outline(pages["reproduction"].read_text())[0] == report_sections.VERDICTS_TITLE


def test_pages_are_titled_by_what_they_show_and_the_index_lists_every_layout(pages):
    title = lambda name: pages[name].read_text().split("<title>")[1].split("</title>")[0]
    assert title("sweep") == ("ViT-B-32-quickgelu, tiny-clip on cifar10, food101, vtab/dtd: 3 checkpoints of "
                              "tiny-clip-run, 2 prompt sets, zero-shot and linear probes (1, 2, 4, 16-shot and full; "
                              "2 seeds)")
    assert title("training_curves").startswith("Over training — ")
    assert title("reproduction") == "Does it reproduce the published numbers? — 8 models (13 weights) on 39 datasets"
    index = pages["index"].read_text()
    for name in layouts.LAYOUTS:
        assert f'href="{name}.html"' in index, name
    assert all(path.parent == pages["index"].parent for name, path in pages.items() if name != "sweep")


def test_checkpoints_are_listed_by_step_everywhere(pages):
    folder = pages["sweep"].parent
    intervals = pd.read_csv(folder / "intervals.csv")
    steps = [p for p in intervals["pretrained"] if "step_" in p]
    assert steps == [f"tiny-clip-run/step_{s}.pt" for s in sorted(STEPS)]
    curve = pd.read_csv(folder / "training_curves.csv")
    assert list(curve["step"]) == sorted(STEPS) and (folder / "training_curves.csv").read_text().count(".0000,") == 0
    text = pages["sweep"].read_text()
    runs = text[text.index("<h2>Job runs</h2>"):]
    assert [runs.index(f"step_<wbr>{s}.pt") for s in sorted(STEPS)] == sorted(runs.index(f"step_<wbr>{s}.pt")
                                                                              for s in STEPS)


def cells(table) -> list[list[str]]:
    """The rows a table shows now, as text."""
    return [[cell.strip() for cell in row.locator("td").all_text_contents()] for row in table.locator("tbody tr").all()]


def test_tables_sort_filter_and_page_in_the_page_itself(pages, chromium):
    every = pd.read_csv(pages["reproduction"].parent / "reproduction.csv")
    with chromium.page(pages["reproduction"].as_uri()) as (tab, errors):
        assert len(cells(tab.locator("#results"))) == 13  # the verdicts per model, on one page
        table, controls = tab.locator("table").last, tab.locator(".controls").last  # every comparison
        header = [text.strip() for text in table.locator("thead th").all_text_contents()]
        assert len(cells(table)) == page.PAGE_ROWS and f"of {len(every)}" in controls.text_content()
        controls.get_by_role("button", name="next ›").click()
        assert f"rows {page.PAGE_ROWS + 1}–{2 * page.PAGE_ROWS} of {len(every)}" in controls.text_content()

        controls.locator("input").fill("svhn ViT-B-16")  # every word, anywhere in the row
        wanted = every[every["dataset"].str.contains("svhn") & every["model"].str.startswith("ViT-B-16")]
        shown = cells(table)
        assert len(shown) == len(wanted) > 0 and all("svhn" in " ".join(row) for row in shown)

        controls.locator("input").fill("")
        table.locator("thead th").nth(header.index("delta")).click()  # ascending, empty cells last
        deltas = [row[header.index("delta")] for row in cells(table)]
        assert [float(d) for d in deltas] == sorted(float(d) for d in deltas)
        assert float(deltas[0]) == pytest.approx(every["delta"].min(), abs=1e-4)
        assert errors == []


def test_with_scripts_off_every_row_is_still_there(pages, chromium):
    every = pd.read_csv(pages["reproduction"].parent / "reproduction.csv")
    with chromium.page(pages["reproduction"].as_uri(), javascript=False) as (tab, errors):
        counts = tab.evaluate("() => [...document.querySelectorAll('table')].map((t) => t.tBodies[0].rows.length)")
        assert counts[-1] == len(every) and tab.locator(".controls").count() == 0
        assert tab.locator("img").count() == 1 and errors == []
