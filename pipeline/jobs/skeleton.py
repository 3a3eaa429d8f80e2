"""What every kind of job shares: the model it runs (device, precision recipe, loader, library builds, the labels
naming it) resolved once from its typed spec, and the open job itself (the store, its job run, the stage context
its stages share), which a scoring job and an explain job each open around their stages."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from pipeline.jobs import job_run, sweep
from pipeline.jobs.spec import JobSpec
from pipeline.models import precision
from pipeline.models.loading import ModelLoader, device_type, library_versions, resolve_device, tokenizer_language
from pipeline.stages import StageContext
from pipeline.store.cache import StageCache
from pipeline.store.tracking import JOB_STAGE, TrackingStore


@dataclass(frozen=True)
class ResolvedModel:
    """The job's model as it runs: on which device, in which precision per tower, with which library builds, and
    the labels (stage-run tags and checkpoint labels) that name it."""

    loader: ModelLoader
    device: str  # cpu, cuda or cuda:N
    recipe: precision.Recipe
    versions: Mapping[str, str]
    tags: Mapping[str, str]        # what every stage run of the job carries about the model
    checkpoint: Mapping[str, str]  # a training run's checkpoint position, for the job run

    @property
    def labels(self) -> dict[str, str]:
        """The precision and library labels a job run carries."""
        return {**{f"precision.{tower}": getattr(self.recipe, tower) for tower in precision.TOWERS},
                **{f"lib.{name}": version for name, version in self.versions.items()}}


def resolve_model(spec: JobSpec, task: str) -> ResolvedModel:
    """The model of `spec` for `task`'s precision, its checkpoint fingerprinted now (a missing file fails here, not
    mid-run); the weights are loaded only when a stage computes."""
    device = resolve_device(spec.run.device)
    recipe = precision.recipe(spec.protocol.as_config(), task, device_type(device), spec.model.precision)
    loader = ModelLoader(spec.model, device, tokenizer_language=tokenizer_language(spec.model.arch, spec.language))
    loader.spec.fingerprint  # noqa: B018  (reads or hashes the checkpoint once)
    tags, checkpoint = job_run.model_labels(loader.spec)
    return ResolvedModel(loader, device, recipe, library_versions(), tags, checkpoint)


@dataclass(frozen=True)
class OpenJob:
    store: TrackingStore
    run_id: str
    stages: StageContext


@contextmanager
def open_job(spec: JobSpec, labels: Mapping[str, str], tags: Mapping[str, str], sweep_dir: Path | None,
             stage: str = JOB_STAGE, name: str | None = None) -> Iterator[OpenJob]:
    """The job's run (a child of its sweep's run), FINISHED once the block completes, and the stage context whose
    computed runs become its children."""
    store = spec.tracking.connect()
    with job_run.job_run(store, labels, spec.params, sweep.parent_of(sweep_dir, store), stage, name) as run_id:
        cache = StageCache(store, enabled=spec.cache.enabled, force=spec.cache.force,
                           claim_timeout_s=spec.cache.claim_timeout_s, parent_run_id=run_id)
        yield OpenJob(store, run_id, StageContext(cache, tags, spec.params))
