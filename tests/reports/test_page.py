"""The analyses the aggregate step draws from records: prompt-engineering gains, ensembling curves, the heatmap
matrix, metrics over training, and the HTML report."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.reports import heatmap, page
from tests.records import prompt_record


def test_report_embeds_tables_and_plots_and_links_runs(tmp_path: Path):
    pd.DataFrame({"model": ["ViT-B-32"], "cars": [0.51234]}).to_csv(tmp_path / "table.csv", index=False)
    heatmap.plot(pd.DataFrame({"cars": [0.5], "mean": [0.5]}, index=["m"]), "acc1", tmp_path / "heatmap.png")
    records = [prompt_record("cars", "dataset", 0.51234)]
    links = page.Links("http://127.0.0.1:5000", "7", sweep_run="sweep1", aggregate_run="agg1")
    written = page.write(tmp_path / "report.html", "Sweep", [page.Section("Results", [tmp_path / "table.csv",
                                                                           tmp_path / "heatmap.png"])], records, links)
    text = written.read_text()
    assert "<h2>Results</h2>" in text and "0.5123" in text
    assert "data:image/png;base64," in text
    assert "#/experiments/7/runs/agg1" in text and "#/experiments/7/runs/sweep1" in text
    assert "#/experiments/7/runs/cars-dataset" in text  # the job run's own link
