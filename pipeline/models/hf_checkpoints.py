"""Hugging Face transformers checkpoints (`model.library=transformers`): the CLIP-style families evaluated, where a
checkpoint's files are (a local folder, or the Hub cache) and the content fingerprint of its files. Nothing here
imports torch or transformers: a job whose stages are all served never builds the model."""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.errors import PipelineError, one_line

LIBRARY = "transformers"
# The distributions that shape a transformers model's features beyond FEATURE_LIBRARIES (its code, its fast and
# its sentencepiece tokenizers): they enter the keys of transformers models only.
LIBRARIES = ("transformers", "tokenizers", "sentencepiece")
MASKED = ("input_ids", "attention_mask")
IDS_ONLY = ("input_ids",)


@dataclass(frozen=True)
class Family:
    """A transformers class the pipeline evaluates, and how its text tower is fed."""

    cls: str
    module: str         # transformers.models.<module> holds it (present from the release that added the class)
    model_type: str     # what config.json says for a checkpoint of this class
    title: str
    text_inputs: tuple[str, ...]  # the tokenizer outputs the text tower is given
    packed_images: bool = False   # NaFlex: an image's patches, their mask and its grid travel as one tensor
    projected: bool = True        # a `visual_projection` after the pooled output (SigLIP's pooling head is last)


# Big_vision's SigLIP text towers were trained without a padding mask (pooled at the last position, open_clip runs
# them so too): they get the ids padded to max_length only. Every other tower gets its padding mask.
FAMILIES = {family.cls: family for family in (
    Family("CLIPModel", "clip", "clip", "CLIP: OpenAI's, MetaCLIP's, any CLIPModel fine-tune", MASKED),
    Family("SiglipModel", "siglip", "siglip", "SigLIP and SigLIP 2 at a fixed resolution", IDS_ONLY,
           projected=False),
    Family("Siglip2Model", "siglip2", "siglip2", "SigLIP 2 NaFlex", IDS_ONLY, packed_images=True,
           projected=False),
    Family("AltCLIPModel", "altclip", "altclip", "AltCLIP (XLM-R text tower)", MASKED),
    Family("ChineseCLIPModel", "chinese_clip", "chinese_clip", "Chinese CLIP (BERT text tower)", MASKED),
    Family("MetaClip2Model", "metaclip_2", "metaclip_2", "MetaCLIP 2 (worldwide)", MASKED),
)}


def transformers_version() -> str:
    try:
        return importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def family(cls: str) -> Family:
    """The family named by `model.arch`, once the installed transformers is known to have its class."""
    found = FAMILIES.get(cls)
    if found is None:
        raise PipelineError(f"model.arch={cls} is not a transformers family this pipeline evaluates; use one of "
                            f"{', '.join(FAMILIES)} (model.library=transformers)")
    if importlib.util.find_spec("transformers") is None or \
            importlib.util.find_spec(f"transformers.models.{found.module}") is None:
        raise PipelineError(f"transformers {transformers_version()} has no {found.cls} ({found.title}); install a "
                            f"transformers release that has it, or evaluate another family")
    return found


def library_versions() -> dict[str, str]:
    """Installed versions of LIBRARIES (`absent` for sentencepiece where it is not installed)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


# -- where a checkpoint's files are ------------------------------------------------------------------------------
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
# What shapes features besides the weights: the architecture, the image transform, the tokenizer.
SETTINGS_FILES = ("config.json", "preprocessor_config.json", "processor_config.json", "tokenizer.json",
                  "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
                  "vocab.txt", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")
# transformers prefers safetensors where a checkpoint has both, as a sharded one lists its shards in an index.
WEIGHTS = (("model.safetensors", "model.safetensors.index.json"), ("pytorch_model.bin", "pytorch_model.bin.index.json"))


def is_local(pretrained: str) -> bool:
    """A folder (transformers' own rule: an existing directory is read from disk), or what can only be a path."""
    return Path(pretrained).expanduser().is_dir() or not HUB_ID.match(pretrained)


def weight_files(folder: Path) -> list[Path]:
    """The files transformers loads the weights from, in its order of preference; empty where there are none."""
    for single, index in WEIGHTS:
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            shards = sorted(set(json.loads((folder / index).read_text()).get("weight_map", {}).values()))
            return [folder / index, *(folder / shard for shard in shards)]
    return []


def checkpoint_folder(pretrained: str | None, cache_dir: str | None) -> Path:
    """The folder holding the checkpoint: the local folder named, or its snapshot in the Hub cache (`cache_dir`,
    else HF_HOME's), fetched there first when it is missing and the Hub is reachable."""
    if not pretrained:
        raise PipelineError("model.library=transformers needs model.pretrained: a Hub id "
                            "(openai/clip-vit-base-patch32) or a folder saved by save_pretrained")
    if is_local(pretrained):
        folder = Path(pretrained).expanduser()
        if not folder.is_dir():
            raise PipelineError(f"transformers checkpoint folder {pretrained} does not exist; fix model.pretrained")
        if not weight_files(folder) or not (folder / "config.json").is_file():
            raise PipelineError(f"{pretrained} holds no transformers checkpoint (config.json and model.safetensors or "
                                f"pytorch_model.bin, as save_pretrained writes them)")
        return folder
    return hub_snapshot(pretrained, cache_dir)


def hub_snapshot(repo_id: str, cache_dir: str | None) -> Path:
    from huggingface_hub import constants, list_repo_files, snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True))
        if weight_files(folder) and (folder / "config.json").is_file():
            return folder
    except Exception:  # not cached (huggingface_hub's LocalEntryNotFoundError, or an incomplete snapshot)
        pass
    where = cache_dir or constants.HF_HUB_CACHE
    if constants.HF_HUB_OFFLINE:
        raise PipelineError(f"transformers checkpoint {repo_id} is not in the Hub cache {where} and HF_HUB_OFFLINE "
                            f"is set; download it where there is a network (hf download {repo_id}) and copy the "
                            f"cache, or set model.pretrained to a local folder")
    try:
        listed = list_repo_files(repo_id)
        return Path(snapshot_download(repo_id, cache_dir=cache_dir, allow_patterns=wanted_files(listed)))
    except Exception as exc:
        raise PipelineError(f"transformers checkpoint {repo_id} could not be fetched from the Hub into {where} "
                            f"({type(exc).__name__}: {one_line(exc)}); check the id, or set model.pretrained to a "
                            f"local folder") from exc


def wanted_files(listed: list[str]) -> list[str]:
    """What a job needs of a Hub repository: its settings files and one copy of its weights (no TF or Flax)."""
    names = set(listed)
    for single, index in WEIGHTS:
        stem, suffix = single.split(".")
        shard = re.compile(rf"{stem}-\d+-of-\d+\.{suffix}")
        if single in names or index in names:
            weights = [single] if single in names else [index, *(name for name in listed if shard.fullmatch(name))]
            return [name for name in SETTINGS_FILES if name in names] + weights
    raise PipelineError("the Hub repository has no PyTorch weights (model.safetensors or pytorch_model.bin)")


# -- fingerprints: the files' content, not where they are -----------------------------------------------------
HUB_BLOB = re.compile(r"^[0-9a-f]{64}$")
SMALL = 16 << 20  # hashed at every use; larger files are hashed once and remembered


def file_digest(path: Path, remembered_digest: Callable[[Path], str]) -> str:
    """The SHA-256 of a file's content. The Hub cache stores a large (LFS) file as a blob named by that very hash,
    which the Hub checked on download: it is read from the name, and nothing is written into the cache."""
    resolved = path.resolve()
    if resolved.parent.name == "blobs" and HUB_BLOB.match(resolved.name):
        return resolved.name
    if resolved.stat().st_size < SMALL:
        return hashlib.sha256(resolved.read_bytes()).hexdigest()
    return remembered_digest(resolved)


def manifest_digest(files: list[Path], remembered_digest: Callable[[Path], str]) -> str:
    manifest = {path.name: file_digest(path, remembered_digest) for path in files}
    return "sha256:" + hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def fingerprint(cls: str, folder: Path, context_length: int | None,
                remembered_digest: Callable[[Path], str]) -> dict:
    """Key material of a transformers checkpoint: its family, the content of its weights and of the files that
    shape its features (config, image processor, tokenizer), the library and its builds. A Hub id and a copy of
    its files in a folder share every key."""
    check_model_type(cls, folder)
    settings = [folder / name for name in SETTINGS_FILES if (folder / name).is_file()]
    material = {"arch": cls, "weights": manifest_digest(weight_files(folder), remembered_digest),
                "settings": manifest_digest(settings, remembered_digest), "library": LIBRARY,
                "libraries": library_versions()}
    return {**material, "context_length": context_length} if context_length is not None else material


def check_model_type(cls: str, folder: Path) -> None:
    """A checkpoint of another class would load with random weights where names differ: refused instead."""
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{folder / 'config.json'} cannot be read ({one_line(exc)})") from exc
    expected = FAMILIES[cls].model_type
    if model_type != expected:
        others = [f.cls for f in FAMILIES.values() if f.model_type == model_type]
        hint = f"model.arch={others[0]}" if others else "a family this pipeline evaluates"
        raise PipelineError(f"the checkpoint in {folder} is a {model_type!r} model, not {cls}'s {expected!r}; use {hint}")


def label(pretrained: str) -> str:
    """The `pretrained` label: a Hub id as given, a folder by its name."""
    return Path(pretrained).expanduser().resolve().name if is_local(pretrained) else pretrained
