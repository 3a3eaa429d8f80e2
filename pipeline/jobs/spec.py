"""A job's config as one typed value: `JobSpec.from_cfg` is the only code that reads a job's Hydra config. It parses
every group into the typed spec of the package that owns it and cross-checks them, refusing a bad input in one line
before any run exists; it reads no dataset, checkpoint or template file (`jobs.scoring.resolve` does that)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from omegaconf import DictConfig, OmegaConf

from pipeline.data import annotated, languages, prompts
from pipeline.data.datasets import DatasetSpec
from pipeline.errors import PipelineError
from pipeline.models.loading import ModelSpec
from pipeline.stages import generate
from pipeline.stages.heads import HeadSpec
from pipeline.store.tracking import TrackingSpec
from pipeline.tasks import Task, check

if TYPE_CHECKING:  # the explain stage's spec loads with torch, which a scoring job served from the cache never needs
    from pipeline.stages.explain.inputs import ExplainSpec

DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass(frozen=True)
class RunSettings:
    """How a job runs, never what it computes: no key holds them."""

    device: str       # auto | cpu | cuda | cuda:N
    batch_size: int
    num_workers: int


@dataclass(frozen=True)
class CacheSettings:
    enabled: bool = True          # false: recompute every stage and never serve or feed the cache
    force: bool = False           # true: recompute every stage and make the new runs the ones served
    claim_timeout_s: float = 300  # a claim whose holder cannot be checked, silent this long, is taken over


@dataclass(frozen=True)
class Protocol:
    """A precision protocol (`conf/protocol/`): on which devices its autocast is active, and per task which of the
    image tower, the text tower and the logits sit inside it."""

    name: str
    autocast_devices: tuple[str, ...]
    autocast: Mapping[str, Mapping[str, bool]]

    @classmethod
    def from_cfg(cls, cfg: Any) -> "Protocol":
        plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
        return cls(str(plain["name"]), tuple(plain.get("autocast_devices") or ()), dict(plain.get("autocast") or {}))

    def as_config(self) -> dict[str, Any]:
        """The protocol as `models.precision.recipe` reads it."""
        return {"name": self.name, "autocast_devices": list(self.autocast_devices), "autocast": dict(self.autocast)}


@dataclass(frozen=True)
class JobSpec:
    """Everything a job asked for, typed and checked; `params` is the resolved config as MLflow params."""

    model: ModelSpec
    dataset: DatasetSpec
    task: Task
    head: HeadSpec
    prompts: prompts.PromptSet
    protocol: Protocol
    generation: Mapping[str, Any] | None  # captioning: CoCa.generate's settings as the config gives them
    language: str
    metric: str                           # the headline metric's name (`main` resolved to the dataset's)
    spice: bool
    run: RunSettings
    cache: CacheSettings
    tracking: TrackingSpec
    explain: ExplainSpec | None
    params: Mapping[str, Any]

    @classmethod
    def from_cfg(cls, cfg: DictConfig | Mapping[str, Any]) -> "JobSpec":
        """The spec of a job's Hydra config, or of that config already resolved to plain data (a plan's)."""
        cfg = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
        language = str(cfg.get("language") or languages.ENGLISH)
        dataset = DatasetSpec.from_cfg(cfg["dataset"], cfg.get("data_cache"), cfg["paths"].get("data_cache"),
                                       language)
        task = check(dataset)
        head = HeadSpec.from_cfg(cfg.get("head"))
        prompt_set = prompts.PromptSet.from_cfg(cfg["prompts"])
        if head.is_probe and not task.probe:
            raise PipelineError(f"head=linear_probe fits single-label classes; dataset {dataset.name} is a {task.name} "
                                f"task: use head=zeroshot")
        languages.check(dataset.name, dataset.task, language, prompt_set.source, annotated.own_languages(dataset))
        known = task.metric_names(dataset)
        if dataset.main_metric not in known:
            raise PipelineError(f"dataset.main_metric={dataset.main_metric!r} is not computed for {task.name}; use one "
                                f"of {known}")
        metric = str(cfg["metric"]["name"])
        spice = flag(cfg.get("spice", False), "spice")
        generation = None
        if task.generates:
            generation = dict(cfg["generation"])
            if dataset.main_metric == "SPICE" and not spice:
                raise PipelineError("dataset.main_metric=SPICE needs spice=true")
        return cls(model=ModelSpec.from_cfg(cfg["model"], cfg.get("weights_dir")), dataset=dataset, task=task,
                   head=head, prompts=prompt_set, protocol=Protocol.from_cfg(cfg["protocol"]), generation=generation,
                   language=language, metric=dataset.main_metric if metric == "main" else metric, spice=spice,
                   run=run_settings(cfg), cache=cache_settings(cfg.get("cache") or {}),
                   tracking=TrackingSpec.from_cfg(cfg["tracking"]), explain=explain_spec(cfg.get("explain")),
                   params=flatten(cfg))

    @property
    def uses_class_prompts(self) -> bool:
        """Scored with a zero-shot classifier built from the prompt set (not a probe, not the dataset's texts)."""
        return self.task.class_prompts and not self.head.is_probe

    @property
    def score_options(self) -> dict[str, Any]:
        """The job's scoring switches a task may read (captioning: SPICE)."""
        return {"spice": self.spice}


def explain_spec(cfg: Any) -> ExplainSpec | None:
    """An explain job's method and inputs; None for a scoring job (`explain=none`)."""
    if cfg is None or cfg.get("name", "none") == "none":
        return None
    from pipeline.stages.explain.inputs import ExplainSpec

    return ExplainSpec.from_cfg(cfg)


def run_settings(cfg: Mapping[str, Any]) -> RunSettings:
    """Refuse the first malformed run setting, in one line naming it and what it takes: a cache hit never reads
    them, so one left unchecked would pass unnoticed."""
    device = cfg.get("device", "auto")
    if not isinstance(device, str) or not DEVICE.fullmatch(device):
        raise PipelineError(f"device={device!r} is not a device: give auto, cpu, cuda or cuda:N")
    return RunSettings(device, whole(cfg.get("batch_size"), "batch_size", 1, "samples per forward pass"),
                       whole(cfg.get("num_workers"), "num_workers", 0,
                                      "data-loading processes, 0 to read in the job's own process"))


def cache_settings(cache: Any) -> CacheSettings:
    timeout = cache.get("claim_timeout_s", 300)
    if not is_number(timeout) or not 0 < timeout < math.inf:
        raise PipelineError(f"cache.claim_timeout_s={timeout!r} must be a positive number of seconds (how long a "
                            f"claim may go without a heartbeat before another job takes it over)")
    return CacheSettings(flag(cache.get("enabled", True), "cache.enabled"),
                         flag(cache.get("force", False), "cache.force"), float(timeout))


def flatten(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A resolved config as dotted MLflow params."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix.rstrip(".")] = node

    walk(cfg, "")
    return flat


def whole(value: Any, name: str, least: int, what: str) -> int:
    """A whole number of at least `least` (YAML's and Hydra's `true` is a bool, never a number here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise PipelineError(f"{name}={value!r} must be a whole number of at least {least} ({what})")
    return value


def flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise PipelineError(f"{name}={value!r} must be true or false")
    return value


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
