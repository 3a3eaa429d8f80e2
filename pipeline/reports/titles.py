"""What a report page is titled by, what its results are (`tiny-clip on shapes: 5 prompt sets`), and the order its
results table lists them in (checkpoints by step, probes by shots), which the job-runs list and the MLflow view
follow."""
from __future__ import annotations

from typing import Iterable, Sequence

from pipeline.data.prompts import PROMPT_FREE
from pipeline.reports import tables
from pipeline.reports.results import EXTERNAL_PROMPTS, ScoreRecord
from pipeline.stages.heads import LINEAR_PROBE, ZEROSHOT


def table_order(records: Iterable[ScoreRecord]) -> list[ScoreRecord]:
    """The records in the order the results table lists them: by prompt set (as the sweep gave them), model,
    weights (step_300 before step_1200), protocol, head (zero-shot, k-shot by k, full), then dataset and seed."""
    records = list(records)
    prompts = list(dict.fromkeys(r.prompts for r in records))
    datasets = list(dict.fromkeys(r.dataset for r in records))
    natural = tables.natural_key
    return sorted(records, key=lambda r: (prompts.index(r.prompts), natural(r.model), natural(r.pretrained), r.protocol,
                                          tables.head_order(r.head_label), datasets.index(r.dataset), natural(r.seed)))


def _named(items: Sequence[str], many: str, shown: int = 3) -> str:
    return ", ".join(items) if len(items) <= shown else f"{len(items)} {many}"


def _probes(records: Sequence[ScoreRecord]) -> str:
    probes = [r for r in records if r.head == LINEAR_PROBE]
    shots = sorted({int(r.k_shot) for r in probes if r.k_shot.isdigit()})
    full = " and full" if any(not r.k_shot.isdigit() for r in probes) else ""
    seeds = len({r.seed for r in probes})
    named = f"{', '.join(map(str, shots))}-shot{full}" if shots else "full"
    return f"linear probes ({named}{f'; {seeds} seeds' if seeds > 1 else ''})"


def describe(records: Sequence[ScoreRecord]) -> str:
    """What the results are, for a page's title: `tiny-clip on shapes: 5 prompt sets`, `13 models on 41 datasets`."""
    records = list(records)
    if not records:
        return "no results"
    models = list(dict.fromkeys(r.model for r in records))
    weights = list(dict.fromkeys((r.model, r.pretrained) for r in records))
    extras = []
    runs = sorted({r.tags["checkpoint_run"] for r in records if "checkpoint_run" in r.tags})
    checkpoints = {(r.model, r.pretrained) for r in records if "checkpoint_run" in r.tags}
    if len(checkpoints) > 1:
        extras.append(f"{len(checkpoints)} checkpoints of {_named(runs, 'training runs')}")
    elif len(models) == 1 and len(weights) > 1:
        extras.append(f"{len(weights)} weights")
    prompts = list(dict.fromkeys(r.prompts for r in records if r.prompts not in (PROMPT_FREE, EXTERNAL_PROMPTS)))
    if len(prompts) > 1:
        extras.append(f"{len(prompts)} prompt sets")
    if any(r.head == LINEAR_PROBE for r in records):
        extras.append(("zero-shot and " if any(r.head == ZEROSHOT for r in records) else "") + _probes(records))
    datasets = list(dict.fromkeys(r.dataset for r in records))
    named = _named(models, "models") + (f" ({len(weights)} weights)" if len(models) > 3 and len(weights) > len(models) else "")
    what = f"{named} on {_named(datasets, 'datasets')}"
    return f"{what}: {', '.join(extras)}" if extras else what
