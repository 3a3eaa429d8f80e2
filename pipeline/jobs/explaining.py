"""An explain job (`explain=relevance`): relevance maps for one model instead of a score. Its job run (tag
`stage=explain_job`, so tables never read it) labels what was asked and links the explain stage run it used; the
maps and overlays are also written into the job's output folder, and the aggregate step draws the sweep's grid."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from pipeline.data import datasets
from pipeline.errors import PipelineError
from pipeline.jobs import job_run, sweep
from pipeline.jobs.skeleton import open_job, resolve_model
from pipeline.jobs.spec import JobSpec
from pipeline.stages import StageResult
from pipeline.stages.embed import ModelKey
from pipeline.stages.explain import explain, figures, inputs
from pipeline.stages.explain.attention import vit_depth
from pipeline.store import artifacts

log = logging.getLogger(__name__)

EXPLAIN_JOB_STAGE = "explain_job"
FIGURES_DIR = "relevance"


@dataclass(frozen=True)
class ExplainResult:
    job_run_id: str
    explained: StageResult
    label: str


def column_label(labels: dict[str, str], spec: inputs.ExplainSpec) -> str:
    """How the grid names a model: its config name and its weights (a checkpoint with its training run), and the
    first block of the rollout when it is not every block."""
    label = f"{labels['model_name']}\n{labels['pretrained']}"
    return label if spec.start_layer == 0 else f"{label}\nfrom block {spec.start_layer}"


def resolve_source(spec: JobSpec, explain: inputs.ExplainSpec) -> inputs.Source:
    if not explain.from_dataset:
        return inputs.file_source(explain.images)
    return inputs.dataset_source(datasets.describe(spec.dataset), explain.images)


def run_explain_job(spec: JobSpec | DictConfig, output_dir: Path | None = None,
                    sweep_dir: Path | None = None) -> ExplainResult:
    """Everything that can be wrong with the inputs fails before a run exists: the run settings, the method, the
    tower, the images."""
    spec = spec if isinstance(spec, JobSpec) else JobSpec.from_cfg(spec)
    if spec.model.is_transformers:
        raise PipelineError(f"relevance maps follow an open_clip ViT's attention; model {spec.model.name} is a "
                            f"transformers checkpoint (model.library=transformers): use an open_clip model")
    depth = vit_depth(spec.model.arch, spec.model.name)
    explain_spec = spec.explain.for_depth(depth, spec.model.name)
    source = resolve_source(spec, explain_spec)
    # The image tower runs as it does for zero-shot classification under the protocol.
    model = resolve_model(spec, "zeroshot_classification")
    image_model = ModelKey(model.loader.spec.fingerprint, model.recipe.image, model.versions)
    labels = {**model.tags, **model.checkpoint, "explain": explain_spec.method,
              "start_layer": str(explain_spec.start_layer), "images": ", ".join(source.names)[:500],
              "captions": "; ".join(explain_spec.captions)[:500] if explain_spec.captions else inputs.LABEL_PROMPTS,
              "precision.image": model.recipe.image, "precision.text": model.recipe.text,
              **{f"lib.{name}": version for name, version in model.versions.items()}}
    name = f"explain:{labels['model_name']}:{labels['pretrained']}"
    with open_job(spec, labels, model.tags, sweep_dir, EXPLAIN_JOB_STAGE, name) as opened:
        explained = explain(opened.stages, model.loader, explain_spec, source, image_model, model.recipe.text)
        used = [job_run.dataset_input(source.dataset, "explain")] if source.dataset is not None else []
        maps = len(explained.arrays["pair_image"])
        job_run.record(opened.store, opened.run_id, {"explain": explained.run_id}, {"maps": float(maps)}, used)
    result = ExplainResult(opened.run_id, explained, column_label(labels, explain_spec))
    log.info("%s: %d relevance maps (%s), run %s", name, maps,
             "served from the cache" if explained.hit else "computed", explained.run_id)
    if output_dir is not None:
        write_files(Path(output_dir), result, opened.store.uri)
    return result


def write_files(output_dir: Path, result: ExplainResult, tracking_uri: str) -> None:
    """The maps and overlays beside the job's log, and `result.json` for the aggregate step."""
    folder = output_dir / FIGURES_DIR
    artifacts.write_files(folder, figures.pair_files(result.explained.arrays))
    payload = {"kind": sweep.EXPLAIN_KIND, "job_run_id": result.job_run_id, "explain_run_id": result.explained.run_id,
               "label": result.label, "tracking_uri": tracking_uri}
    sweep.write_result(output_dir, payload)
    log.info("relevance maps and overlays written to %s", folder)
