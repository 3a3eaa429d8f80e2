"""The zero-shot against few-shot comparison (pipeline/reports/fewshot.py) and how probe results enter the other tables."""
import math

import pytest

from pipeline.reports import fewshot, tables
from pipeline.reports.results import ScoreRecord


def result(acc1, head="zeroshot", k_shot="-", seed="-", prompts="p", dataset="cifar10", source="datacomp"):
    return ScoreRecord("ViT-B-32", "openai", dataset, prompts, "acc1", {"acc1": acc1}, source=source,
                       protocol="datacomp", task="zeroshot_classification", head=head, k_shot=k_shot, seed=seed,
                       features="pre_projection" if head == "linear_probe" else "")


def probes(curve: dict[str, list[float]], **where) -> list[ScoreRecord]:
    return [result(value, "linear_probe", k, str(seed), prompts="*", **where)
            for k, values in curve.items() for seed, value in enumerate(values)]


def test_the_match_is_interpolated_in_log2_shots():
    assert fewshot.matching_shots([1, 2, 4, 8], [0.2, 0.4, 0.6, 0.8], 0.5) == "2.8"  # 2^(1 + 0.5)
    assert fewshot.matching_shots([1, 2, 4], [0.2, 0.4, 0.6], 0.4) == "2.0"
    assert fewshot.matching_shots([1, 2], [0.5, 0.6], 0.3) == "< 1"
    assert fewshot.matching_shots([1, 2], [0.5, 0.6], 0.9) == "> 2"
    assert fewshot.matching_shots([1, 2], [0.5, 0.6], math.nan) == ""


def test_comparison_rows_hold_mean_and_std_over_seeds_and_the_best_zero_shot():
    records = probes({"1": [0.2, 0.4], "4": [0.6, 0.6], "all": [0.9, 0.9]}) + [result(0.5, prompts="a"),
                                                                              result(0.45, prompts="b")]
    [row] = fewshot.comparison(records, "acc1").to_dict("records")
    assert row["zero-shot"] == 0.5 and row["prompts"] == "a"
    assert row["1-shot"] == pytest.approx(0.3) and row["1-shot std"] == pytest.approx(0.1)
    assert row["4-shot"] == pytest.approx(0.6) and row["4-shot std"] == 0.0
    assert row["full probe"] == pytest.approx(0.9) and row["seeds"] == 2
    assert row["zero-shot matches"] == f"{2 ** (2 * 2 / 3):.1f}"  # 0.5 is 2/3 of the way from 0.3 (k=1) to 0.6 (k=4)


def test_zero_shot_is_compared_on_the_same_copy_only():
    records = probes({"1": [0.2]}, source="clip_benchmark") + [result(0.5, source="datacomp")]
    [row] = fewshot.comparison(records, "acc1").to_dict("records")
    assert math.isnan(row["zero-shot"]) and row["zero-shot matches"] == ""


def test_probe_rows_get_a_head_and_stay_out_of_the_zero_shot_layouts():
    records = probes({"2": [0.4, 0.6], "all": [0.9]}) + [result(0.5, prompts="*")]
    table = tables.build_table(records, "acc1")
    assert list(table["head"]) == ["zeroshot", "linear_probe 2-shot", "linear_probe"]
    assert list(table["cifar10"]) == pytest.approx([0.5, 0.5, 0.9])  # 2-shot: the mean of its seeds
    assert not any(map(tables.openclip38_eligible, records[:-1])) and tables.openclip38_eligible(records[-1])
    blog = tables.blog(records, "acc1")
    assert list(blog.columns) == ["dataset", "ViT-B-32 openai"] and list(blog["ViT-B-32 openai"]) == [0.5]


def test_the_plot_draws_every_dataset(tmp_path):
    records = probes({"1": [0.2, 0.3], "2": [0.5, 0.4]}) + probes({"1": [0.6]}, dataset="mnist") + [result(0.45)]
    path = fewshot.plot(fewshot.comparison(records, "acc1"), "acc1", tmp_path / "fewshot.png")
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(path).shape
    assert width > 2 * 4.5 * 100 and height > 300  # two panels side by side, at 120 dpi


def test_a_probe_sweep_finds_its_zero_shot_partners_among_earlier_results():
    sweep = probes({"1": [0.3]}) + probes({"1": [0.4]}, dataset="mnist") + [result(0.7, dataset="mnist")]
    earlier = [result(0.5), result(0.6, dataset="mnist"), result(0.5, source="clip_benchmark"),
               result(0.1, dataset="stl10")]
    assert fewshot.zero_shot_partners(sweep, earlier) == [earlier[0]]


def test_full_probes_alone_still_plot_and_nan_never_hides_a_result(tmp_path):
    records = probes({"all": [0.9]}) + [result(math.nan, prompts="a"), result(0.4, prompts="b")]
    table = fewshot.comparison(records, "acc1")
    assert table.loc[0, "zero-shot"] == 0.4 and table.loc[0, "prompts"] == "b"
    assert fewshot.plot(table, "acc1", tmp_path / "f.png").stat().st_size > 5_000


def test_tables_hold_only_rows_that_have_results_and_nan_seeds_stay_nan():
    records = probes({"4": [0.7, math.nan]}) + [result(0.5, prompts="*"),
                                                 ScoreRecord("B", "x", "cifar10", "*", "acc1", {"acc1": 0.3},
                                                             source="datacomp", protocol="datacomp")]
    table = tables.build_table(records, "acc1")
    assert sorted(zip(table["model"], table["head"])) == [("B", "zeroshot"), ("ViT-B-32", "linear_probe 4-shot"),
                                                          ("ViT-B-32", "zeroshot")]
    assert math.isnan(table.set_index("head").loc["linear_probe 4-shot", "cifar10"])


def test_clip_benchmarks_own_probe_results_are_labelled_as_probes(tmp_path):
    import json

    from pipeline.reports.results import read_clip_benchmark_json

    path = tmp_path / "probe.json"
    path.write_text(json.dumps({"dataset": "cifar10", "model": "ViT-B-32", "pretrained": "openai",
                                "task": "linear_probe", "metrics": {"lp_acc1": 0.95, "acc1": 0.95}}))
    record = read_clip_benchmark_json(path)
    assert record.head_label == "linear_probe (clip_benchmark)" and not tables.openclip38_eligible(record)
    assert fewshot.comparison([record], "acc1").empty
