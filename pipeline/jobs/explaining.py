"""An explain job (`explain=relevance`): relevance maps for one model instead of a score. Its job run (tag
`stage=explain_job`, so tables never read it) labels what was asked and links the explain stage run it used; the
maps and overlays are also written into the job's output folder, and the aggregate step draws the sweep's grid."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipeline.data import datasets
from pipeline.jobs import job_run, settings, sweep
from pipeline.jobs.scoring import RESULT_FILE, flatten
from pipeline.models import precision
from pipeline.models.loading import ModelLoader, ModelSpec, device_type, library_versions, resolve_device
from pipeline.stages.embed import ModelKey
from pipeline.stages.explain import Explained, explain, figures, inputs
from pipeline.stages.explain.attention import vit_depth
from pipeline.store import artifacts, tracking
from pipeline.store.cache import StageCache

log = logging.getLogger(__name__)

EXPLAIN_JOB_STAGE = "explain_job"
FIGURES_DIR = "relevance"


@dataclass(frozen=True)
class ExplainResult:
    job_run_id: str
    explained: Explained
    label: str


def column_label(labels: dict[str, str], spec: inputs.ExplainSpec) -> str:
    """How the grid names a model: its config name and its weights (a checkpoint with its training run), and the
    first block of the rollout when it is not every block."""
    label = f"{labels['model_name']}\n{labels['pretrained']}"
    return label if spec.start_layer == 0 else f"{label}\nfrom block {spec.start_layer}"


def resolve_source(cfg: DictConfig, spec: inputs.ExplainSpec) -> inputs.Source:
    if not spec.from_dataset:
        return inputs.file_source(spec.images)
    dataset = datasets.DatasetSpec.from_cfg(cfg.dataset, cfg.get("data_cache"), cfg.paths.get("data_cache"))
    return inputs.dataset_source(datasets.describe(dataset), spec.images)


def run_explain_job(cfg: DictConfig, output_dir: Path | None = None, sweep_dir: Path | None = None) -> ExplainResult:
    """Everything that can be wrong with the inputs fails before a run exists: the run settings, the method, the
    tower, the images."""
    settings.check(cfg)
    model_spec = ModelSpec.from_cfg(cfg.model, cfg.get("weights_dir"))
    depth = vit_depth(model_spec.arch, model_spec.name)
    spec = inputs.ExplainSpec.from_cfg(cfg.explain).for_depth(depth, model_spec.name)
    source = resolve_source(cfg, spec)
    device = resolve_device(cfg.device)
    # The image tower runs as it does for zero-shot classification under the protocol.
    recipe = precision.recipe(OmegaConf.to_container(cfg.protocol), "zeroshot_classification", device_type(device),
                              model_spec.precision)
    loader = ModelLoader(model_spec, device)
    versions = library_versions()
    image_model = ModelKey(loader.spec.fingerprint, recipe.image, versions)
    tags, checkpoint = job_run.model_labels(loader.spec)
    labels = {**tags, **checkpoint, "explain": spec.method, "start_layer": str(spec.start_layer),
              "images": ", ".join(source.names)[:500],
              "captions": "; ".join(spec.captions)[:500] if spec.captions else inputs.LABEL_PROMPTS,
              "precision.image": recipe.image, "precision.text": recipe.text,
              **{f"lib.{name}": version for name, version in versions.items()}}
    params = flatten(cfg)
    store = tracking.connect_cfg(cfg.tracking)
    name = f"explain:{labels['model_name']}:{labels['pretrained']}"
    with job_run.job_run(store, labels, params, sweep.parent_of(sweep_dir, store), EXPLAIN_JOB_STAGE, name) as run_id:
        cache = StageCache(store, enabled=cfg.cache.enabled, force=cfg.cache.force,
                           claim_timeout_s=float(cfg.cache.claim_timeout_s), parent_run_id=run_id)
        explained = explain(cache, loader, spec, source, image_model, recipe.text, tags=tags, params=params)
        used = [job_run.dataset_input(source.dataset, "explain")] if source.dataset is not None else []
        maps = len(explained.arrays["pair_image"])
        job_run.record(store, run_id, {"explain": explained.run_id}, {"maps": float(maps)}, used)
    result = ExplainResult(run_id, explained, column_label(labels, spec))
    log.info("%s: %d relevance maps (%s), run %s", name, maps,
             "served from the cache" if explained.hit else "computed", explained.run_id)
    if output_dir is not None:
        write_files(Path(output_dir), result, store.uri)
    return result


def write_files(output_dir: Path, result: ExplainResult, tracking_uri: str) -> None:
    """The maps and overlays beside the job's log, and `result.json` for the aggregate step."""
    folder = output_dir / FIGURES_DIR
    artifacts.write_files(folder, figures.pair_files(result.explained.arrays))
    payload = {"kind": sweep.EXPLAIN_KIND, "job_run_id": result.job_run_id, "explain_run_id": result.explained.run_id,
               "label": result.label, "tracking_uri": tracking_uri}
    (output_dir / RESULT_FILE).write_text(json.dumps(payload, indent=2))
    log.info("relevance maps and overlays written to %s", folder)
