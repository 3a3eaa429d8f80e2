"""Score records and reference computations shared by the report and aggregate tests."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from pipeline.data import catalog
from pipeline.reports.results import Bootstrap, ScoreRecord
from tests.conftest import FIXTURES

# Rows of open_clip's docs/openclip_results.csv (a sample, verbatim).
PUBLISHED = pd.read_csv(FIXTURES / "openclip_results_sample.csv", dtype=str)


def table_record(model, dataset, prompts="p", acc1=0.5, main="acc1", pretrained="tag", source="local",
                 protocol="datacomp", task="zeroshot_classification", **extra) -> ScoreRecord:
    """A result of one model on one dataset, with mean per class recall at half its accuracy."""
    return ScoreRecord(model, pretrained, dataset, prompts, main, {"acc1": acc1, "mean_per_class_recall": acc1 / 2, **extra},
                       source=source, protocol=protocol, task=task)


def published_records(row: pd.Series) -> list[ScoreRecord]:
    """One published row of open_clip's table as the 38 result records it was made from."""
    keys = catalog.suite("datacomp38")
    return [ScoreRecord(row["name"], row["pretrained"], key, "external", catalog.lookup(key).main_metric,
                        {catalog.lookup(key).main_metric: float(row[catalog.lookup(key).column])}) for key in keys]


def prompt_record(dataset: str, prompts: str, acc1: float, n: int = 100, model: str = "ViT-B-32", **extra) -> ScoreRecord:
    """A zero-shot result of one prompt set on DataComp's copy of a dataset, with its own score run."""
    return ScoreRecord(model, "openai", dataset, prompts, "acc1", {"acc1": acc1, "n": n}, run_id=f"{dataset}-{prompts}",
                       source="datacomp", protocol="datacomp", task="zeroshot_classification",
                       score_run=f"score-{dataset}-{prompts}-{model}", **extra)


def replicates_from(table: dict[str, np.ndarray]):
    """A replicate loader serving acc1 replicates by score run, every result in the same sample order."""
    return lambda r: Bootstrap({"acc1": table[r.score_run]}, order="same")


def direct_interval(values: list[float]) -> tuple[float, float]:
    """The 95 % percentile interval, written out independently of `pipeline.stages.score.uncertainty`."""
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


# -- results produced elsewhere ------------------------------------------------------------------------
def write_clip_benchmark_jsons(directory, row):
    """One `clip_benchmark eval` JSON per dataset, half of them with the `wds/` prefix."""
    for number, key in enumerate(catalog.suite("datacomp38")):
        entry = catalog.lookup(key)
        value = float(row[entry.column])
        metrics = ({"image_retrieval_recall@1": value, "text_retrieval_recall@1": value}
                   if entry.task == "zeroshot_retrieval" else {entry.main_metric: value, "acc5": 1.0})
        name = f"wds/{key}" if number % 2 else key
        payload = {"dataset": name, "model": row["name"], "pretrained": row["pretrained"],
                   "task": entry.task, "metrics": metrics, "language": "en"}
        (directory / f"{row['name']}_{row['pretrained']}_{key.replace('/', '_')}.json").write_text(json.dumps(payload))
