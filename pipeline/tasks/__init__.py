"""Task types, one module each, and the registry that finds them by the name a dataset config gives (`task:`).

A task declares everything that differs between kinds of evaluation: the formats it reads, whether it uses class
prompts (a zero-shot classifier over class names) and whether a linear probe applies, the metrics it scores for a
dataset, how its images are encoded (with what beside them: labels, caption owners, a game's layout), the texts
it embeds when it uses no class prompts, what it computes from the features (the classify stage's outputs), and
how it scores and resamples them. The stages take these from the task and know none of them. Adding a task type is
a module here and its line in `REGISTRY` (with its line in each `conf/protocol/` file); `docs/extending.md` says how.
A task's name is hashed into cache keys: it never changes.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

from pipeline.data.datasets import DatasetSpec
from pipeline.errors import PipelineError

if TYPE_CHECKING:  # torch and the stages' encoders load where something is computed
    import torch

    from pipeline.data.datasets import DatasetInfo
    from pipeline.models.loading import ModelLoader
    from pipeline.models.precision import Recipe
    from pipeline.stages import StageResult
    from pipeline.stages.embed import Texts
    from pipeline.stages.score import TaskScores
    from pipeline.store.artifacts import StageOutput

# The formats of single-label image data: what a classification-like task reads unless it says otherwise.
IMAGE_FORMATS = ("wds", "hf", "tfds", "folder")


class Task:
    """A task type. Subclasses set the class attributes and implement what applies to them; a task either
    classifies (image and text features -> `outputs`) or `generates` (captions), and always `scores`."""

    name: ClassVar[str]
    formats: ClassVar[tuple[str, ...]] = IMAGE_FORMATS
    class_prompts: ClassVar[bool] = False  # scored with a zero-shot classifier over the dataset's class names
    probe: ClassVar[bool] = False          # head=linear_probe applies (single-label classes with a train split)
    generates: ClassVar[bool] = False      # computed from generated captions (the generate stage), not features
    metrics: ClassVar[tuple[str, ...]] = ()  # what it scores for every dataset (a dataset may add its own)
    score_version: ClassVar[str | None] = None  # the score stage's version for this task, where it differs

    def metric_names(self, spec: DatasetSpec) -> list[str]:
        """The metrics the score stage logs for `spec`, known before anything runs."""
        return list(self.metrics)

    def encode_images(self, loader: ModelLoader, spec: DatasetSpec, precision: str, batch_size: int,
                      num_workers: int) -> StageOutput:
        """Every image of the dataset through the image tower once, with what the task needs beside it."""
        raise NotImplementedError(f"task {self.name} encodes no images")

    def texts(self, dataset: DatasetInfo, images: Callable[[], StageResult]) -> Texts:
        """The dataset's own texts (a task without class prompts): their strings and arrays kept beside them,
        read when they have to be encoded (`images` gives the image stage, where they come with the images)."""
        raise NotImplementedError(f"task {self.name} embeds no texts of its own")

    def outputs(self, images: StageResult, text: StageResult, recipe: Recipe, device: torch.device) -> StageOutput:
        """The classify stage: what is computed from the image and text features."""
        raise NotImplementedError(f"task {self.name} classifies nothing")

    def scores(self, spec: DatasetSpec, upstream: Mapping[str, StageResult], options: Mapping[str, Any]
               ) -> TaskScores:
        """Every metric with its per-sample outcomes and bootstrap replicates, from the stages the score is
        computed from (`embed_image`, `classify`; or `generate`). `options` holds the job's scoring switches."""
        raise NotImplementedError

    def score_material(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """What besides the dataset's metric definitions determines the score (in its key)."""
        return {}


def register(task: Task) -> Task:
    """Add a task type (a project's own, or a test's) to the registry: its module, then this call."""
    REGISTRY[task.name] = task
    return task


def get(name: str) -> Task:
    """The task named `name`, or one line listing the known ones."""
    found = REGISTRY.get(name)
    if found is None:
        raise PipelineError(f"dataset.task={name!r} is not a task type; use one of {', '.join(sorted(REGISTRY))} "
                            f"(pipeline/tasks/, docs/extending.md)")
    return found


def check(spec: DatasetSpec) -> Task:
    """The dataset's task, once it is known and reads the dataset's format."""
    task = get(spec.task)
    if spec.format not in task.formats:
        readers = sorted(name for name, other in REGISTRY.items() if spec.format in other.formats)
        raise PipelineError(f"dataset {spec.name}: task {task.name} reads formats {', '.join(task.formats)}, not "
                            f"{spec.format}" + (f" (format {spec.format} is read by {', '.join(readers)})"
                                                if readers else ""))
    return task


# The registry: one line per task type (its module defines it; the modules import `Task` from this package).
from pipeline.tasks import captioning, classification, multilabel, retrieval, selection, winogavil  # noqa: E402

REGISTRY: dict[str, Task] = {task.name: task for task in (
    classification.Classification(), retrieval.Retrieval(), winogavil.WinoGAViL(), multilabel.Multilabel(),
    selection.Selection(), captioning.Captioning(),
)}
