"""The run settings a job reads beside its config groups (`device`, `batch_size`, `num_workers`, `cache.*`, `spice`),
checked before any run exists: a cache hit never reads some of them, so one left unchecked would pass unnoticed."""
from __future__ import annotations

import math
import re
from typing import Any

from omegaconf import DictConfig

from pipeline.errors import PipelineError

DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def check(cfg: DictConfig) -> None:
    """Refuse the first malformed run setting, in one line naming it and what it takes."""
    device = cfg.get("device", "auto")
    if not isinstance(device, str) or not DEVICE.fullmatch(device):
        raise PipelineError(f"device={device!r} is not a device: give auto, cpu, cuda or cuda:N")
    whole(cfg.get("batch_size"), "batch_size", 1, "samples per forward pass")
    whole(cfg.get("num_workers"), "num_workers", 0, "data-loading processes, 0 to read in the job's own process")
    cache = cfg.get("cache") or {}
    for name in ("enabled", "force"):
        flag(cache.get(name, False), f"cache.{name}")
    timeout = cache.get("claim_timeout_s", 300)
    if not is_number(timeout) or not 0 < timeout < math.inf:
        raise PipelineError(f"cache.claim_timeout_s={timeout!r} must be a positive number of seconds (how long a "
                            f"claim may go without a heartbeat before another job takes it over)")
    flag(cfg.get("spice", False), "spice")


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
