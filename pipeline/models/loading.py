"""Load open_clip models (pretrained tags or local checkpoints), or transformers checkpoints
(`model.library=transformers`, `hf_checkpoints`), and fingerprint them for cache keys."""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pipeline import user_cache
from pipeline.errors import PipelineError
from pipeline.models import hf_checkpoints, precision
from pipeline.models.devices import cuda_available, device_type, resolve_device  # noqa: F401  (the jobs' imports)
from pipeline.store.artifacts import sha256_file

if TYPE_CHECKING:  # torch and open_clip are imported where a model is built: a served job never builds one
    import torch

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).with_name("configs")
# The distributions whose builds shape image and text features: a different build never shares a cache entry.
FEATURE_LIBRARIES = ("open_clip_torch", "torch", "torchvision", "pillow")


def library_versions() -> dict[str, str]:
    """Installed versions, build suffix included (`2.15.0+cu128`), of the libraries that shape features."""
    return dict(_installed(FEATURE_LIBRARIES))


@functools.cache
def _installed(names: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    # importlib.metadata scans site-packages on every call (~5 ms, once per job a plan keys); what is installed does
    # not change while a process runs
    return tuple((name, importlib.metadata.version(name)) for name in names)


OPEN_CLIP = "open_clip"
LIBRARIES = (OPEN_CLIP, hf_checkpoints.LIBRARY)


@dataclass(frozen=True)
class ModelSpec:
    """What identifies a model: open_clip architecture, pretrained tag or checkpoint path; or, for
    `library=transformers`, the model class (`arch`) and a Hub id or folder (`pretrained`).

    `precision` is `amp` (the protocol decides what runs under autocast) or `fp32` (nothing does)."""

    name: str
    arch: str
    pretrained: str | None
    precision: str = "fp32"
    cache_dir: str | None = None  # where open_clip (or the Hub, for transformers) keeps downloads; not part of a key
    library: str = OPEN_CLIP
    context_length: int | None = None  # transformers: the tokenizer's padded length (default: its own limit)

    @classmethod
    def from_cfg(cls, cfg: Any, cache_dir: str | None = None) -> "ModelSpec":
        library = str(cfg.get("library") or OPEN_CLIP)
        if library not in LIBRARIES:
            raise PipelineError(f"model.library={library!r} is not one of {', '.join(LIBRARIES)}")
        context = cfg.get("context_length")
        if context is not None and (library == OPEN_CLIP or not isinstance(context, int) or context < 2):
            raise PipelineError(f"model.context_length={context!r}: a whole number of tokens (at least 2), for "
                                f"model.library=transformers only (open_clip architectures fix their own)")
        spec = cls(cfg["name"], cfg["arch"], cfg.get("pretrained"), cfg.get("precision", "amp"), cache_dir, library, context)
        if spec.precision not in precision.MODEL_PRECISIONS:
            raise PipelineError(f"model.precision={spec.precision!r} is not one of {precision.MODEL_PRECISIONS}")
        if spec.is_transformers:
            hf_checkpoints.family(spec.arch)
            if not spec.pretrained:
                hf_checkpoints.checkpoint_folder(spec.pretrained, cache_dir)  # refuses, saying what to set
        else:
            check_openai_quickgelu(spec.arch, spec.pretrained)
        return spec

    @property
    def is_transformers(self) -> bool:
        return self.library == hf_checkpoints.LIBRARY

    @property
    def is_local_checkpoint(self) -> bool:
        if self.is_transformers:
            return bool(self.pretrained) and hf_checkpoints.is_local(self.pretrained)
        return bool(self.pretrained) and (Path(self.pretrained).suffix in {".pt", ".pth", ".bin", ".safetensors"}
                                          or Path(self.pretrained).exists())

    @cached_property
    def fingerprint(self) -> dict[str, Any]:
        """Key material: a local checkpoint is keyed by its content, a pretrained tag by its name; a transformers
        checkpoint by its files' content (`hf_checkpoints.fingerprint`), which alone adds the library."""
        if self.is_transformers:
            folder = hf_checkpoints.checkpoint_folder(self.pretrained, self.cache_dir)
            return hf_checkpoints.fingerprint(self.arch, folder, self.context_length, checkpoint_digest)
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
        """The `pretrained` tag value: the open_clip tag, or the checkpoint's file name; a transformers
        checkpoint's Hub id or folder name."""
        if self.is_transformers:
            return hf_checkpoints.label(self.pretrained)
        if self.is_local_checkpoint:
            return Path(self.pretrained).name
        return self.pretrained or "none"

    @property
    def library_labels(self) -> dict[str, str]:
        """Labels a transformers model's runs add (`library`, `lib.transformers`, ...); none for open_clip's, whose
        labels stay what they were."""
        if not self.is_transformers:
            return {}
        versions = {f"lib.{name}": version for name, version in hf_checkpoints.library_versions().items()}
        return {"library": self.library, **versions}


# -- what a checkpoint is, read once ---------------------------------------------------------------------------
def checksum_records(path: Path) -> list[Path]:
    """Where facts about a checkpoint are remembered: beside it, or (for a read-only folder) in the user's cache."""
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24]
    return [path.with_name(path.name + ".sha256.json"), user_cache() / "checksums" / f"{key}.json"]


def remembered(path: Path, name: str, compute: Callable[[Path], Any]) -> Any:
    """A fact about a checkpoint (its hash, its saved position), computed once and reused while the file's size
    and modification time are unchanged: hashing 600 MB takes seconds, and reading the position imports torch, and
    every job needs both."""
    stat = path.stat()
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    known: dict = {}
    for record in checksum_records(path):
        try:
            known = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        if {k: known.get(k) for k in stamp} == stamp and name in known:
            return known[name]
        break
    facts = {**(known if {k: known.get(k) for k in stamp} == stamp else {}), **stamp, name: compute(path)}
    for record in checksum_records(path):
        try:
            record.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=record.parent, delete=False, suffix=".partial") as partial:
                json.dump(facts, partial)
            os.replace(partial.name, record)
            break
        except OSError:
            continue  # a read-only folder: try the next place
    return facts[name]


def checkpoint_digest(path: Path) -> str:
    """The SHA-256 of a checkpoint (remembered)."""
    return remembered(path, "sha256", sha256_file)


def saved_position(path: Path) -> dict[str, int]:
    """The `epoch`/`step` entries open_clip's trainer saves beside the weights (remembered; read memory-mapped,
    the weights untouched); empty for a file that is not a torch zip checkpoint or holds none."""
    def read(checkpoint: Path) -> dict[str, int]:
        import torch

        try:
            saved = torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=True)
        except Exception:  # not a torch zip checkpoint (or an old pickle format): it has no position to read
            return {}
        if not isinstance(saved, dict):
            return {}
        return {name: int(saved[key]) for name, key in (("epoch", "epoch"), ("step", "step"), ("step", "global_step"))
                if isinstance(saved.get(key), int)}

    return remembered(path, "position", read)


def check_openai_quickgelu(arch: str, pretrained: str | None) -> None:
    """OpenAI's weights were trained with QuickGELU; open_clip (>= 2.29) only warns when the plain GELU
    architecture is asked for, and accuracy silently drops (ViT-B-16 on ImageNet: 0.644 against 0.683)."""
    if pretrained == "openai" and not arch.endswith("-quickgelu"):
        raise PipelineError(f"model.arch={arch} with pretrained=openai runs OpenAI's weights without QuickGELU and "
                            f"silently loses accuracy; use model.arch={arch}-quickgelu")


def register_project_architectures() -> None:
    """Make the architectures shipped in pipeline/models/configs/ known to open_clip (idempotent)."""
    import open_clip

    known = set(open_clip.list_models())
    if any(path.stem not in known for path in MODEL_CONFIG_DIR.glob("*.json")):
        open_clip.add_model_config(MODEL_CONFIG_DIR)


def caption_context(arch: str) -> int | None:
    """The text context of `arch`'s caption decoder, None where it has none: open_clip builds a CoCa, the one kind
    with a decoder, from a config with a `multimodal_cfg`."""
    import open_clip

    register_project_architectures()
    decoder = (open_clip.get_model_config(arch) or {}).get("multimodal_cfg")
    return None if decoder is None else int(decoder.get("context_length", 77))


@dataclass
class LoadedModel:
    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable
    device: torch.device

    def autocast(self, label: str):
        """Autocast for a recipe entry (`fp32`, `amp-fp16`, `amp-bf16`) on this model's device."""
        return precision.autocast(self.device, label)


def load_model(spec: ModelSpec, device: str | torch.device) -> LoadedModel:
    import torch

    device = torch.device(device)
    if spec.is_transformers:
        from pipeline.models import transformers_clip

        log.info("loading %s (%s, transformers) on %s", spec.pretrained, spec.arch, device)
        model, preprocess, tokenizer = transformers_clip.load(spec.arch, spec.pretrained, spec.cache_dir,
                                                              spec.context_length, device)
        return LoadedModel(model, preprocess, tokenizer, device)
    import open_clip

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

    def get(self, spec: ModelSpec, device: str | torch.device) -> LoadedModel:
        key = (spec.library, spec.arch, spec.pretrained, spec.cache_dir, spec.context_length, str(device))
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
    device: str  # `cuda`, `cuda:1` or `cpu` (`resolve_device`)
    registry: LoadedModels = field(default_factory=lambda: LOADED_MODELS, repr=False)
    tokenizer_language: str | None = None  # set on the tokenizer at every use: the registry's model is shared

    def get(self) -> LoadedModel:
        loaded = self.registry.get(self.spec, self.device)
        if self.tokenizer_language is not None:
            set_source_language(loaded.tokenizer, self.tokenizer_language)
        return loaded


def nllb_language_map() -> dict[str, str]:
    """clip_benchmark's `lang_map` (models/nllb_clip.py), read from its file: importing it the usual way runs its
    `models` package, which imports torch and open_clip, and a job whose stages are all served needs neither."""
    package = importlib.util.find_spec("clip_benchmark")
    path = Path(package.origin).parent / "models" / "nllb_clip.py"
    spec = importlib.util.spec_from_file_location("_clip_benchmark_nllb_clip", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.lang_map)


def set_source_language(tokenizer, code: str) -> None:
    """NLLB's source language on open_clip's HFTokenizer, checked. open_clip's `set_language` (and clip_benchmark's
    `nllb_clip.set_language`) call the HF tokenizer's `set_src_lang_special_tokens`, which transformers 5 no longer
    applies when it encodes: its `src_lang` setter does. Both are set, and an encoded text must start with the
    language's token, or the job stops rather than encode every text in English."""
    inner = tokenizer.tokenizer
    inner.src_lang = code
    tokenizer.set_language(code)
    if inner.convert_tokens_to_ids(code) not in inner("x")["input_ids"]:
        raise PipelineError(f"the NLLB tokenizer did not take the source language {code} (transformers "
                            f"{__import__('transformers').__version__}); the texts would be encoded in another")


NLLB_DEFAULT_LANGUAGE = "eng_Latn"  # what NLLB's tokenizer starts with: keys of English runs leave it out


def tokenizer_language(arch: str, language: str) -> str | None:
    """The source language NLLB-CLIP's tokenizer is given for a job's `language`, by clip_benchmark's own map
    (its cli.py sets it before every NLLB-CLIP run); None for every other tokenizer, which takes no language."""
    if "nllb-clip" not in arch:
        return None
    lang_map = nllb_language_map()
    if language not in lang_map:
        raise PipelineError(f"NLLB-CLIP has no source language for language={language}; clip_benchmark maps "
                            f"{', '.join(sorted(lang_map))}")
    return lang_map[language]
