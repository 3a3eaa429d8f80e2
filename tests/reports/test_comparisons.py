"""Bootstrap intervals and paired comparisons (pipeline/stages/score/uncertainty.py, pipeline/reports/comparisons.py), checked against
direct resampling written out here independently, and for coverage on simulated data."""
import math

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.reports import comparisons
from pipeline.reports.results import Bootstrap, ScoreRecord
from pipeline.stages.score import uncertainty
from tests.records import direct_interval

R = uncertainty.RESAMPLES


def record(prompts, dataset, value, n=300):
    return ScoreRecord("M", "w", dataset, prompts, "acc1", {"acc1": value, "n": n}, run_id=f"{prompts}:{dataset}",
                       source="local", protocol="datacomp", task="zeroshot_classification")


def test_compare_pairs_each_result_with_its_baseline_per_dataset_and_for_both_averages():
    rng = np.random.default_rng(9)
    reps = {(p, d): rng.normal(v, 0.01, R) for p, d, v in [("a", "x", 0.5), ("b", "x", 0.6), ("a", "y", 0.4),
                                                           ("b", "y", 0.4), ("*", "z", 0.3)]}
    records = [record("a", "x", 0.5), record("b", "x", 0.6), record("a", "y", 0.4, n=100), record("b", "y", 0.4, n=100),
               record("*", "z", 0.3, n=600)]
    table = comparisons.compare(records, "acc1", {"prompts": "a"},
                                lambda r: Bootstrap({"acc1": reps[(r.prompts, r.dataset)]}, order=r.dataset))
    rows = table.set_index("dataset")
    assert list(table["candidate"].unique()) == ["prompts=b"]
    assert rows.loc["x", "difference"] == pytest.approx(0.1) and rows.loc["x", "significant"] == "yes"
    assert rows.loc["z", "difference"] == 0 and rows.loc["z", "p"] == 1.0  # prompt-free: its own partner
    assert rows.loc["mean (3 datasets)", "difference"] == pytest.approx(0.1 / 3)
    assert rows.loc["size-weighted mean (3 datasets)", "difference"] == pytest.approx(0.1 * 300 / 1000)
    direct = np.mean([reps[("b", "x")] - reps[("a", "x")], reps[("b", "y")] - reps[("a", "y")], np.zeros(R)], axis=0)
    assert (rows.loc["mean (3 datasets)", "ci_low"], rows.loc["mean (3 datasets)", "ci_high"]) == pytest.approx(
        direct_interval(direct))


def test_results_csv_rows_and_interval_cells():
    r = ScoreRecord("M", "w", "x", "a", "acc1", {"acc1": 0.5, "ci_low/acc1": 0.4, "ci_high/acc1": 0.6, "n": 10,
                                                  "num_samples": 10, "num_classes": 3, "acc5": math.nan},
                    source="local", protocol="datacomp")
    frame = comparisons.results_frame([r]).set_index("metric")
    assert list(frame.index) == ["acc1", "acc5"]  # bounds and counts are columns, never metrics
    assert frame.loc["acc1", ["value", "ci_low", "ci_high", "n", "classes"]].tolist() == [0.5, 0.4, 0.6, 10, 3]
    assert frame.loc["acc1", ["head", "k_shot", "seed"]].tolist() == ["zeroshot", "-", "-"]
    assert math.isnan(frame.loc["acc5", "ci_low"]) and frame["captions"].isna().all()
    cells = comparisons.interval_table([r], "acc1", lambda _: Bootstrap({"acc1": np.linspace(0.4, 0.6, R)}))
    assert cells.loc[0, "x"] == "0.5000 [0.4050, 0.5950]" and cells.loc[0, "mean"] == cells.loc[0, "x"]
    # Without replicates each result keeps the interval its score logged; an average has none.
    own = comparisons.interval_table([r], "acc1")
    assert own.loc[0, "x"] == "0.5000 [0.4000, 0.6000]" and own.loc[0, "mean"] == "0.5000"


def test_results_csv_gives_the_ties_a_column_only_where_a_tie_decided_an_outcome():
    metrics = {"acc1": 0.5, "n": 10, "num_samples": 10, "num_classes": 3}
    untied, tied = (ScoreRecord("M", "w", dataset, "a", "acc1", {**metrics, "ties": ties}, source="local",
                                protocol="datacomp") for dataset, ties in (("x", 0.0), ("y", 2.0)))
    assert "ties" not in comparisons.results_frame([untied]).columns
    frame = comparisons.results_frame([untied, tied]).set_index("dataset")
    assert list(frame["metric"]) == ["acc1", "acc1"]  # a count, never a metric
    assert frame["ties"].to_dict() == {"x": 0, "y": 2}


def test_a_baseline_is_named_as_hydra_passes_it():
    assert comparisons.parse_baseline("prompts:dataset") == {"prompts": "dataset"}
    assert comparisons.parse_baseline({"model": "A", "pretrained": "b"}) == {"model": "A", "pretrained": "b"}
    with pytest.raises(Exception, match="baseline=prompts:dataset"):
        comparisons.parse_baseline("colour:red")


def test_results_pair_only_in_the_same_sample_order_and_a_compare_without_partners_says_so():
    records = [record("a", "x", 0.5), record("b", "x", 0.6)]
    orders = {"a": "1111", "b": "2222"}  # e.g. one scored before samples were kept in the dataset's order
    with pytest.raises(PipelineError, match="different test samples .* cannot be paired"):
        comparisons.compare(records, "acc1", {"prompts": "a"},
                            lambda r: Bootstrap({"acc1": np.zeros(R)}, order=orders[r.prompts]))
    assert comparisons.compare([record("a", "x", 0.5), record("c", "y", 0.5)], "acc1", {"prompts": "a"},
                               lambda r: Bootstrap({"acc1": np.zeros(R)})).empty


def test_p_is_never_reported_below_one_resample():
    assert uncertainty.paired(np.ones(R), np.zeros(R))[2] == 1 / R


def test_results_in_different_languages_never_pair():
    """A model against a baseline model on a multilingual dataset: each language with its own baseline."""
    values = {("A", "de"): 0.50, ("A", "ko"): 0.10, ("B", "de"): 0.55, ("B", "ko"): 0.12}
    records = [ScoreRecord(model, "w", "multilingual/xtd10", "*", "acc1", {"acc1": value, "n": 300},
                           run_id=f"{model}:{language}", source="local", protocol="datacomp", language=language)
               for (model, language), value in values.items()]
    reps = {key: np.full(R, value) for key, value in values.items()}
    table = comparisons.compare(records, "acc1", {"model": "A"},
                                lambda r: Bootstrap({"acc1": reps[(r.model, r.language)]}, order="same"))
    by_language = table[table["dataset"] == "multilingual/xtd10"].set_index("language")["difference"]
    assert by_language.to_dict() == pytest.approx({"de": 0.05, "ko": 0.02})
