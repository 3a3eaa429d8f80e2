"""The paper's probe features (appendix A.3): the image tower's penultimate output. For open_clip's ViTs that is
the pooled token before `proj`; for ModifiedResNet the attention-pool output (its own last layer, so the same as
the embedding). Other towers (timm, HF) are refused. Embeddings follow from pre-projection features by applying
`proj`, so the embed stage can store one and derive the other without encoding again."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer

from pipeline import PipelineError


def projection(visual: torch.nn.Module) -> torch.Tensor | None:
    """The matrix that maps pre-projection features to the embedding, or None where they coincide (ResNets)."""
    if isinstance(visual, VisionTransformer):
        return visual.proj
    if isinstance(visual, ModifiedResNet):
        return None
    raise PipelineError(f"pre-projection features are defined for open_clip's ViT and ModifiedResNet image towers, "
                        f"not {type(visual).__name__}; use head.features=embedding")


@contextmanager
def without_projection(visual: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """`visual` returning pre-projection features for the block: open_clip's ViT skips `proj` when it is None, the
    only way to reach the pooled token through its public forward. Restored however the block ends."""
    saved = projection(visual)
    if saved is None:
        yield visual
        return
    visual.proj = None
    try:
        yield visual
    finally:
        visual.proj = saved


def embed_from_pre_projection(features: torch.Tensor, visual: torch.nn.Module) -> torch.Tensor:
    """The embedding `encode_image` returns (unnormalized), from stored pre-projection features."""
    matrix = projection(visual)
    return features if matrix is None else features @ matrix.to(features.dtype)
