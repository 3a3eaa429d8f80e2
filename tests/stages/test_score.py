"""The stages' one contract, seen through the score stage: a `StageContext` in, a `StageResult` out; the score is
looked up by key before anything upstream is read, computed in a run of its own on a miss (with the runs it was
computed from), and served the same the second time."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.datasets import DatasetSpec
from pipeline.errors import PipelineError
from pipeline.stages import StageContext, StageResult
from pipeline.stages import score
from pipeline.stages.score import TaskScores, uncertainty
from pipeline.store.cache import StageCache

SPEC = DatasetSpec("toy", "zeroshot_classification", "/toy", "test", "acc1")


def scorer(upstream) -> TaskScores:
    correct = upstream["classify"]["correct"]
    replicates = {"acc1": np.concatenate(list(correct[b].mean(axis=1) for b in uncertainty.draw_blocks(len(correct))))}
    return TaskScores({"acc1": float(correct.mean())}, {"correct1": correct}, replicates, len(correct),
                      uncertainty.structure_digest([correct]))


def test_a_score_is_served_by_key_and_names_the_runs_it_was_computed_from(store):
    stages = StageContext(StageCache(store), {"model": "m", "dataset": "toy", "prompts": "p"}, {"batch_size": 8})
    asked = []

    def inputs():
        asked.append(1)
        return {"classify": StageResult({"correct": np.array([True, False, True, True])}, "c-key", "c-run")}

    first = score.score(stages, SPEC, "score-key", inputs, scorer)
    again = score.score(stages, SPEC, "score-key", inputs, scorer)
    assert not first.hit and again.hit and first.run_id == again.run_id and first.key == again.key == "score-key"
    assert asked == [1]  # the second score read nothing upstream
    assert first.metrics["acc1"] == again.metrics["acc1"] == 0.75
    assert first.metrics["ci_low/acc1"] <= 0.75 <= first.metrics["ci_high/acc1"] and first.metrics["n"] == 4
    assert score.inputs_of(again) == {"classify": "c-run"}
    run = store.client.get_run(first.run_id)
    assert run.data.tags["stage"] == "score" and run.data.tags["model"] == "m" and run.data.params["batch_size"] == "8"


def test_a_score_without_its_datasets_main_metric_is_refused(store):
    stages = StageContext(StageCache(store), {}, {})
    inputs = lambda: {"classify": StageResult({"correct": np.array([True])}, "c", "r")}
    with pytest.raises(PipelineError, match="main metric 'acc5' of toy is not among"):
        score.score(stages, DatasetSpec("toy", "zeroshot_classification", "/toy", "test", "acc5"), "k", inputs, scorer)
