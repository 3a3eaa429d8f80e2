"""Does it reproduce? Results equal to the published values reproduce every cell; moved cells differ, and only
those; the interval widened by the published rounding decides where there is one; the causes that can be
detected are named; a bad request is one line. A plot whose labels never cover one another or the points."""
from __future__ import annotations

import math
from dataclasses import replace
from itertools import combinations
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.text import Text

from pipeline.errors import PipelineError
from pipeline.reports import layouts, references, reproduction, results
from pipeline.reports.results import ScoreRecord
from tests.conftest import run_pipeline


def published_records(reference: str, models: int | None = None) -> list[ScoreRecord]:
    """One result file per (model, dataset) of a reference, holding exactly its published values."""
    cells = references.published_cells(reference)
    cells = cells[cells["comparable"]]
    keep = list(dict.fromkeys(zip(cells["name"], cells["pretrained"])))[:models]
    records = []
    for (name, pretrained, dataset), group in cells.groupby(["name", "pretrained", "dataset"], sort=False):
        if (name, pretrained) in keep:
            records.append(ScoreRecord(name, pretrained, dataset, "external", group["metric"].iloc[0],
                                       dict(zip(group["metric"], group["published"])), run_id=f"{name}:{dataset}",
                                       task="zeroshot_classification"))
    return records


@pytest.mark.parametrize("reference", ["openclip", "clip_benchmark", "blog", "clip_paper"])
def test_results_equal_to_the_published_values_reproduce_every_cell(reference):
    records = published_records(reference, models=4)
    report = reproduction.reproduce(records, references.chosen(reference))
    compared = report.rows[report.rows["verdict"] != reproduction.NOT_COMPARABLE]
    assert len(compared) > 30 and (compared["verdict"] == reproduction.REPRODUCED).all()
    assert compared["delta"].abs().max() == 0 and report.without_counterpart == 0


def test_cells_moved_by_two_points_differ_and_only_those():
    records = published_records("openclip", models=2)
    moved = {(records[0].dataset, records[0].main_metric), (records[5].dataset, records[5].main_metric)}
    for index in (0, 5):
        metric = records[index].main_metric
        records[index] = replace(records[index], metrics={**records[index].metrics,
                                                          metric: records[index].metrics[metric] + 0.02})
    report = reproduction.reproduce(records, references.chosen("openclip"))
    differs = report.rows[report.rows["verdict"] == reproduction.DIFFERS]
    assert set(zip(differs["dataset"], differs["metric"])) == moved
    assert differs["delta"].tolist() == pytest.approx([0.02, 0.02])
    summary = report.summary.set_index("pretrained")
    assert summary["differs"].sum() == 2 and summary["largest |delta|"].max() == pytest.approx(0.02)


def our_result(value: float, low: float = math.nan, high: float = math.nan, **changes) -> ScoreRecord:
    """ViT-B-32 on OpenAI's weights, on ImageNet, as this project labels a job's result."""
    metrics = {"acc1": value, "ci_low/acc1": low, "ci_high/acc1": high, "n": 50000, "num_classes": 1000}
    record = ScoreRecord("ViT-B-32-quickgelu", "openai", "imagenet1k", "dataset", "acc1", metrics, run_id="job",
                         source="datacomp", protocol="datacomp", task="zeroshot_classification")
    return replace(record, **changes)


def rows_for(record: ScoreRecord, reference: str = "openclip") -> pd.DataFrame:
    report = reproduction.reproduce([record], references.chosen(reference))
    return report.rows[report.rows["metric"] == "acc1"]


def test_the_interval_widened_by_the_rounding_decides():
    published = 0.6332  # open_clip's ViT-B-32 openai on ImageNet, 4 decimals
    inside = rows_for(our_result(0.6300, 0.6290, published - 0.00004))  # within half the last digit
    assert inside["verdict"].tolist() == [reproduction.REPRODUCED]
    outside = rows_for(our_result(0.6300, 0.6290, published - 0.00006))
    assert outside["verdict"].tolist() == [reproduction.DIFFERS]
    # A result file has no interval: within max(rounding, 0.005) of the published value
    close = rows_for(our_result(published + 0.0049, source="external", protocol=""))
    far = rows_for(our_result(published + 0.0051, source="external", protocol=""))
    assert close["verdict"].tolist() == [reproduction.REPRODUCED] and far["verdict"].tolist() == [reproduction.DIFFERS]


def test_the_detectable_causes_are_named():
    row = rows_for(our_result(0.5, 0.49, 0.51, protocol="fp32", prompts="classname",
                              metrics={"acc1": 0.5, "ci_low/acc1": 0.49, "ci_high/acc1": 0.51, "n": 49000,
                                       "num_classes": 999})).iloc[0]
    assert row["verdict"] == reproduction.DIFFERS
    for said in ("protocol fp32 (the reference's: datacomp)", "prompts classname (the reference's: dataset)",
                 "test set of 49000 (the reference's: 50000)", "999 classes (the reference's: 1000)"):
        assert said in row["cause"]
    # open_clip's row for ViT-B-32 on laion400m_e32 ran GELU; a QuickGELU run of those weights has its own row too
    twin = rows_for(our_result(0.4, 0.39, 0.41, model="ViT-B-32", pretrained="laion2b_s34b_b79k")).iloc[0]
    assert twin["published_name"] == "ViT-B-32 laion2b_s34b_b79k" and "activation" not in twin["cause"]
    gelu = rows_for(our_result(0.4, 0.39, 0.41, model="ViT-B-16-quickgelu", pretrained="dfn2b")).iloc[0]
    assert gelu["published_name"] == "ViT-B-16 dfn2b" and gelu["cause"].startswith("activation: run with QuickGELU")


def test_a_metric_defined_otherwise_is_never_compared():
    voc = ScoreRecord("RN50-quickgelu", "openai", "voc2007", "clip_paper", "acc1", {"acc1": 0.82}, run_id="job",
                      source="datacomp", protocol="datacomp", task="zeroshot_classification")
    [row] = reproduction.reproduce([voc], references.chosen("clip_paper")).rows.to_dict("records")
    assert row["verdict"] == reproduction.NOT_COMPARABLE and math.isnan(row["ours"])
    assert row["published"] == pytest.approx(0.821) and "single-label" in row["cause"]


def test_the_layout_writes_the_report_and_refuses_results_without_a_counterpart(tmp_path):
    records = published_records("clip_paper", models=2)
    records[0] = replace(records[0], metrics={k: v + 0.05 for k, v in records[0].metrics.items()})
    written = layouts.write_layout("reproduction", layouts.Request(records, "main", tmp_path, reference="clip_paper"))
    assert {f.name for f in written.files} == {"reproduction.csv", "reproduction.md", "reproduction_summary.csv",
                                               "reproduction.png"}
    table = pd.read_csv(tmp_path / "reproduction.csv")
    assert list(table.columns[:12]) == ["reference", "model", "pretrained", "dataset", "metric", "ours", "published",
                                        "delta", "ci_low", "ci_high", "verdict", "cause"]
    # 27 datasets each: the four suite=clip_paper cannot sweep are compared where a result (a file) has them
    assert "54 of 54 results have a published counterpart in clip_paper" in written.markdown
    assert "53 reproduced, 1 differs" in written.markdown
    unknown = [ScoreRecord("tiny", "tiny-clip.pt", "shapes", "dataset", "acc1", {"acc1": 0.9}, source="local",
                           protocol="datacomp", task="zeroshot_classification")]
    with pytest.raises(PipelineError, match="none of the 1 results has a published counterpart in clip_paper"):
        layouts.write_layout("reproduction", layouts.Request(unknown, "main", tmp_path, reference="clip_paper"))


@pytest.mark.slow
def test_clip_benchmarks_published_results_against_open_clips_table(tmp_path):
    """What `make demo` shows: two published sources of the same 13 models checked against each other."""
    published = references.PUBLISHED / "clip_benchmark_benchmark.csv"
    done = run_pipeline(tmp_path, "layout=reproduction", "reference=openclip", f"results_dir={published}",
                        module="pipeline.aggregate")
    assert done.returncode == 0, done.stderr[-2000:]
    tables = tmp_path / "outputs" / "tables"
    rows = pd.read_csv(tables / "reproduction.csv")
    assert "<title>Does it reproduce the published numbers? — 8 models (13 weights) on 39 datasets</title>" in \
        (tables / "reproduction.html").read_text()  # its own page, and the index of them all
    assert 'href="reproduction.html"' in (tables / "index.html").read_text()
    assert f"Page: {tables / 'reproduction.html'}" in done.stdout
    svhn = rows[(rows["dataset"] == "vtab/svhn") & (rows["verdict"] != reproduction.NOT_COMPARABLE)]
    assert len(svhn) == 13 and svhn["delta"].abs().max() > 0.2  # different copies of SVHN
    close = rows[rows["verdict"] == reproduction.REPRODUCED].groupby("dataset").size()
    assert (close == 13).sum() >= 15  # about 20 datasets agree within the tolerance for every model
    bad = run_pipeline(tmp_path, "layout=reproduction", "reference=paper", module="pipeline.aggregate")
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("Error: unknown reference 'paper'")


BENCHMARK = references.PUBLISHED / "clip_benchmark_benchmark.csv"
FILES = Path(__file__).parents[1] / "fixtures" / "clip_benchmark_results"  # CLIP_benchmark's own output files


def test_clip_benchmarks_probe_files_are_checked_against_table_10_and_their_protocol_named():
    records = results.from_directory(FILES)  # zero-shot and probe files, datasets under their wds/ names
    report = reproduction.reproduce(records, references.chosen("clip_paper_probe"))
    rows = report.rows.set_index("dataset")
    full = [r for r in records if r.is_clip_benchmark_probe and r.k_shot == "all"]
    assert sorted(rows.index) == sorted(r.dataset for r in full) and report.without_counterpart == len(records) - 3
    for record in full:  # each differing probe names CLIP_benchmark's protocol, with what its file records
        row = rows.loc[record.dataset]
        assert row["ours"] == record.metrics["lp_acc1"] and row["published_name"] == "ViT-B/32 openai"
        if row["verdict"] == reproduction.DIFFERS:
            assert row["cause"] == (f"probe: CLIP_benchmark's AdamW (epochs 10, weight decay "
                                    f"{record.metrics['weight_decay']:g}), not the paper's L-BFGS logistic regression")
    assert set(rows["verdict"]) == {reproduction.REPRODUCED, reproduction.DIFFERS}
    # the zero-shot files of the same folder are checked against Table 11, `wds/vtab/cifar10` among them
    zero_shot = reproduction.reproduce(records, references.chosen("clip_paper")).rows
    assert "vtab/cifar10" in set(zero_shot["dataset"]) and set(zero_shot["reference"]) == {"clip_paper"}
    # this project's own probe is the paper's protocol: no such cause
    ours = ScoreRecord("ViT-B-32-quickgelu", "openai", "food101", "*", "acc1", {"acc1": 0.5}, source="clip_benchmark",
                       protocol="datacomp", head="linear_probe", k_shot="all", seed="0", features="pre_projection")
    [row] = reproduction.reproduce([ours], references.chosen("clip_paper_probe")).rows.to_dict("records")
    assert row["verdict"] == reproduction.DIFFERS and "AdamW" not in row["cause"]


def test_the_aggregate_command_reads_probe_files_into_table_10_and_its_reproduction(tmp_path):
    done = run_pipeline(tmp_path, "layout=reproduction", "reference=clip_paper_probe", f"results_dir={FILES}",
                        module="pipeline.aggregate")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "3 of 10 results have a published counterpart in clip_paper_probe" in done.stdout
    done = run_pipeline(tmp_path, "layout=clip_paper", f"results_dir={FILES}", module="pipeline.aggregate")
    assert done.returncode == 0, done.stderr[-2000:]
    assert {"clip_paper_table10.csv", "clip_paper_table11.csv"} <= {p.name for p in
                                                                   (tmp_path / "outputs" / "tables").iterdir()}


def test_labels_are_spread_apart_within_the_panel():
    heights = reproduction.spread([0.5, 0.5, 0.98, 0.99, 0.2])
    ordered = sorted(heights)
    assert all(b - a >= reproduction.LABEL_GAP - 1e-9 for a, b in zip(ordered, ordered[1:]))
    assert 0 <= min(heights) and max(heights) <= 1 and heights[4] == 0.2  # one alone stays at its point
    assert reproduction.spread([]) == []


def test_the_plot_names_the_worst_datasets_beside_the_panel_and_no_label_covers_another():
    rows = reproduction.reproduce(results.from_directory(BENCHMARK), references.chosen("openclip")).rows
    figure = reproduction.figure(rows)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    [panel] = [ax for ax in figure.axes if ax.texts]
    boxes = [Text.get_window_extent(label, renderer) for label in panel.texts]  # the words, not their leader lines
    differing = rows[rows["verdict"] == reproduction.DIFFERS]
    assert len(boxes) == min(reproduction.LABELLED, differing["dataset"].nunique())
    assert not any(a.overlaps(b) for a, b in combinations(boxes, 2))
    assert not any(box.overlaps(panel.get_window_extent(renderer)) for box in boxes)  # never over a point
    worst = differing.loc[differing["delta"].abs().idxmax()]
    assert any(label.get_text().startswith(worst["dataset"].split("/")[-1]) for label in panel.texts)
