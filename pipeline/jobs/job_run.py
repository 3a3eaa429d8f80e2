"""The job's own MLflow run (tag `stage=job`): what the job asked for, the datasets it read, the score, and the
stage runs it used. Tables are built from job runs, which always name what was asked; stage runs are shared by
every job whose keys match, so their tags name whoever computed them first.

The run opens before the stages so the stage runs this job computes become its children; the stage runs it is
served keep the job that computed them as their parent (a run has one) and are linked by `run.<stage>` tags.
"""
from __future__ import annotations

import hashlib
import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, RunTag

from pipeline.data import datasets
from pipeline.models.loading import ModelSpec, saved_position
from pipeline.store import tracking
from pipeline.store.cache import log_params, mlflow_metric_name
from pipeline.store.tracking import JOB_STAGE, PARENT_TAG, TrackingStore

# MLflow's dataset context tag: which part of the job a dataset input fed.
CONTEXT_TAG = "mlflow.data.context"
_SOURCE_TYPES = {"local": "local", "http": "http", "hub_id": "hugging_face"}
# Where a checkpoint's position in its training run can be read from its file name (open_clip writes
# `epoch_<n>.pt`; other trainers `step_<n>`, `checkpoint-<n>` or `iter_<n>`).
_POSITION = {"epoch": re.compile(r"(?:^|[_.-])epoch[_-]?(\d+)(?=$|[_.-])", re.IGNORECASE),
             "step": re.compile(r"(?:^|[_.-])(?:step|checkpoint|iter|iteration)[_-]?(\d+)(?=$|[_.-])", re.IGNORECASE)}


def run_name(labels: Mapping[str, str]) -> str:
    name = f"job:{labels['model_name']}:{labels['dataset']}:{labels['prompts']}"
    if "checkpoint_run" in labels:  # the checkpoints of one training run share a model name
        name += f":{labels['pretrained']}"
    if labels.get("head", "zeroshot") != "zeroshot":
        name += f":{labels['head']}:k={labels['k_shot']}:seed={labels['seed']}"
    return name


@contextmanager
def job_run(store: TrackingStore, labels: Mapping[str, str], params: Mapping[str, Any],
            parent_run_id: str | None = None, stage: str = JOB_STAGE, name: str | None = None) -> Iterator[str]:
    """The job run, FINISHED only once `record` has logged its score (see `tracking.finished_run`). Tables read
    the runs tagged `stage=job`; a job that scores nothing (an explain job) names another stage."""
    tags = {**labels, "stage": stage, **({PARENT_TAG: parent_run_id} if parent_run_id else {})}
    with tracking.finished_run(store, tags, name or run_name(labels)) as run_id:
        log_params(store.client, run_id, params)
        yield run_id


def record(store: TrackingStore, run_id: str, stage_runs: Mapping[str, str], metrics: Mapping[str, float],
           inputs: Sequence[DatasetInput]) -> None:
    """The score and the stage runs used, in one call; the datasets read, as MLflow dataset inputs (the UI's
    Datasets column)."""
    store.client.log_batch(run_id, metrics=[Metric(mlflow_metric_name(k), float(v), 0, 0) for k, v in metrics.items()],
                           tags=[RunTag(f"run.{stage}", stage_run) for stage, stage_run in stage_runs.items()])
    if inputs:
        tracking.log_inputs(store, run_id, list(inputs))


def model_labels(spec: ModelSpec) -> tuple[dict[str, str], dict[str, str]]:
    """The tags every stage run of a job on this model carries (a transformers model's also name its library and
    builds), and the checkpoint labels its job run adds (a training run's checkpoint is named by its run, since
    every training run writes `epoch_1.pt`)."""
    tags = {"model": spec.arch, "pretrained": spec.pretrained_label, "model_name": spec.name, **spec.library_labels}
    checkpoint = checkpoint_position(spec.pretrained) if spec.is_local_checkpoint else {}
    if checkpoint:
        checkpoint["pretrained"] = f"{checkpoint['checkpoint_run']}/{tags['pretrained']}"
    return tags, checkpoint


def dataset_input(info: datasets.DatasetInfo, context: str) -> DatasetInput:
    """A dataset as MLflow records it: name, where it was read from, and a digest of the content fingerprint the
    cache keys use (so two copies of one dataset, or two revisions, are two entries)."""
    spec = info.spec
    kind = spec.root_kind if spec.format != "tfds" else "local"
    # MLflow's own sources name the location `url` (http), `path` (Hugging Face) and `uri` (local files).
    where = {"http": "url", "hub_id": "path"}.get(kind, "uri")
    source = {where: spec.root, "split": spec.split, "format": spec.format, "copy": spec.source}
    digest = hashlib.sha256(json.dumps(info.fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:16]
    dataset = Dataset(name=spec.name, digest=digest, source_type=_SOURCE_TYPES.get(kind, kind),
                      source=json.dumps(source))
    return DatasetInput(dataset, tags=[InputTag(CONTEXT_TAG, context)])


def checkpoint_position(path: str | Path) -> dict[str, str]:
    """`checkpoint_epoch` / `checkpoint_step` labels of a checkpoint file: from its file name, else from the
    `epoch`/`step` entries open_clip's trainer saves beside the weights (read memory-mapped, weights untouched)."""
    path = Path(path)
    found = {name: int(match.group(1)) for name, pattern in _POSITION.items() if (match := pattern.search(path.stem))}
    if not found and path.suffix in (".pt", ".pth") and path.is_file():
        found = saved_position(path)
    if not found:
        return {}
    labels = {f"checkpoint_{name}": str(value) for name, value in found.items()}
    # The training run it belongs to: open_clip keeps checkpoints in `logs/<run name>/checkpoints/`.
    folder = path.resolve().parent
    labels["checkpoint_run"] = folder.parent.name if folder.name == "checkpoints" else folder.name
    return labels
