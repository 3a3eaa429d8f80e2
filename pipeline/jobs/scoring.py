"""One scoring job of a sweep: its typed spec (`spec.JobSpec`, from the config) resolved once, by reading what it
names (the datasets' descriptions, the checkpoint's fingerprint, the prompt set's templates), then the stages its
task scores through the cache (embed -> classify, or the linear probe, or generate -> score), and a job run that
labels the result with what this job asked for."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from omegaconf import DictConfig

from pipeline.data import catalog, datasets, prompts
from pipeline.errors import PipelineError
from pipeline.jobs import job_run, sweep
from pipeline.jobs.skeleton import ResolvedModel, open_job, resolve_model
from pipeline.jobs.spec import JobSpec
from pipeline.models.loading import NLLB_DEFAULT_LANGUAGE, caption_context
from pipeline.stages import StageContext, StageResult, classify, embed, generate, score
from pipeline.stages.embed import projection
from pipeline.stages.heads import HeadSpec, linear_probe
from pipeline.stages.score import uncertainty

log = logging.getLogger(__name__)

RESULT_FILE = sweep.RESULT_FILE


@dataclass(frozen=True)
class JobResult:
    job_run_id: str
    score_run_id: str
    metric: str
    value: float
    metrics: dict[str, float]


@dataclass(frozen=True)
class Job:
    """A job's spec resolved: what its datasets are, the prompts it scores with, its model as it runs, and the
    labels of its runs. Everything that can be wrong with the inputs has failed by now, before any run exists."""

    spec: JobSpec
    info: datasets.DatasetInfo
    probe_infos: list[datasets.DatasetInfo | None]  # the probe's train and validation splits
    class_prompts: prompts.Prompts | None
    model: ResolvedModel
    generation: Mapping[str, Any] | None  # captioning: CoCa.generate's checked arguments
    tags: Mapping[str, str]     # what every stage run of this job carries
    labels: Mapping[str, str]   # what the job run carries

    @property
    def prompt_tag(self) -> str:
        return self.tags["prompts"]

    @property
    def pre_is_embedding(self) -> bool:
        """A ResNet's pre-projection features are its embedding (its attention pool is the projection)."""
        head = self.spec.head
        return head.is_probe and head.features == "pre_projection" and (
            projection.tower_kind(self.spec.model.arch) == projection.RESNET)


def protocol_label(spec: JobSpec) -> str:
    """The protocol a result was computed under: `model.precision=fp32` computes everything in fp32, whatever
    protocol was named, so its results are `fp32`'s and never pass for DataComp's."""
    return "fp32" if spec.model.precision == "fp32" else spec.protocol.name


def head_description(head: HeadSpec, prompt_tag: str) -> str:
    if not head.is_probe:
        return f"prompts={prompt_tag}"
    shots = "all" if head.k_shot is None else f"{head.k_shot}-shot"
    return f"linear probe ({shots}, seed {head.seed}, {head.features} features)"


def described_like(split: datasets.DatasetSpec, test: datasets.DatasetInfo,
                   describe: Callable[..., datasets.DatasetInfo] = datasets.describe) -> datasets.DatasetInfo:
    """Another split of the test split's dataset; its classes must be the test split's, since the probe's labels
    index them."""
    info = describe(split, classes=True)
    if info.classnames != test.classnames:
        raise PipelineError(f"dataset {split.name}: split {split.split!r} lists other classes than split "
                            f"{test.spec.split!r}; a probe needs one class list")
    return info


Describe = Callable[..., datasets.DatasetInfo]


def resolve(spec: JobSpec, describe: Describe = datasets.describe) -> Job:
    """Read what the spec names, and check what only that reveals (a class list per split, a caption decoder, Java).
    A plan over many jobs gives a `describe` that reads each dataset once."""
    probe_specs = datasets.probe_splits(spec.dataset) if spec.head.is_probe else None
    info = describe(spec.dataset, classes=spec.task.class_prompts or spec.task.probe)
    class_prompts = (prompts.resolve(spec.prompts, spec.dataset.name, info.templates, info.classnames)
                     if spec.uses_class_prompts else None)
    probe_infos = ([described_like(s, info, describe) if s is not None else None for s in probe_specs]
                   if probe_specs else [])
    model = resolve_model(spec, spec.task.name)
    generation = captioning_settings(spec) if spec.task.generates else None
    # Prompt sets only shape zero-shot classifiers; probes, retrieval and WinoGAViL use none.
    prompt_tag = spec.prompts.label if class_prompts is not None else prompts.PROMPT_FREE
    tags = {**model.tags, "dataset": spec.dataset.name, "source": spec.dataset.source, "prompts": prompt_tag,
            "task": spec.task.name, "language": spec.language}
    if spec.dataset.column:
        tags["column"] = spec.dataset.column
    labels = {**tags, **spec.head.labels(), **model.checkpoint, "protocol": protocol_label(spec),
              "main_metric": spec.dataset.main_metric, "metric": spec.metric, **model.labels}
    if generation is not None:  # a caption decoder, not a classifier head, made these results
        labels["head"] = generate.describe(generation, generate.settings(catalog.generation_defaults(), 77))
    return Job(spec, info, probe_infos, class_prompts, model, generation, tags, labels)


def captioning_settings(spec: JobSpec) -> dict[str, Any]:
    """A captioning job's generation settings, once the model can caption and Java can score."""
    from pipeline.stages.score import caption_metrics

    context = caption_context(spec.model.arch)
    if context is None:
        raise PipelineError(f"task captioning needs a model with a caption decoder, and {spec.model.arch} has none; use "
                            f"a CoCa (model=openclip/coca_ViT-L-14__mscoco_finetuned_laion2b_s13b_b90k, model=tiny_coca)")
    settings = generate.settings(spec.generation or {}, context)
    caption_metrics.check_java(spec.spice)
    return settings


@dataclass
class Upstream:
    """The stages a job's score is computed from, as methods named after them. Every key follows from fingerprints
    and configs (`score_key` needs nothing read), and each stage runs, or is served, at most once per job, and only
    when the score itself has to be computed."""

    job: Job
    stages: StageContext
    embedded: dict[str, StageResult] = field(default_factory=dict)  # image features by split

    @property
    def image_model(self) -> embed.ModelKey:
        model = self.job.model
        return embed.ModelKey(model.loader.spec.fingerprint, model.recipe.image, model.versions)

    @property
    def text_model(self) -> embed.ModelKey:
        model = self.job.model
        language = model.loader.tokenizer_language
        return embed.ModelKey(model.loader.spec.fingerprint, model.recipe.text, model.versions,
                              None if language == NLLB_DEFAULT_LANGUAGE else language)

    def test_image_key(self) -> str:
        """The test split's image key, through the view of its classes where the dataset keeps some only."""
        key = embed.image_key(self.image_model, self.job.info)
        return embed.subset_key(key, self.job.info.class_subset) if self.job.info.class_subset else key

    # -- keys ------------------------------------------------------------------------------------------------
    def score_key(self) -> str:
        return self.stage_keys()["score"]

    def stage_keys(self) -> dict[str, str]:
        """The key of every stage a score miss asks for, by the name `inputs` gives it (the template embeddings a
        classifier miss gathers, as `template:<template>`), the score's last."""
        job, task = self.job, self.job.spec.task
        version, material = task.score_version or score.VERSION, task.score_material(job.spec.score_options)
        if task.generates:
            generate_key = generate.generate_key(self.image_model, job.info, job.generation)
            return {"generate": generate_key,
                    "score": score.score_key(job.spec.dataset, generate_key, generate_key, version, material)}
        keys = {"embed_image": self.test_image_key()}
        if job.spec.head.is_probe:
            train, validation = (embed.image_key(self.image_model, i) if i else None for i in job.probe_infos)
            keys.update({"embed_train": train, **({"embed_validation": validation} if validation else {}),
                         "classify": linear_probe.probe_key(job.spec.head, train, keys["embed_image"], validation)})
        else:
            if job.class_prompts is not None:
                keys["text"] = embed.classifier_key(self.text_model, job.info.classnames, job.class_prompts)
                if not isinstance(job.class_prompts, dict):
                    keys.update({f"template:{t}": embed.template_key(self.text_model, job.info.classnames, t)
                                 for t in dict.fromkeys(job.class_prompts)})
            else:
                keys["text"] = embed.texts_key(self.text_model, job.info)
            keys["classify"] = classify.classify_key(task.name, job.model.recipe.logits, keys["embed_image"],
                                                     keys["text"])
        keys["score"] = score.score_key(job.spec.dataset, keys["classify"], keys["embed_image"], version, material)
        return keys

    # -- the stages ------------------------------------------------------------------------------------------
    def embed_image(self, split_info: datasets.DatasetInfo | None = None) -> StageResult:
        """Image features of the test split, or of the probe's train or validation split."""
        job, split_info = self.job, split_info or self.job.info
        split = split_info.spec.split
        if split not in self.embedded:
            embedded = embed.embed_images(self.stages, job.model.loader, split_info, self.image_model,
                                          job.spec.task.encode_images, batch_size=job.spec.run.batch_size,
                                          num_workers=job.spec.run.num_workers)
            subset = split_info.class_subset
            self.embedded[split] = embed.class_subset(embedded, subset) if subset else embedded
        return self.embedded[split]

    def text(self) -> StageResult:
        """The zero-shot classifier, or the dataset's own texts (the task's: captions, cues, instances)."""
        job = self.job
        if job.class_prompts is not None:
            return embed.embed_classifier(self.stages, job.model.loader, job.info.classnames, job.class_prompts,
                                          self.text_model)
        texts = job.spec.task.texts(job.info, self.embed_image)
        return embed.embed_texts(self.stages, job.model.loader, job.info, texts, self.text_model)

    def linear_probe(self) -> dict[str, StageResult]:
        """The probe's logits on the test split, with the image features of every split it used."""
        job = self.job
        train_info, validation_info = job.probe_infos
        stages = {"embed_image": self.embed_image(), "embed_train": self.embed_image(train_info)}
        if validation_info is not None:
            stages["embed_validation"] = self.embed_image(validation_info)
        predicted = linear_probe.linear_probe(self.stages, job.spec.head, stages["embed_train"], stages["embed_image"],
                                              stages.get("embed_validation"), len(job.info.classnames),
                                              job.pre_is_embedding)
        return {**stages, "classify": predicted}

    def classify(self) -> dict[str, StageResult]:
        """What the task computes from the image and text embeddings, with the embeddings it came from."""
        job, task = self.job, self.job.spec.task
        image_stage, text_stage = self.embed_image(), self.text()
        predicted = classify.classify(self.stages, task.name, task.outputs, image_stage, text_stage, job.model.recipe,
                                      job.model.device)
        return {"embed_image": image_stage, "text": text_stage, "classify": predicted}

    def generate(self) -> dict[str, StageResult]:
        """A captioning job's generated captions, with the references they are scored against."""
        job = self.job
        return {"generate": generate.generate_captions(self.stages, job.model.loader, job.info, self.image_model,
                                                       job.generation, batch_size=job.spec.run.batch_size,
                                                       num_workers=job.spec.run.num_workers)}

    def inputs(self) -> dict[str, StageResult]:
        """What the score is computed from, by stage name."""
        if self.job.spec.task.generates:
            return self.generate()
        return self.linear_probe() if self.job.spec.head.is_probe else self.classify()


def run_stages(job: Job, stages: StageContext) -> StageResult:
    """The task's stages, each through the cache; the score is looked up first, and asks for its inputs on a miss."""
    upstream = Upstream(job, stages)
    task, spec = job.spec.task, job.spec

    def scorer(inputs: Mapping[str, StageResult]) -> score.TaskScores:
        return task.scores(spec.dataset, inputs, spec.score_options)

    return score.score(stages, spec.dataset, upstream.score_key(), upstream.inputs, scorer)


def run_job(spec: JobSpec | DictConfig, output_dir: Path | None = None, sweep_dir: Path | None = None) -> JobResult:
    """Evaluate the spec's model on its dataset (a job config is parsed first); writes `result.json` into
    `output_dir` if given. A job of a multirun (`sweep_dir`) logs its run as a child of the sweep's run."""
    job = resolve(spec if isinstance(spec, JobSpec) else JobSpec.from_cfg(spec))
    inputs = [job_run.dataset_input(info, context)
              for info, context in zip([job.info, *job.probe_infos], ("test", "train", "validation")) if info is not None]
    with open_job(job.spec, job.labels, job.tags, sweep_dir) as opened:
        scored = run_stages(job, opened.stages)
        metric = job.spec.metric
        headline = {bound: scored.metrics.get(prefix + metric, float("nan"))
                    for bound, prefix in (("ci_low", uncertainty.CI_LOW), ("ci_high", uncertainty.CI_HIGH))}
        job_run.record(opened.store, opened.run_id, {**score.inputs_of(scored), "score": scored.run_id},
                       {**scored.metrics, **headline}, inputs)

    result = JobResult(opened.run_id, scored.run_id, metric, scored.metrics.get(metric, float("nan")),
                       dict(scored.metrics))
    log.info("%s/%s on %s with %s, protocol=%s: %s = %.4f [%.4f, %.4f]", job.model.loader.spec.arch,
             job.model.loader.spec.pretrained_label, job.spec.dataset.name,
             head_description(job.spec.head, job.prompt_tag), job.labels["protocol"], metric, result.value,
             headline["ci_low"], headline["ci_high"])
    if output_dir is not None:
        payload = {"job_run_id": opened.run_id, "score_run_id": result.score_run_id,
                   "tracking_uri": opened.store.uri, "metric": metric, "value": result.value}
        sweep.write_result(Path(output_dir), payload)
    return result
