"""Effective robustness (pipeline/reports/robustness.py): the logit-space baseline, the points, the table and the figure."""
import math

import pandas as pd
import pytest

from pipeline.errors import PipelineError
from pipeline.reports import robustness
from pipeline.reports.results import ScoreRecord

DATASETS = (robustness.IN_DISTRIBUTION, *robustness.SHIFTS)
# Three "ImageNet-trained models" (ImageNet, shift average) and two zero-shot models (ImageNet, five shifts).
BASELINE = pd.DataFrame({"name": ["m1", "m2", "m3"], "imagenet": [0.60, 0.70, 0.80], "shift": [0.25, 0.33, 0.46]})
CLIP = {("ViT-B-32", "openai"): (0.63, (0.56, 0.42, 0.69, 0.31, 0.44)),
        ("RN50", "openai"): (0.60, (0.53, 0.35, 0.60, 0.23, 0.40))}


def result(model, pretrained, dataset, acc1, prompts="dataset", source="datacomp", head="zeroshot"):
    probe = head == "linear_probe"
    return ScoreRecord(model, pretrained, dataset, prompts, "acc1", {"acc1": acc1}, source=source,
                       protocol="datacomp", task="zeroshot_classification", head=head,
                       k_shot="all" if probe else "-", features="pre_projection" if probe else "")


def model_records(model, pretrained, imagenet, shifts, **where):
    return [result(model, pretrained, dataset, value, **where) for dataset, value in zip(DATASETS, (imagenet, *shifts))]


def clip_records(**where):
    return [r for (model, pretrained), (imagenet, shifts) in CLIP.items()
            for r in model_records(model, pretrained, imagenet, shifts, **where)]


def logit(p):
    return math.log(p / (1 - p))


def test_effective_robustness_matches_a_hand_computation():
    xs, ys = [logit(p) for p in BASELINE["imagenet"]], [logit(p) for p in BASELINE["shift"]]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    a = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    b = mean_y - a * mean_x
    baseline = robustness.fit_baseline(BASELINE, "hand-made")
    assert (baseline.slope, baseline.intercept) == (pytest.approx(a, abs=1e-9), pytest.approx(b, abs=1e-9))

    table = robustness.effective_robustness(clip_records(), baseline).set_index("model")
    for (model, _), (imagenet, shifts) in CLIP.items():
        shift = sum(shifts) / 5
        expected = 1 / (1 + math.exp(-(a * logit(imagenet) + b)))
        row = table.loc[model]
        assert row["shift"] == pytest.approx(shift, abs=1e-12)
        assert row["expected_shift"] == pytest.approx(expected, abs=1e-9)
        assert row["effective_robustness"] == pytest.approx(shift - expected, abs=1e-9)
        assert row["gap_closed"] == pytest.approx((shift - expected) / (imagenet - expected), abs=1e-9)
    assert list(table.index) == ["ViT-B-32", "RN50"]  # best first: 0.484 - f(0.63) > 0.422 - f(0.60)


def test_the_bundled_baseline_is_taori_et_al_s_standard_models_with_a_source_each():
    published = pd.read_csv(robustness.BASELINE_FILE, dtype={"source": str})
    assert len(published) >= 80 and published["name"].is_unique
    assert published["source"].fillna("").str.strip().ne("").all()
    assert published[list(DATASETS)].notna().all().all()
    baseline = robustness.bundled_baseline()
    assert len(baseline.points) == len(published)
    assert 0.5 < baseline.points["imagenet"].min() and baseline.points["imagenet"].max() > 0.84
    assert 0.8 < baseline.slope < 1.3  # Taori et al.: slopes near 1 in logit space
    assert baseline.predict(0.5) < 0.5  # ImageNet-trained models lose accuracy under the shifts
    assert "imagenet-testbed" in baseline.source


def test_a_point_missing_a_shift_set_is_reported_not_averaged_over_four():
    records = [r for r in clip_records() if not (r.model == "RN50" and r.dataset == "imagenet-a")]
    table = robustness.effective_robustness(records, robustness.fit_baseline(BASELINE, "hand-made"))
    rn50 = table.set_index("model").loc["RN50"]
    assert rn50["missing"] == "imagenet-a"
    assert math.isnan(rn50["shift"]) and math.isnan(rn50["effective_robustness"])
    assert rn50["objectnet"] == pytest.approx(0.40)
    assert table["model"].iloc[-1] == "RN50"
    assert table.set_index("model").loc["ViT-B-32", "missing"] == ""


def test_only_zero_shot_results_count_and_datacomps_copy_wins():
    records = clip_records() + [result("ViT-B-32", "openai", "imagenet1k", 0.99, source="clip_benchmark"),
                                result("ViT-B-32", "openai", "imagenet1k", 0.70, head="linear_probe")]
    table = robustness.points(records)
    assert len(table) == 2
    assert table.set_index("model").loc["ViT-B-32", "imagenet"] == pytest.approx(0.63)
    clash = clip_records(source="local") + [result("RN50", "openai", "objectnet", 0.5, source="clip_benchmark")]
    with pytest.raises(PipelineError, match="keep one per dataset"):
        robustness.points(clash)


def test_a_baseline_from_records_fits_the_same_line_as_from_its_points():
    records = [r for name, imagenet, shift in BASELINE.itertuples(index=False)
               for r in model_records(name, "", imagenet, [shift] * 5, prompts="external", source="external")]
    from_records = robustness.baseline_from_records(records, "imported")
    from_points = robustness.fit_baseline(BASELINE, "points")
    assert from_records.slope == pytest.approx(from_points.slope, abs=1e-12)
    assert from_records.intercept == pytest.approx(from_points.intercept, abs=1e-12)
    assert sorted(from_records.points["name"]) == ["m1", "m2", "m3"]
    with pytest.raises(PipelineError, match="at least 2"):
        robustness.baseline_from_records(records[:6] + records[6:11], "imported")  # m2 lacks objectnet


def test_the_plot_is_a_png(tmp_path):
    records = clip_records() + clip_records(prompts="classname")
    table = robustness.effective_robustness(records, robustness.bundled_baseline())
    path = robustness.plot(table, robustness.bundled_baseline(), tmp_path / "figure13.png")
    assert path.stat().st_size > 10_000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_errors_say_what_is_wrong():
    baseline = robustness.fit_baseline(BASELINE, "hand-made")
    without_imagenet = [r for r in clip_records() if r.dataset != "imagenet1k"]
    with pytest.raises(PipelineError, match="no zero-shot imagenet1k"):
        robustness.effective_robustness(without_imagenet, baseline)
    perfect = model_records("ViT-B-32", "openai", 1.0, CLIP[("ViT-B-32", "openai")][1])
    with pytest.raises(PipelineError, match="logit"):
        robustness.effective_robustness(perfect, baseline)
    with pytest.raises(PipelineError, match="fractions"):
        robustness.points(model_records("ViT-B-32", "openai", 63.0, (56, 42, 69, 31, 44)))
    with pytest.raises(PipelineError, match="at least 2"):
        robustness.fit_baseline(BASELINE.iloc[:1], "one model")
