"""One job of a sweep: resolve inputs, then embed -> classify -> score (a captioning job: generate -> score), each
through the stage cache, and a job run that labels the result with what this job asked for."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from omegaconf import DictConfig, OmegaConf

from pipeline import CONF_DIR
from pipeline.data import annotated, datasets, languages, prompts, reading
from pipeline.errors import PipelineError
from pipeline.jobs import job_run, settings, sweep
from pipeline.models import precision
from pipeline.models.loading import (NLLB_DEFAULT_LANGUAGE, ModelLoader, ModelSpec, caption_context, device_type,
                                     library_versions, resolve_device, tokenizer_language)
from pipeline.stages import caption_metrics, classify, embed, generate, score, uncertainty
from pipeline.stages.embed import projection
from pipeline.stages.heads import HeadSpec, linear_probe
from pipeline.store import tracking
from pipeline.store.cache import StageCache

log = logging.getLogger(__name__)

RESULT_FILE = sweep.RESULT_FILE


@dataclass(frozen=True)
class JobResult:
    job_run_id: str
    score_run_id: str
    metric: str
    value: float
    metrics: dict[str, float]


def flatten(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as dotted MLflow params."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix.rstrip(".")] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def headline_metric(metric_name: str, main_metric: str) -> str:
    return main_metric if metric_name == "main" else metric_name


def protocol_label(cfg: DictConfig, model_precision: str) -> str:
    """The protocol a result was computed under: `model.precision=fp32` computes everything in fp32, whatever
    protocol was named, so its results are `fp32`'s and never pass for DataComp's."""
    return "fp32" if model_precision == "fp32" else str(cfg.protocol.name)


def prompt_label(prompts_cfg: DictConfig) -> str:
    """A prompt set's name; template files are told apart by their file name."""
    if prompts_cfg.get("source") == "file":
        return f"file:{Path(str(prompts_cfg.path)).stem}"
    return str(prompts_cfg.name)


def head_description(head: HeadSpec, prompt_tag: str) -> str:
    if not head.is_probe:
        return f"prompts={prompt_tag}"
    shots = "all" if head.k_shot is None else f"{head.k_shot}-shot"
    return f"linear probe ({shots}, seed {head.seed}, {head.features} features)"


def described_like(split: datasets.DatasetSpec, test: datasets.DatasetInfo) -> datasets.DatasetInfo:
    """Another split of the test split's dataset; its classes must be the test split's, since the probe's labels
    index them."""
    info = datasets.describe(split)
    if info.classnames != test.classnames:
        raise PipelineError(f"dataset {split.name}: split {split.split!r} lists other classes than split "
                            f"{test.spec.split!r}; a probe needs one class list")
    return info


@dataclass(frozen=True)
class JobInputs:
    """Everything a job resolved from its config, checked before any MLflow run exists."""

    cfg: DictConfig
    spec: datasets.DatasetSpec
    head: HeadSpec
    info: datasets.DatasetInfo
    probe_infos: list[datasets.DatasetInfo | None]
    class_prompts: prompts.Prompts | None
    loader: ModelLoader
    recipe: precision.Recipe
    device: str  # cpu, cuda or cuda:N
    versions: Mapping[str, str]
    metric: str
    tags: Mapping[str, str]     # what every stage run of this job carries
    labels: Mapping[str, str]   # what the job run carries
    params: Mapping[str, Any]
    pre_is_embedding: bool
    generation: Mapping[str, Any] | None = None  # captioning: CoCa.generate's arguments
    spice: bool = False                          # captioning: SPICE scored too

    @property
    def prompt_tag(self) -> str:
        return self.tags["prompts"]


def resolve_inputs(cfg: DictConfig) -> JobInputs:
    """Read and check the config: everything that can be wrong with the inputs fails here."""
    settings.check(cfg)
    language = str(cfg.get("language") or languages.ENGLISH)
    spec = datasets.DatasetSpec.from_cfg(cfg.dataset, cfg.get("data_cache"), cfg.paths.get("data_cache"), language)
    head = HeadSpec.from_cfg(cfg.get("head"))
    languages.check(spec.name, spec.task, language, str(cfg.prompts.get("source")), annotated.own_languages(spec))
    known = score.metric_names(spec)
    if spec.main_metric not in known:
        raise PipelineError(f"dataset.main_metric={spec.main_metric!r} is not computed for {spec.task}; use one of {known}")
    probe_specs = datasets.probe_splits(spec) if head.is_probe else None
    model_spec = ModelSpec.from_cfg(cfg.model, cfg.get("weights_dir"))
    pre_is_embedding = (head.is_probe and head.features == "pre_projection"
                        and projection.tower_kind(model_spec.arch) == projection.RESNET)
    info = datasets.describe(spec)
    class_prompts = (prompts.resolve(cfg.prompts, spec.name, info.templates, info.classnames)
                     if spec.task in datasets.CLASS_TASKS and not head.is_probe else None)
    probe_infos = [described_like(s, info) if s is not None else None for s in probe_specs] if probe_specs else []
    device = resolve_device(cfg.device)
    recipe = precision.recipe(OmegaConf.to_container(cfg.protocol), spec.task, device_type(device), model_spec.precision)
    loader = ModelLoader(model_spec, device, tokenizer_language=tokenizer_language(model_spec.arch, language))
    loader.spec.fingerprint  # fails now, not mid-run, on a missing checkpoint
    metric = headline_metric(cfg.metric.name, spec.main_metric)
    generation, spice = captioning_options(cfg, spec, model_spec) if spec.task == datasets.CAPTIONING else (None, False)
    versions = library_versions()
    # Prompt sets only shape zero-shot classifiers; probes, retrieval and WinoGAViL use none.
    prompt_tag = prompt_label(cfg.prompts) if class_prompts is not None else prompts.PROMPT_FREE
    model_tags, checkpoint = job_run.model_labels(loader.spec)
    tags = {**model_tags, "dataset": spec.name, "source": spec.source, "prompts": prompt_tag, "task": spec.task,
            "language": language}
    if spec.column:
        tags["column"] = spec.column
    labels = {**tags, **head.labels(), **checkpoint, "protocol": protocol_label(cfg, model_spec.precision),
              "main_metric": spec.main_metric, "metric": metric,
              **{f"precision.{tower}": getattr(recipe, tower) for tower in precision.TOWERS},
              **{f"lib.{name}": version for name, version in versions.items()}}
    if generation is not None:  # a caption decoder, not a classifier head, made these results
        clip_benchmark = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "generation" / "clip_benchmark.yaml"))
        labels["head"] = generate.describe(generation, generate.settings(clip_benchmark, 77))
    return JobInputs(cfg=cfg, spec=spec, head=head, info=info, probe_infos=probe_infos, class_prompts=class_prompts,
                     loader=loader, recipe=recipe, device=device, versions=versions, metric=metric, tags=tags,
                     labels=labels, params=flatten(cfg), pre_is_embedding=pre_is_embedding, generation=generation,
                     spice=spice)


def captioning_options(cfg: DictConfig, spec: datasets.DatasetSpec, model: ModelSpec) -> tuple[dict[str, Any], bool]:
    """A captioning job's generation settings and SPICE switch, once the model can caption and Java can score."""
    context = caption_context(model.arch)
    if context is None:
        raise PipelineError(f"task captioning needs a model with a caption decoder, and {model.arch} has none; use a "
                            f"CoCa (model=openclip/coca_ViT-L-14__mscoco_finetuned_laion2b_s13b_b90k, model=tiny_coca)")
    spice = bool(cfg.get("spice", False))
    if spec.main_metric == caption_metrics.SPICE and not spice:
        raise PipelineError("dataset.main_metric=SPICE needs spice=true")
    settings = generate.settings(OmegaConf.to_container(cfg.generation, resolve=True), context)
    caption_metrics.check_java(spice)
    return settings, spice


@dataclass
class Upstream:
    """The stages a job's score is computed from, as methods named after them. Every key follows from fingerprints
    and configs (`score_key` needs nothing read), and each stage runs, or is served, at most once per job, and only
    when the score itself has to be computed."""

    job: JobInputs
    cache: StageCache
    embedded: dict[str, embed.Embedded] = field(default_factory=dict)  # image features by split

    @property
    def image_model(self) -> embed.ModelKey:
        return embed.ModelKey(self.job.loader.spec.fingerprint, self.job.recipe.image, self.job.versions)

    @property
    def text_model(self) -> embed.ModelKey:
        language = self.job.loader.tokenizer_language
        return embed.ModelKey(self.job.loader.spec.fingerprint, self.job.recipe.text, self.job.versions,
                              None if language == NLLB_DEFAULT_LANGUAGE else language)

    def test_image_key(self) -> str:
        """The test split's image key, through the view of its classes where the dataset keeps some only."""
        key = embed.image_key(self.image_model, self.job.info)
        return embed.subset_key(key, self.job.info.class_subset) if self.job.info.class_subset else key

    # -- keys ------------------------------------------------------------------------------------------------
    def score_key(self) -> str:
        job = self.job
        if job.generation is not None:
            generate_key = generate.generate_key(self.image_model, job.info, job.generation)
            return score.score_key(job.spec, generate_key, generate_key, spice=job.spice)
        image_key = self.test_image_key()
        if job.head.is_probe:
            train_key, validation_key = (embed.image_key(self.image_model, i) if i else None for i in job.probe_infos)
            classify_key = linear_probe.probe_key(job.head, train_key, image_key, validation_key)
        else:
            text_key = (embed.classifier_key(self.text_model, job.info.classnames, job.class_prompts)
                        if job.class_prompts is not None else embed.texts_key(self.text_model, job.info))
            classify_key = classify.classify_key(job.spec.task, job.recipe.logits, image_key, text_key)
        return score.score_key(job.spec, classify_key, image_key)

    # -- the stages ------------------------------------------------------------------------------------------
    def embed_image(self, split_info: datasets.DatasetInfo | None = None) -> embed.Embedded:
        """Image features of the test split, or of the probe's train or validation split."""
        job, split_info = self.job, split_info or self.job.info
        split = split_info.spec.split
        if split not in self.embedded:
            embedded = embed.embed_images(self.cache, job.loader, split_info, self.image_model, tags=job.tags,
                                          params=job.params, batch_size=job.cfg.batch_size,
                                          num_workers=job.cfg.num_workers)
            subset = split_info.class_subset
            self.embedded[split] = embed.class_subset(embedded, subset) if subset else embedded
        return self.embedded[split]

    def text(self) -> embed.Embedded:
        """The zero-shot classifier, or the dataset's own texts (retrieval captions, WinoGAViL cues)."""
        job = self.job
        if job.class_prompts is not None:
            return embed.embed_classifier(self.cache, job.loader, job.info.classnames, job.class_prompts,
                                          self.text_model, tags=job.tags, params=job.params)
        if job.spec.format == "lines":
            def texts():  # the job language's captions, each with its image's name
                captions, owners = reading.lines_captions(job.spec)
                return captions, {"caption_names": np.array(owners, dtype=str)}
        elif job.spec.task == datasets.SELECTION:
            def texts():  # the captions of each instance, with the images it shows (the image stage is shared)
                captions, shown = reading.selection_instances(job.spec)
                return captions, {"instance_images": np.array(shown, dtype=str)}
        else:
            field_name = "captions" if job.spec.task == "zeroshot_retrieval" else "cues"
            texts = lambda: ([str(t) for t in self.embed_image()[field_name]], {})
        return embed.embed_texts(self.cache, job.loader, job.info, texts, self.text_model, tags=job.tags,
                                 params=job.params)

    def linear_probe(self) -> dict[str, embed.Embedded]:
        """The probe's logits on the test split, with the image features of every split it used."""
        job = self.job
        train_info, validation_info = job.probe_infos
        stages = {"embed_image": self.embed_image(), "embed_train": self.embed_image(train_info)}
        if validation_info is not None:
            stages["embed_validation"] = self.embed_image(validation_info)
        predicted = linear_probe.linear_probe(self.cache, job.head, stages["embed_train"], stages["embed_image"],
                                              stages.get("embed_validation"), len(job.info.classnames),
                                              tags=job.tags, params=job.params, pre_is_embedding=job.pre_is_embedding)
        return {**stages, "classify": predicted}

    def classify(self) -> dict[str, embed.Embedded]:
        """Zero-shot logits, retrieval ranks or WinoGAViL choices, with the embeddings they came from."""
        job = self.job
        image_stage, text_stage = self.embed_image(), self.text()
        predicted = classify.classify(self.cache, job.spec.task, image_stage, text_stage, job.recipe, job.device,
                                      tags=job.tags, params=job.params)
        return {"embed_image": image_stage, "text": text_stage, "classify": predicted}

    def generate(self) -> dict[str, embed.Embedded]:
        """A captioning job's generated captions, with the references they are scored against."""
        job = self.job
        return {"generate": generate.generate_captions(self.cache, job.loader, job.info, self.image_model,
                                                       job.generation, tags=job.tags, params=job.params,
                                                       batch_size=job.cfg.batch_size, num_workers=job.cfg.num_workers)}

    def stages(self) -> dict[str, embed.Embedded]:
        """What the score is computed from, by stage name."""
        if self.job.generation is not None:
            return self.generate()
        return self.linear_probe() if self.job.head.is_probe else self.classify()


def run_stages(job: JobInputs, cache: StageCache) -> score.Scores:
    """embed -> classify (or the probe), or generate -> score, each through the cache; the score is looked up first."""
    upstream = Upstream(job, cache)
    return score.score(cache, job.spec, upstream.score_key(), upstream.stages, tags=job.tags, params=job.params,
                       spice=job.spice)


def run_job(cfg: DictConfig, output_dir: Path | None = None, sweep_dir: Path | None = None) -> JobResult:
    """Evaluate cfg.model on cfg.dataset with cfg.prompts; writes `result.json` into `output_dir` if given. A job
    of a multirun (`sweep_dir`) logs its run as a child of the sweep's run."""
    job = resolve_inputs(cfg)
    store = tracking.connect_cfg(cfg.tracking)
    inputs = [job_run.dataset_input(info, context)
              for info, context in zip([job.info, *job.probe_infos], ("test", "train", "validation")) if info is not None]
    with job_run.job_run(store, job.labels, job.params, sweep.parent_of(sweep_dir, store)) as job_run_id:
        cache = StageCache(store, enabled=cfg.cache.enabled, force=cfg.cache.force,
                           claim_timeout_s=float(cfg.cache.claim_timeout_s), parent_run_id=job_run_id)
        scores = run_stages(job, cache)
        headline = {bound: scores.metrics.get(prefix + job.metric, float("nan"))
                    for bound, prefix in (("ci_low", uncertainty.CI_LOW), ("ci_high", uncertainty.CI_HIGH))}
        job_run.record(store, job_run_id, {**scores.inputs, "score": scores.run_id},
                       {**scores.metrics, **headline}, inputs)

    result = JobResult(job_run_id, scores.run_id, job.metric, scores.metrics.get(job.metric, float("nan")),
                       dict(scores.metrics))
    log.info("%s/%s on %s with %s, protocol=%s: %s = %.4f [%.4f, %.4f]", job.loader.spec.arch,
             job.loader.spec.pretrained_label, job.spec.name, head_description(job.head, job.prompt_tag),
             job.labels["protocol"], job.metric, result.value, headline["ci_low"], headline["ci_high"])
    if output_dir is not None:
        payload = {"job_run_id": job_run_id, "score_run_id": result.score_run_id, "tracking_uri": store.uri,
                   "metric": job.metric, "value": result.value}
        (Path(output_dir) / RESULT_FILE).write_text(json.dumps(payload, indent=2))
    return result
