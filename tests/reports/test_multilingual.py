"""Multilingual retrieval with the languages in columns: open_clip's layout and its averages, recomputed from the
per-language cells of its own table, and those cells as a reference the reproduction report matches by language."""
from __future__ import annotations

import pandas as pd
import pytest

from pipeline.reports import layouts, multilingual, references, reproduction
from pipeline.reports.results import ScoreRecord

PUBLISHED = references.PUBLISHED / "openclip_multilingual_retrieval_results.csv"


def xtd10_records(model: str, version: str, dataset: str = "multilingual/xtd10") -> list[ScoreRecord]:
    """open_clip's cells of one row and dataset (`multilingual_mscoco_captions` is XTD-10), as results."""
    cells = references.published_cells("openclip_multilingual")
    cells = cells[(cells["name"] == model) & (cells["pretrained"] == version) & (cells["dataset"] == dataset)]
    return [ScoreRecord(model, version, dataset, "*", "mean_recall@1", dict(zip(g["metric"], g["published"])),
                        run_id=f"{model}:{language}", task="zeroshot_retrieval", language=language)
            for language, g in cells.groupby("language")]


def test_the_table_recomputes_open_clips_averages_over_languages():
    published = pd.read_csv(PUBLISHED).set_index(["model", "version"])
    records = xtd10_records("nllb-clip-base", "v1")
    assert len(records) == 11
    ours = multilingual.table(records).set_index(["model", "version"]).loc[("nllb-clip-base", "v1")]
    for metric in multilingual.METRICS:
        theirs = published.loc[("nllb-clip-base", "v1"), f"multilingual_mscoco_captions {metric} avg"]
        assert ours[f"multilingual/xtd10 {metric} avg"] == pytest.approx(theirs, abs=5e-5 + 1e-9)
        assert ours[f"multilingual/xtd10 {metric} it"] == published.loc[("nllb-clip-base", "v1"),
                                                                         f"multilingual_mscoco_captions {metric} it"]


def test_the_layout_writes_every_language_and_prints_the_means(tmp_path):
    written = layouts.write_layout("multilingual", layouts.Request(xtd10_records("nllb-clip-base", "v1"), "main", tmp_path))
    wide = pd.read_csv(tmp_path / "multilingual.csv")
    assert list(wide.columns[:4]) == ["model", "version", "avg", "multilingual/xtd10 image_retrieval_recall@1 avg"]
    assert len(wide.columns) == 3 + 6 * 12 and "image_retrieval_recall@1 de" not in written.markdown.split("\n")[2]
    assert layouts.LAYOUTS["multilingual"].applies(xtd10_records("nllb-clip-base", "v1"))


def test_open_clips_multilingual_cells_reproduce_by_language():
    records = xtd10_records("nllb-clip-large-siglip", "v1")
    report = reproduction.reproduce(records, references.chosen("openclip_multilingual"))
    compared = report.rows[report.rows["verdict"] != reproduction.NOT_COMPARABLE]
    assert len(compared) == 11 * 6 and (compared["verdict"] == reproduction.REPRODUCED).all()
    assert set(compared["dataset"]) == {"multilingual/xtd10"} | {f"multilingual/xtd10/{lang}" for lang in  # en: plain
                                                                 ["de", "es", "fr", "it", "jp", "ko", "pl", "ru", "tr", "zh"]}
    crossmodal = xtd10_records("nllb-clip-large-siglip", "v1", "multilingual/crossmodal3600")
    report = reproduction.reproduce(crossmodal, references.chosen("openclip_multilingual"))
    assert len(crossmodal) == 36 and (report.rows["verdict"] == reproduction.REPRODUCED).sum() == 36 * 6
