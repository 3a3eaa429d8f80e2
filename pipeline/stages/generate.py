"""Generate stage: one caption per image of a dataset from a CoCa model's `generate`, called as clip_benchmark's
captioning calls it (its arguments are the `generation` config), with every image's reference captions beside.
Cached by model, images and generation settings, so scoring again (another metric, SPICE) never regenerates."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from pipeline.data import datasets, prompts
from pipeline.errors import PipelineError
from pipeline.models.loading import ModelLoader
from pipeline.stages import StageContext, StageResult
from pipeline.stages.embed import ModelKey
from pipeline.store.artifacts import StageOutput
from pipeline.store.cache import cache_key

VERSION = "1"
# 2: a webdataset's images (and their references) in the dataset's order whatever batch_size and num_workers read
# them (issue 35); other readers always read in that order, so their keys stay what they were.
ORDERED_VERSIONS = {"wds": "2"}
START, END = "<start_of_text>", "<end_of_text>"


def generate_key(model: ModelKey, dataset: datasets.DatasetInfo, settings: Mapping[str, Any]) -> str:
    """Keyed by the model, the images and the checked settings; transformers too, whose logits processors (and,
    below version 5, beam scorer) pick the tokens. A change to `models/beam_search.py` bumps VERSION."""
    from importlib.metadata import version

    stage_version = ORDERED_VERSIONS.get(dataset.spec.format, VERSION)
    return cache_key("generate", stage_version, {**model.material(), "dataset": dataset.image_identity,
                                           "skip_corrupt": dataset.spec.skip_corrupt, "generation": dict(settings),
                                           "transformers": version("transformers")})


# What each generation type reads of the settings (open_clip's CoCa.generate); sampling also draws with `seed`.
READS = {"beam_search": ("num_beams", "num_beam_groups", "seq_len", "min_seq_len", "repetition_penalty"),
         "top_k": ("top_k", "temperature", "seq_len", "max_seq_len", "min_seq_len", "repetition_penalty", "seed"),
         "top_p": ("top_p", "temperature", "seq_len", "max_seq_len", "min_seq_len", "repetition_penalty", "seed")}
INTEGERS = ("num_beams", "num_beam_groups", "seq_len", "max_seq_len", "min_seq_len", "top_k", "seed")
# (setting, holds, what it must be): what open_clip or transformers would refuse mid-run
RULES = (("min_seq_len", lambda s: s["min_seq_len"] >= 0, "0 or more"),
         ("seq_len", lambda s: s["seq_len"] > s["min_seq_len"], "more than generation.min_seq_len"),
         ("num_beams", lambda s: s["num_beams"] >= 2, "2 or more"),
         ("num_beam_groups", lambda s: s["num_beam_groups"] >= 1 and s["num_beams"] % s["num_beam_groups"] == 0,
          "a divisor of generation.num_beams"),
         ("max_seq_len", lambda s: s["max_seq_len"] >= 1, "1 or more"),
         ("top_k", lambda s: s["top_k"] >= 1, "1 or more"),
         ("top_p", lambda s: 0 < s["top_p"] <= 1, "in (0, 1]"),
         ("temperature", lambda s: s["temperature"] > 0, "above 0"),
         ("repetition_penalty", lambda s: s["repetition_penalty"] > 0, "above 0"))


def settings(config: Mapping[str, Any], context_length: int) -> dict[str, Any]:
    """The arguments the generation type reads (and its name), each as a number of its kind, checked against what
    open_clip's `generate` would assert or raise mid-run, and against the model's text context."""
    kind = config.get("generation_type")
    if kind not in READS:
        raise PipelineError(f"generation.generation_type={kind!r} is not one of {sorted(READS)}")
    found: dict[str, Any] = {"generation_type": kind}
    for name in READS[kind]:
        value = config.get(name)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise PipelineError(f"generation.{name}={value!r} is not a number; generation_type={kind} needs it") from None
        if name in INTEGERS and not number.is_integer():
            raise PipelineError(f"generation.{name}={value!r} must be a whole number")
        found[name] = int(number) if name in INTEGERS else number
    for name, holds, wanted in RULES:
        if name in found and not holds(found):
            raise PipelineError(f"generation.{name}={found[name]} must be {wanted}")
    if found["seq_len"] > context_length:
        raise PipelineError(f"generation.seq_len={found['seq_len']} is longer than the model's text context "
                            f"({context_length} tokens)")
    return found


def describe(settings: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
    """`generate beam_search`, with every setting that type reads and that differs from `defaults` (clip_benchmark's):
    the head column of a captioning result, so a sweep over settings keeps a row for each."""
    kind = str(settings["generation_type"])
    changed = [f"{name}={settings[name]}" for name in READS[kind] if settings[name] != defaults.get(name)]
    return " ".join(["generate", kind, ",".join(changed)]).strip()


def decoded(tokenizer, tokens: np.ndarray) -> str:
    """A generated token row as text, cut as clip_benchmark cuts it (metrics/captioning.py): up to the first end
    token, the start token dropped, stripped."""
    return tokenizer.decode(tokens.tolist()).split(END)[0].replace(START, "").strip()


def generate_captions(ctx: StageContext, loader: ModelLoader, dataset: datasets.DatasetInfo, model: ModelKey,
                      settings: Mapping[str, Any], *, batch_size: int, num_workers: int) -> StageResult:
    """`captions` (one per image, in the dataset's order), `references` (every reference caption, flattened) and
    `reference_image` (the image each reference belongs to)."""
    spec = dataset.spec
    name = f"generate:{loader.spec.name}:{spec.name}/{spec.split}"
    return ctx.run("generate", generate_key(model, dataset, settings), name,
                   lambda: captions_of(loader, spec, settings, model.precision, batch_size, num_workers),
                   tags={"prompts": prompts.PROMPT_FREE, "precision": model.precision, "split": spec.split})


def captions_of(loader: ModelLoader, spec: datasets.DatasetSpec, settings: Mapping[str, Any], precision: str,
                batch_size: int, num_workers: int) -> StageOutput:
    import torch
    import torch.nn.functional as F

    from pipeline.data import reading
    from pipeline.models import beam_search
    from pipeline.stages.embed.images import encode_batches, pinned

    loaded = loader.get()
    beam_search.install()
    references: list[list[str]] = []
    width = int(settings["seq_len"])

    arguments = {name: value for name, value in settings.items() if name != "seed"}
    if "seed" in settings:  # sampling draws from torch's generator: the same captions for a seed (and batch size)
        torch.manual_seed(settings["seed"])

    def generate(images):
        # Batches end at different lengths; padded to seq_len (the longest a caption can be) they stack.
        tokens = loaded.model.generate(images, **arguments)
        return {"tokens": F.pad(tokens, (0, width - tokens.shape[1]), value=loaded.model.pad_id)}

    batches = reading.retrieval_batches(spec, loaded.preprocess, batch_size, num_workers, pinned(loaded))
    made = encode_batches(loaded, batches, spec, precision, lambda batch: references.extend(batch.fields["txt"]),
                          encode=generate, desc="generate")
    tokens = made.arrays["tokens"].astype(np.int64)
    captions = [decoded(loaded.tokenizer, row) for row in tokens]
    owners = [image for image, texts in enumerate(references) for _ in texts]
    return StageOutput(arrays={"captions": np.array(captions, dtype=str),
                               "references": np.array([text for texts in references for text in texts], dtype=str),
                               "reference_image": np.array(owners, dtype=np.int64)}, metrics=made.metrics)
