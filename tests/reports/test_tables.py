"""Tables from score records: layouts, means, missing cells, external result files, and the MLflow aggregate run."""
import math

import pandas as pd
import pytest

from pipeline.aggregate import select
from pipeline.data import catalog
from pipeline.errors import PipelineError
from pipeline.reports import results, tables
from pipeline.reports.layouts import Request, write_layout
from pipeline.reports.results import ScoreRecord
from tests.records import PUBLISHED, published_records, table_record


def test_rows_are_models_columns_datasets_plus_mean():
    table = tables.build_table([table_record("A", "d1", acc1=0.2), table_record("A", "d2", acc1=0.6), table_record("B", "d1", acc1=0.4),
                                table_record("B", "d2", acc1=0.8)], "acc1")
    assert list(table.columns) == ["model", "pretrained", "protocol", "head", "d1", "d2", "mean", "size-weighted mean"]
    assert table.set_index("model")["mean"].to_dict() == pytest.approx({"A": 0.4, "B": 0.6})


def test_main_metric_is_taken_per_dataset():
    table = tables.build_table([table_record("A", "d1", acc1=0.2), table_record("A", "d2", acc1=0.6, main="mean_per_class_recall")],
                               "main")
    assert table.loc[0, "d1"] == pytest.approx(0.2) and table.loc[0, "d2"] == pytest.approx(0.3)


def test_missing_dataset_leaves_cell_and_mean_empty():
    table = tables.build_table([table_record("A", "d1"), table_record("A", "d2"), table_record("B", "d1")], "acc1").set_index("model")
    assert math.isnan(table.loc["B", "d2"]) and math.isnan(table.loc["B", "mean"])
    assert table.loc["A", "mean"] == pytest.approx(0.5)


def test_one_table_per_prompt_set():
    per_prompts = tables.build_tables([table_record("A", "d1", "x", 0.1), table_record("A", "d1", "y", 0.9)], "acc1")
    assert set(per_prompts) == {"x", "y"} and per_prompts["y"].loc[0, "d1"] == pytest.approx(0.9)


def test_per_prompts_files(tmp_path):
    records = [table_record("A", "d1", "x", 0.1), table_record("B", "d1", "y", 0.9)]
    written = write_layout("per_prompts", Request(records, "acc1", tmp_path))
    paths, markdown = written.files, written.markdown
    assert [p.name for p in paths] == ["table.csv", "table.md", "intervals.csv", "table.png", "heatmap.png",
                                       "results.csv"]
    assert [p.name for p in written.on_page] == ["table.png", "intervals.csv", "heatmap.png", "results.csv"]
    csv = pd.read_csv(tmp_path / "table.csv")
    assert list(csv.columns) == ["prompts", "model", "pretrained", "protocol", "head", "d1", "mean", "size-weighted mean"] and len(csv) == 2
    assert "### acc1 — prompts: x" in markdown and (tmp_path / "table.png").read_bytes()[:4] == b"\x89PNG"


def test_blog_layout_as_the_blog_prints_it():
    """Rows: classification datasets sorted by key; columns: "arch pretrained" with published names, sorted; no mean."""
    records = [table_record("ViT-L-14", "vtab/pets", acc1=0.2, pretrained="openai"),
               table_record("ViT-B-32-quickgelu", "cars", acc1=0.4, pretrained="openai"),
               table_record("ViT-B-32-quickgelu", "vtab/pets", acc1=0.3, pretrained="laion400m_e32"),
               table_record("ViT-B-16", "cars", acc1=0.6, pretrained="openai"),
               table_record("ViT-B-16", "retrieval/flickr_1k_test_image_text_retrieval", task="zeroshot_retrieval")]
    table = tables.blog(records, "acc1").set_index("dataset")
    assert list(table.columns) == ["ViT-B-16 openai", "ViT-B-32 openai", "ViT-B-32-quickgelu laion400m_e32",
                                   "ViT-L-14 openai"]
    assert list(table.index) == ["cars", "vtab/pets"]
    assert table.loc["cars", "ViT-B-32 openai"] == pytest.approx(0.4) and math.isnan(table.loc["cars", "ViT-L-14 openai"])
    assert "mean" not in table.index
    with_mean = tables.blog(records, "acc1", mean_row=True).set_index("dataset")
    assert list(with_mean.index) == ["cars", "vtab/pets", "mean"]
    assert math.isnan(with_mean.loc["mean", "ViT-B-16 openai"])  # it lacks vtab/pets
    full = tables.blog(records + [table_record("ViT-L-14", "cars", acc1=0.4, pretrained="openai")], "acc1", mean_row=True)
    assert full.set_index("dataset").loc["mean", "ViT-L-14 openai"] == pytest.approx(0.3)




def test_openclip38_header_is_open_clips():
    columns = list(tables.openclip38(published_records(PUBLISHED.iloc[0])).columns)
    assert columns[:5] == ["name", "pretrained", "params (M)", "FLOPs (B)", "Average perf. on 38 datasets"]
    assert columns[5:] == list(PUBLISHED.columns[3:])


def test_openclip38_reproduces_published_rows():
    table = tables.openclip38([r for _, row in PUBLISHED.iterrows() for r in published_records(row)])
    for _, published in PUBLISHED.iterrows():
        ours = table[(table["name"] == published["name"]) & (table["pretrained"] == published["pretrained"])].iloc[0]
        assert float(ours["Average perf. on 38 datasets"]) == pytest.approx(float(published.iloc[2]), abs=6e-5)
        assert ours[PUBLISHED.columns[3:]].tolist() == published[PUBLISHED.columns[3:]].tolist()
    assert table.set_index("name").loc["ViT-B-32", "params (M)"] == "151.28"


def test_openclip38_marks_incomplete_rows():
    partial = published_records(PUBLISHED.iloc[0])[:-2]
    row = tables.openclip38(partial).iloc[0]
    assert row["Average perf. on 38 datasets"] == "incomplete (36/38)"
    assert row["Dollar Street"] == "" and row["GeoDE"] == ""


def test_openclip38_average_has_four_decimals_like_the_cells():
    average = tables.openclip38(published_records(PUBLISHED.iloc[0])).iloc[0]["Average perf. on 38 datasets"]
    assert average == f"{float(PUBLISHED.iloc[0, 2]):.4f}"


def datacomp38_records(model, value, source_of=lambda entry: entry.source, protocol="datacomp", pretrained="tag"):
    return [ScoreRecord(model, pretrained, key, "p", catalog.lookup(key).main_metric,
                        {catalog.lookup(key).main_metric: value}, source=source_of(catalog.lookup(key)),
                        protocol=protocol, task=catalog.lookup(key).task)
            for key in catalog.suite("datacomp38")]


def test_openclip38_takes_datacomps_copies_under_datacomps_protocol_only():
    ours = datacomp38_records("ViT-B-32", 0.5)
    other_copy = ScoreRecord("ViT-B-32", "tag", "cars", "p", "acc1", {"acc1": 0.9}, source="clip_benchmark",
                             protocol="datacomp", task="zeroshot_classification")
    other_protocol = datacomp38_records("ViT-B-32", 0.7, protocol="clip_benchmark")
    # whatever the order, the row holds DataComp's copy of Stanford Cars, under DataComp's protocol
    for records in (ours + [other_copy] + other_protocol, [other_copy] + other_protocol + ours):
        [row] = tables.openclip38(records).to_dict("records")
        assert row["Stanford Cars"] == "0.5000" and row["Average perf. on 38 datasets"] == "0.5000"
    assert tables.openclip38([other_copy] + other_protocol).empty


def test_per_prompts_table_keeps_two_copies_of_a_dataset_apart():
    table = tables.build_table([table_record("A", "cars", acc1=0.2, source="datacomp"),
                                table_record("A", "cars", acc1=0.8, source="clip_benchmark")], "acc1")
    assert table.loc[0, "cars (datacomp)"] == pytest.approx(0.2) and table.loc[0, "cars (clip_benchmark)"] == pytest.approx(0.8)


def test_external_rows_keep_their_names_and_quickgelu_stays_a_row_of_its_own():
    plain = datacomp38_records("ViT-B-32", 0.5, source_of=lambda entry: results.EXTERNAL_SOURCE, pretrained="openai")
    quick = datacomp38_records("ViT-B-32-quickgelu", 0.6, source_of=lambda entry: results.EXTERNAL_SOURCE,
                               pretrained="openai")
    table = tables.openclip38(plain + quick).set_index("name")
    assert sorted(table.index) == ["ViT-B-32", "ViT-B-32-quickgelu"]
    assert table.loc["ViT-B-32-quickgelu", "ImageNet 1k"] == "0.6000" and table.loc["ViT-B-32", "ImageNet 1k"] == "0.5000"
    ours = tables.openclip38(datacomp38_records("ViT-B-32-quickgelu", 0.6, pretrained="openai"))
    assert ours.iloc[0]["name"] == "ViT-B-32"  # our own runs use open_clip's published name


def test_params_and_flops_are_published_figures_or_counted_once(monkeypatch, tmp_path):
    """A published model takes open_clip's params (M) and FLOPs (B); another is counted (no FLOPs); a model that
    cannot be built here gets empty cells and never aborts the table."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    rows = tables.openclip38(datacomp38_records("xlm-roberta-base-ViT-B-32", 0.5, pretrained="laion5b_s13b_b90k")
                             + datacomp38_records("RN50x4-quickgelu", 0.5)
                             + datacomp38_records("no-such-arch", 0.5)).set_index("name")
    assert tuple(rows.loc["xlm-roberta-base-ViT-B-32", ["params (M)", "FLOPs (B)"]]) == ("366.12", "105.87")
    assert tuple(rows.loc["no-such-arch", ["params (M)", "FLOPs (B)"]]) == ("", "")
    assert rows.loc["RN50x4-quickgelu", "FLOPs (B)"] == "" and float(rows.loc["RN50x4-quickgelu", "params (M)"]) == float(tables.published_figures()["RN50x4"][0])


def test_blog_layout_refuses_to_merge_copies_protocols_or_prompt_sets():
    records = [table_record("ViT-B-32", "cars", acc1=0.9, source="datacomp", protocol="datacomp"),
               table_record("ViT-B-32", "cars", acc1=0.8, source="clip_benchmark", protocol="clip_benchmark")]
    with pytest.raises(PipelineError, match="ViT-B-32 tag on cars has results for several .* protocol=NAME"):
        tables.blog(records, "acc1")
    [kept] = select(records, None, "clip_benchmark")
    assert tables.blog([kept], "acc1").loc[0, "ViT-B-32 tag"] == pytest.approx(0.8)
