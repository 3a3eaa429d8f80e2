"""Load open_clip models (pretrained tags or local checkpoints) and fingerprint them for cache keys."""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch

from pipeline.errors import PipelineError
from pipeline.models import precision
from pipeline.store.artifacts import sha256_file

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).with_name("configs")
# The distributions whose builds shape image and text features: a different build never shares a cache entry.
FEATURE_LIBRARIES = ("open_clip_torch", "torch", "torchvision", "pillow")


def library_versions() -> dict[str, str]:
    """Installed versions, build suffix included (`2.15.0+cu128`), of the libraries that shape features."""
    return {name: importlib.metadata.version(name) for name in FEATURE_LIBRARIES}


@dataclass(frozen=True)
class ModelSpec:
    """What identifies a model: open_clip architecture, pretrained tag or checkpoint path.

    `precision` is `amp` (the protocol decides what runs under autocast) or `fp32` (nothing does)."""

    name: str
    arch: str
    pretrained: str | None
    precision: str = "fp32"
    cache_dir: str | None = None  # where open_clip looks for (and downloads) pretrained weights; not part of a key

    @classmethod
    def from_cfg(cls, cfg: Any, cache_dir: str | None = None) -> "ModelSpec":
        spec = cls(cfg.name, cfg.arch, cfg.get("pretrained"), cfg.get("precision", "amp"), cache_dir)
        if spec.precision not in precision.MODEL_PRECISIONS:
            raise PipelineError(f"model.precision={spec.precision!r} is not one of {precision.MODEL_PRECISIONS}")
        check_openai_quickgelu(spec.arch, spec.pretrained)
        return spec

    @property
    def is_local_checkpoint(self) -> bool:
        return bool(self.pretrained) and (Path(self.pretrained).suffix in {".pt", ".pth", ".bin", ".safetensors"}
                                          or Path(self.pretrained).exists())

    @cached_property
    def fingerprint(self) -> dict[str, Any]:
        """Key material: a local checkpoint is keyed by its content, a pretrained tag by its name."""
        weights = self.pretrained
        if self.is_local_checkpoint:
            path = Path(self.pretrained)
            if not path.is_file():
                raise PipelineError(
                    f"model checkpoint {path} does not exist. For the bundled tiny model run "
                    f"`python -m pipeline.offline` (or `make assets`); otherwise fix model.pretrained."
                )
            weights = "sha256:" + checkpoint_digest(path)
        return {"arch": self.arch, "weights": weights}

    @property
    def pretrained_label(self) -> str:
        """The `pretrained` tag value: the open_clip tag, or the checkpoint's file name."""
        if self.is_local_checkpoint:
            return Path(self.pretrained).name
        return self.pretrained or "none"


# -- a checkpoint's content hash, computed once --------------------------------------------------------------
def checksum_records(path: Path) -> list[Path]:
    """Where a checkpoint's hash is remembered: beside it, or (for a read-only folder) in the user's cache."""
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24]
    return [path.with_name(path.name + ".sha256.json"), Path.home() / ".cache" / "clip-tables" / "checksums" / f"{key}.json"]


def checkpoint_digest(path: Path) -> str:
    """The SHA-256 of a checkpoint, hashed once and reused while its size and modification time are unchanged
    (a 600 MB checkpoint takes seconds to hash, and every job keys on it)."""
    stat = path.stat()
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    for record in checksum_records(path):
        try:
            known = json.loads(record.read_text())
            if {k: known.get(k) for k in stamp} == stamp and isinstance(known.get("sha256"), str):
                return known["sha256"]
        except (OSError, ValueError):
            continue
    digest = sha256_file(path)
    for record in checksum_records(path):
        try:
            record.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=record.parent, delete=False, suffix=".partial") as partial:
                json.dump({**stamp, "sha256": digest}, partial)
            os.replace(partial.name, record)
            break
        except OSError:
            continue  # a read-only folder: try the next place
    return digest


def check_openai_quickgelu(arch: str, pretrained: str | None) -> None:
    """OpenAI's weights were trained with QuickGELU; open_clip (>= 2.29) only warns when the plain GELU
    architecture is asked for, and accuracy silently drops (ViT-B-16 on ImageNet: 0.644 against 0.683)."""
    if pretrained == "openai" and not arch.endswith("-quickgelu"):
        raise PipelineError(f"model.arch={arch} with pretrained=openai runs OpenAI's weights without QuickGELU and "
                            f"silently loses accuracy; use model.arch={arch}-quickgelu")


def register_project_architectures() -> None:
    """Make the architectures shipped in pipeline/models/configs/ known to open_clip (idempotent)."""
    known = set(open_clip.list_models())
    if any(path.stem not in known for path in MODEL_CONFIG_DIR.glob("*.json")):
        open_clip.add_model_config(MODEL_CONFIG_DIR)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable
    device: torch.device

    def autocast(self, label: str):
        """Autocast for a recipe entry (`fp32`, `amp-fp16`, `amp-bf16`) on this model's device."""
        return precision.autocast(self.device, label)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(spec: ModelSpec, device: torch.device) -> LoadedModel:
    register_project_architectures()
    if spec.arch not in open_clip.list_models():
        raise PipelineError(f"unknown open_clip architecture {spec.arch!r}; see open_clip.list_models()")
    log.info("loading %s (%s) on %s", spec.arch, spec.pretrained, device)
    model, _, preprocess = open_clip.create_model_and_transforms(
        spec.arch, pretrained=spec.pretrained, device=device, precision="fp32", require_pretrained=bool(spec.pretrained),
        cache_dir=spec.cache_dir,
    )
    return LoadedModel(model.eval(), preprocess, open_clip.get_tokenizer(spec.arch), device)


@dataclass
class LoadedModels:
    """The models this process has loaded, so consecutive jobs of a sweep on one model load it once.

    It holds one model at a time: a sweep over several large models keeps only the current one in memory."""

    key: tuple | None = None
    loaded: LoadedModel | None = None

    def get(self, spec: ModelSpec, device: torch.device) -> LoadedModel:
        key = (spec.arch, spec.pretrained, spec.cache_dir, str(device))
        if self.key != key:
            self.key, self.loaded = None, None  # release the previous model before loading the next
            self.loaded, self.key = load_model(spec, device), key
        return self.loaded


# The explicit per-process registry every ModelLoader goes through.
LOADED_MODELS = LoadedModels()


@dataclass
class ModelLoader:
    """Loads the model on first use only, so a fully cached job never touches the weights."""

    spec: ModelSpec
    device: torch.device
    registry: LoadedModels = field(default_factory=lambda: LOADED_MODELS, repr=False)

    def get(self) -> LoadedModel:
        return self.registry.get(self.spec, self.device)
