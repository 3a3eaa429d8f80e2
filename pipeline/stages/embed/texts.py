"""Text encoders of the embed stage: strings to L2-normalized embeddings, and zero-shot classifiers assembled
from per-template embeddings with open_clip's recipe (`open_clip.zero_shot_classifier.build_zero_shot_classifier`)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from pipeline.models.loading import LoadedModel, ModelLoader
from pipeline.models.precision import with_dtype
from pipeline.stages.embed.trimmed import encode_tokens, length_order
from pipeline.stages.score.ties import distinct
from pipeline.store.artifacts import StageOutput

TEXT_BATCH = 256


def encode_strings(loaded: LoadedModel, texts: Sequence[str], precision: str, desc: str = "embed texts") -> torch.Tensor:
    """L2-normalized embeddings of `texts`, in their order, normalized inside the tower as the references do.

    Texts that tokenize alike (duplicates, long captions cut at the context length, class names listed twice) are
    encoded once and share their embedding: encoded apart, in batches trimmed to other lengths, they could differ
    in the last bit, and a tie between them would be decided by rounding. They are encoded in batches of similar
    length, so each batch is trimmed to its own longest prompt."""
    tokens = loaded.tokenizer(list(texts))
    repeated = distinct(tokens)
    if repeated is not None:
        return encode_distinct(loaded, tokens[repeated[0]], precision, desc)[repeated[1]]
    return encode_distinct(loaded, tokens, precision, desc)


def encode_distinct(loaded: LoadedModel, tokens: torch.Tensor, precision: str, desc: str) -> torch.Tensor:
    """`encode_strings` of token rows that all differ."""
    order = length_order(loaded.model, tokens)
    chunks = []
    with torch.no_grad(), loaded.autocast(precision), tqdm(total=len(tokens), desc=desc, unit="text") as bar:
        for start in range(0, len(tokens), TEXT_BATCH):
            batch = order[start:start + TEXT_BATCH]
            chunks.append(encode_tokens(loaded.model, tokens[batch].to(loaded.device), normalize=True).cpu())
            bar.update(len(batch))
    encoded = torch.cat(chunks)
    features = torch.empty_like(encoded)
    features[order] = encoded
    return features


def fill(template: str, classname: str) -> str:
    """A template with the class name in place of `{c}`, by name, as clip_benchmark fills it."""
    return template.format(c=classname)


def encode_templates(loaded: LoadedModel, classnames: Sequence[str], templates: Sequence[str],
                     precision: str) -> list[StageOutput]:
    """One output per template: the (classes, dim) embeddings of that template filled with every class name,
    all encoded in one length-sorted pass."""
    texts = [fill(template, classname) for template in templates for classname in classnames]
    features = encode_strings(loaded, texts, precision, desc=f"embed {len(templates)} templates x {len(classnames)} classes")
    size = len(classnames)
    return [StageOutput(arrays=with_dtype("embeddings", features[i * size:(i + 1) * size]))
            for i in range(len(templates))]


def assemble_classifier(per_template: Sequence[torch.Tensor]) -> torch.Tensor:
    """open_clip's recipe on per-template embeddings (each prompt already normalized): per class the mean over
    templates, normalized; one column per class. The (classes, templates, dim) stack is the layout open_clip's
    `reshape(classes, templates, -1).mean(dim=1)` reduces, so the result is the same computation."""
    embeddings = torch.stack(list(per_template), dim=1).mean(dim=1)
    return (embeddings / embeddings.norm(dim=1, keepdim=True)).T


def per_class_classifier(loader: ModelLoader, classnames: Sequence[str], sentences: dict[str, list[str]],
                         precision: str) -> torch.Tensor:
    """CuPL: different sentences per class, so there are no shared templates; each class is averaged with the
    same normalize-mean-normalize recipe, from one length-sorted pass over all sentences."""
    loaded = loader.get()
    texts = [sentence for classname in classnames for sentence in sentences[classname]]
    features = encode_strings(loaded, texts, precision, desc="embed per-class prompts")
    bounds = np.cumsum([len(sentences[classname]) for classname in classnames])[:-1]
    columns = []
    with torch.no_grad(), loaded.autocast(precision):
        for group in torch.tensor_split(features, torch.as_tensor(bounds)):
            mean = group.mean(dim=0)
            columns.append(mean / mean.norm())
    return torch.stack(columns, dim=1)


def encode_texts(loader: ModelLoader, texts: list[str], precision: str) -> StageOutput:
    """A dataset's own texts (retrieval captions, WinoGAViL cues), normalized inside the tower as clip_benchmark's
    retrieval does."""
    return StageOutput(arrays=with_dtype("text_features", encode_strings(loader.get(), texts, precision)))
