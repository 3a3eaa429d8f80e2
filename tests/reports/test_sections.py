"""What each page holds: every page answers "does it reproduce?" first (a sentence, the verdicts, the differing
results folded), the sweep page then leads with its results and ends with the reproduction's plot and every
comparison; the reproduction layout's page is its answer, whole. The verdicts in words: what reproduces, what
differs, largest difference first."""
from __future__ import annotations

from pathlib import Path

from pipeline.reports import layouts, page, references, reproduction, results
from pipeline.reports import sections as report_sections
from pipeline.reports.results import ScoreRecord
from tests.records import prompt_record
from tests.reports.test_browser_pages import BENCHMARK, replicated, sweep_records


def kinds(section: page.Section) -> list[str]:
    return [type(item).__name__ if not isinstance(item, Path) else item.name for item in section.files]


def test_the_sweep_page_answers_then_leads_with_its_results(tmp_path):
    records = sweep_records()
    request = layouts.Request(records, "main", tmp_path, replicates=replicated(records))
    written = {layout.title: layouts.write_layout(layout.name, request) for layout in layouts.sweep_layouts(records)}
    found = report_sections.sweep(records, written)
    assert [s.title for s in found] == [report_sections.ANSWER_TITLE, "Results with 95 % intervals",
                                        "open_clip's 38-dataset table", "Zero-shot against linear probes",
                                        "Prompt engineering", "Over training",
                                        "Each result against the published value"]
    assert [s.main for s in found] == [False, True] + [False] * 5
    answer, last = found[0], found[-1]
    assert kinds(answer) == ["Text", "Table", "Table"] and answer.files[2].folded and not answer.files[1].folded
    assert answer.files[1].rows == page.SHORT_ROWS  # the verdicts leave the first screen to the results
    assert kinds(last) == ["reproduction.png", "reproduction.csv"]  # the verdicts are not shown twice


def test_the_reproduction_page_is_its_answer_whole(tmp_path):
    records = sweep_records()
    request = layouts.Request(records, "main", tmp_path)
    written = layouts.write_layout("reproduction", request)
    [only] = report_sections.layout(layouts.get("reproduction"), records, references.ALL, written)
    assert only.title == report_sections.VERDICTS_TITLE and only.main
    assert kinds(only) == ["Text", "Table", "reproduction.png", "Table", "reproduction.csv"]
    assert only.files[1].csv == reproduction.SUMMARY_FILE and not only.files[3].folded


def test_results_without_a_counterpart_get_one_sentence(tmp_path):
    records = [prompt_record("shapes", "dataset", 0.9, model="tiny-clip")]
    written = layouts.write_layout("compare", layouts.Request(
        records + [prompt_record("shapes", "classname", 0.8, model="tiny-clip")], "main", tmp_path,
        baseline="prompts:classname", replicates=replicated(records + [prompt_record("shapes", "classname", 0.8,
                                                                                      model="tiny-clip")])))
    answer, results = report_sections.layout(layouts.get("compare"), records, references.ALL, written)
    assert kinds(answer) == ["Text"] and answer.files[0].text.startswith("Nothing here can be checked")
    assert results.title == "Results" and results.main and kinds(results) == ["compare.csv"]


def test_the_verdicts_say_what_reproduces_and_list_the_differences_largest_first():
    chosen = references.chosen("openclip")
    found = report_sections.verdicts(reproduction.reproduce(results.from_directory(BENCHMARK), chosen), chosen)
    assert found.sentence.startswith("340 of 403 published values reproduce (each lies within our 95 % interval")
    assert "63 differ and 130 cannot be compared" in found.sentence and len(found.differing) == 63
    assert list(found.differing.columns) == report_sections.DIFFERING and len(found.summary) == 13
    assert list(found.differing["delta"].abs()) == sorted(found.differing["delta"].abs(), reverse=True)
    assert set(found.differing["cause"]) == {"none detected"}  # result files say nothing of protocol or prompts
    unknown = [ScoreRecord("tiny", "tiny-clip.pt", "shapes", "dataset", "acc1", {"acc1": 0.9}, source="local",
                           protocol="datacomp", task="zeroshot_classification")]
    every = references.chosen(references.ALL)
    nothing = report_sections.verdicts(reproduction.reproduce(unknown, every), every)
    assert nothing.sentence.startswith("Nothing here can be checked: none of the 1 results has a published counterpart")
    assert all(reference.name in nothing.sentence for reference in every) and nothing.summary.empty
