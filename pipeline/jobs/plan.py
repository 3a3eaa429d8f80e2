"""A sweep's plan, made before anything is launched: every job keyed from its config alone (the keys are content
fingerprints of configs, checkpoints and dataset descriptions: no model is loaded, no image read), every key
looked up at once in the store's index, and what that means: which jobs are served as they are, which stages are
cached, to compute, or held by another worker, and about how long the computing took the last times.

The stages a job asks for are the ones its score asks for on a miss (`scoring.Upstream.inputs`): the image
features, the text side and the classify output (the template embeddings where the classifier itself is missing),
the probe's splits, or the captions; a key another job of the sweep computes first is counted once.
"""
from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from pipeline.jobs.scoring import Job, Upstream
from pipeline.store.index import IndexedRun, StoreIndex

PLAN_FILE = "plan.json"
ORDER = ("image", "text", "template", "classify", "generate", "score")  # stage kinds, as a job asks for them
CACHED, COMPUTE, HELD = "cached", "to compute", "held by another worker"


@dataclass
class PlannedJob:
    number: int
    overrides: list[str]
    job: Job | None = None                  # None: a job the plan does not key (an explain job): launched
    keys: dict[str, str] = field(default_factory=dict)
    served_by: IndexedRun | None = None     # the cached score this job is served from

    @property
    def served(self) -> bool:
        return self.served_by is not None


@dataclass
class Plan:
    jobs: list[PlannedJob]
    stages: dict[str, Counter]     # stage kind -> {cached, to compute, held} over distinct keys
    estimate_s: float              # compute time of the stages to compute, from comparable runs
    estimated: int                 # stages to compute with a comparable run
    unestimated: int               # ... and without one

    @property
    def served(self) -> list[PlannedJob]:
        return [job for job in self.jobs if job.served]

    @property
    def launched(self) -> list[PlannedJob]:
        return [job for job in self.jobs if not job.served]

    def as_dict(self) -> dict:
        return {"jobs": len(self.jobs), "served": len(self.served), "launched": len(self.launched),
                "stages": {kind: dict(counts) for kind, counts in self.stages.items()},
                "estimate_s": self.estimate_s, "estimated_stages": self.estimated,
                "stages_without_a_comparable_run": self.unestimated,
                "launched_jobs": [{"number": job.number, "overrides": job.overrides} for job in self.launched]}

    def render(self) -> str:
        lines = [f"Plan: {len(self.jobs)} job(s); {len(self.served)} served from the store as they are, "
                 f"{len(self.launched)} to launch", "",
                 f"| stage | {CACHED} | {COMPUTE} | {HELD} |", "|---|---:|---:|---:|"]
        lines += [f"| {kind} | {counts[CACHED]} | {counts[COMPUTE]} | {counts[HELD]} |"
                  for kind, counts in self.stages.items()]
        if self.estimated:
            lines += ["", f"Estimated compute: about {duration(self.estimate_s)} for the {self.estimated} stage(s) "
                          f"with a comparable run in the store (the same stage, model and dataset: the median of "
                          f"their durations)" + (f"; {self.unestimated} other(s) have none" if self.unestimated else "")]
        elif self.unestimated:
            lines += ["", f"No estimate: none of the {self.unestimated} stage(s) to compute has a comparable run in "
                          f"the store (the same stage, model and dataset)"]
        return "\n".join(lines)

    def write(self, folder: Path) -> Path:
        path = Path(folder) / PLAN_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=2))
        return path


def kind_of(stage: str) -> str:
    """The kind of a stage `Upstream.stage_keys` names (`embed_train`, `template:a photo of a {c}.`, ...)."""
    if stage.startswith("embed_"):
        return "image"
    if stage.startswith("template:"):
        return "template"
    return stage


def make(jobs: Sequence[PlannedJob], index: StoreIndex | None, held: Iterable[str] = ()) -> Plan:
    """Look every job's keys up at once and count what the sweep will do (no index: nothing is cached yet)."""
    held = set(held)
    wanted = {key for job in jobs for key in job.keys.values()}
    cached = index.servable(wanted) if index is not None else {}
    counted: dict[str, str] = {}  # key -> its state, once per key
    per_kind: dict[str, Counter] = {}
    to_compute: list[tuple[PlannedJob, str]] = []
    for job in jobs:
        if not job.keys:
            continue
        job.served_by = cached.get(job.keys["score"])
        if job.served:
            _count(per_kind, counted, "score", job.keys["score"], CACHED)
            continue
        for stage in asked(job.keys, cached, held):
            key = job.keys[stage]
            state = CACHED if key in cached else HELD if key in held else COMPUTE
            if _count(per_kind, counted, kind_of(stage), key, state) and state == COMPUTE:
                to_compute.append((job, stage))
    seconds, estimated = _estimate(to_compute, index) if index is not None else (0.0, 0)
    ordered = {kind: per_kind[kind] for kind in ORDER if kind in per_kind}
    return Plan(list(jobs), ordered, seconds, estimated, len(to_compute) - estimated)


def asked(keys: Mapping[str, str], cached: Mapping[str, object], held: set[str]) -> list[str]:
    """The stages a score miss asks for, in the order it asks (templates only where the classifier is missing)."""
    stages = [stage for stage in keys if not stage.startswith("template:")]
    text = keys.get("text")
    if text is not None and text not in cached and text not in held:
        stages[stages.index("text") + 1:stages.index("text") + 1] = [s for s in keys if s.startswith("template:")]
    return stages


def _count(per_kind: dict[str, Counter], counted: dict[str, str], kind: str, key: str, state: str) -> bool:
    """Count a key's state once; False when the key was counted already (another job asks for it too)."""
    if key in counted:
        return False
    counted[key] = state
    per_kind.setdefault(kind, Counter({CACHED: 0, COMPUTE: 0, HELD: 0}))[state] += 1
    return True


_STAGE_OF = {"image": ("embed", "image"), "text": ("embed", "text"), "template": ("embed", "template"),
             "classify": ("classify", None), "generate": ("generate", None), "score": ("score", None)}


def _estimate(to_compute: Sequence[tuple[PlannedJob, str]], index: StoreIndex) -> tuple[float, int]:
    """The median duration of the store's comparable runs (the same stage on the same model and dataset), summed
    over the stages to compute; and how many had one."""
    durations: dict[tuple[str, str | None, str, str], list[float]] = {}
    for stage in ("embed", "classify", "generate", "score"):
        for run in index.select(stage):
            if run.duration_s is not None:
                modality = run.tags.get("modality") if stage == "embed" else None
                key = (stage, modality, run.tags.get("model", ""), run.tags.get("dataset", ""))
                durations.setdefault(key, []).append(run.duration_s)
    total, found = 0.0, 0
    for job, stage in to_compute:
        kind, modality = _STAGE_OF[kind_of(stage)]
        tags = job.job.tags
        times = durations.get((kind, modality, tags["model"], tags["dataset"]))
        if times:
            total += statistics.median(times)
            found += 1
    return total, found


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def keyed(number: int, overrides: list[str], job: Job | None) -> PlannedJob:
    """A job with the keys of every stage it may ask for (none for a job the plan does not key)."""
    return PlannedJob(number, overrides, job, Upstream(job, None).stage_keys() if job is not None else {})
