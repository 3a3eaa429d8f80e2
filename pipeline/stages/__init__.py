"""The stages, one module or package each: embed/ -> classify (or heads/, the linear probe) -> score/, generate
(captions) and explain/. They share one contract: each takes a `StageContext` and hands the next stage a
`StageResult` (its arrays, the key it was computed or served under, its run), looked up by key first and computed
in a run of its own on a miss. What differs between task types (how images are encoded, what is computed from the
features, how it is scored) comes from the task (`pipeline.tasks`), so the stages themselves are task-agnostic."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from pipeline.store.artifacts import StageOutput
from pipeline.store.cache import StageCache, StageRequest, StageResult

__all__ = ["StageContext", "StageResult"]


@dataclass(frozen=True)
class StageContext:
    """What every stage of one job shares: the cache, the labels every stage run carries (`tags`) and the job's
    resolved config (`params`, each run's MLflow params)."""

    cache: StageCache
    tags: Mapping[str, str]
    params: Mapping[str, Any]

    def run(self, stage: str, key: str, name: str, compute: Callable[[], StageOutput], *,
            tags: Mapping[str, str] | None = None, before: Callable[[], None] | None = None,
            serve_only: tuple[str, ...] | None = None) -> StageResult:
        """The stage's output for `key`: served, or `compute()`'s in a new run tagged with the job's labels and
        `tags`. `before` runs on a miss before that run exists (to gather upstream stages)."""
        request = StageRequest(stage, key, {**self.tags, **(tags or {})}, self.params, name, serve_only)
        return self.cache.get_or_compute(request, compute, before)
