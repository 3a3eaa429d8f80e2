"""A page is titled by what its results are, and its results table, job-run list and MLflow view list them in one
order: prompt sets as swept, checkpoints by step, probes by shots."""
from __future__ import annotations

from dataclasses import replace

from pipeline.reports import tables, titles
from pipeline.reports.results import ScoreRecord
from tests.records import prompt_record


def checkpoint(step: int, dataset: str = "shapes") -> ScoreRecord:
    return replace(prompt_record(dataset, "dataset", 0.5, model="tiny-clip"), pretrained=f"run/step_{step}.pt",
                   tags={"checkpoint_step": str(step), "checkpoint_run": "run"})


def probe(k: str, seed: str) -> ScoreRecord:
    return replace(prompt_record("cars", "*", 0.5), head="linear_probe", k_shot=k, seed=seed)


def test_titles_say_what_the_results_are():
    assert titles.describe([prompt_record("cars", p, 0.5) for p in ("classname", "dataset")]) == \
        "ViT-B-32 on cars: 2 prompt sets"
    assert titles.describe([checkpoint(s) for s in (300, 1200, 600)]) == "tiny-clip on shapes: 3 checkpoints of run"
    assert titles.describe([probe(k, s) for k in ("1", "16", "all") for s in ("0", "1")]) == \
        "ViT-B-32 on cars: linear probes (1, 16-shot and full; 2 seeds)"
    many = [replace(prompt_record(f"d{i}", "dataset", 0.5), model=f"m{j}") for i in range(5) for j in range(4)]
    assert titles.describe(many) == "4 models on 5 datasets"


def test_the_table_order_puts_checkpoints_by_step_and_probes_by_shots():
    ordered = titles.table_order([checkpoint(s) for s in (1200, 300, 600)])
    assert [r.pretrained for r in ordered] == ["run/step_300.pt", "run/step_600.pt", "run/step_1200.pt"]
    ordered = titles.table_order([probe(k, s) for k in ("all", "16", "2") for s in ("1", "0")])
    assert [(r.k_shot, r.seed) for r in ordered] == [("2", "0"), ("2", "1"), ("16", "0"), ("16", "1"), ("all", "0"),
                                                     ("all", "1")]
    table = tables.build_table([checkpoint(s) for s in (1200, 300, 600)], "acc1")
    assert list(table["pretrained"]) == ["run/step_300.pt", "run/step_600.pt", "run/step_1200.pt"]
