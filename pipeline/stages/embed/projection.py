"""Pre-projection image features, the CLIP paper's probe features (appendix A.3): the image tower's penultimate
output. For open_clip's ViTs that is the pooled token before `proj`; for ModifiedResNet the attention-pool output
(its own last layer, so the same as the embedding); for a transformers checkpoint what `visual_projection` gets
(SigLIP's have none: the embedding). Other towers (timm, open_clip's Hugging Face towers, CoCa's) are refused.

The embed stage runs a ViT tower once with `proj` set aside and applies `proj` itself, inside the same autocast,
which is the product open_clip's forward computes: both features come from one pass, and the embedding is the one
`encode_image` returns, bit for bit."""
from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator

from pipeline.errors import PipelineError

if TYPE_CHECKING:  # open_clip's classes are needed where a model runs
    import torch

PRE_PROJECTION = "pre_projection_features"
EMBEDDING = "image_features"
VIT, RESNET = "vit", "resnet"

ImageEncoder = Callable[..., dict]  # a batch of images -> {feature name: tensor}


def tower_kind(arch: str) -> str:
    """`vit` or `resnet` from open_clip's model config, before any weights are loaded; other towers are refused.
    A transformers family (`arch` is its class) is `vit` where it projects its pooled output, and `resnet` (the
    embedding is the pre-projection feature) where its pooling head is its last layer (SigLIP's)."""
    from pipeline.models.hf_checkpoints import FAMILIES

    if arch in FAMILIES:
        return VIT if FAMILIES[arch].projected else RESNET
    import open_clip

    from pipeline.models.loading import register_project_architectures

    register_project_architectures()
    config = open_clip.get_model_config(arch) or {}
    vision = config.get("vision_cfg") or {}
    if not vision or vision.get("timm_model_name") or vision.get("hf_model_name") or vision.get("output_tokens") \
            or "multimodal_cfg" in config:
        raise PipelineError(f"pre-projection features are defined for open_clip's ViT and ModifiedResNet image towers, "
                            f"and {arch} has another kind; use head.features=embedding")
    return RESNET if isinstance(vision.get("layers"), (list, tuple)) else VIT


def projection(visual: torch.nn.Module) -> torch.Tensor | None:
    """The matrix that maps pre-projection features to the embedding, or None where they coincide (ResNets)."""
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.transformer import VisionTransformer

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


def image_encoder(model: torch.nn.Module) -> ImageEncoder:
    """What the embed stage runs on a batch: a plain CLIP ViT gives both features from one pass; every other model
    gives its embedding through its own `encode_image` (a ResNet's pre-projection features are that embedding)."""
    from open_clip.model import CLIP, CustomTextCLIP
    from open_clip.transformer import VisionTransformer

    if getattr(model, "has_pre_projection", False):  # a transformers model (models/transformers_clip.py)
        def projected(images: torch.Tensor) -> dict[str, torch.Tensor]:
            pre, embedding = model.encode_image_with_pre_projection(images)
            return {PRE_PROJECTION: pre, EMBEDDING: embedding}

        return projected
    visual = getattr(model, "visual", None)
    if type(model) in (CLIP, CustomTextCLIP) and isinstance(visual, VisionTransformer) and visual.proj is not None \
            and not visual.output_tokens:
        def both(images: torch.Tensor) -> dict[str, torch.Tensor]:
            with without_projection(visual):
                pre = visual(images)
            return {PRE_PROJECTION: pre, EMBEDDING: pre @ visual.proj}

        return both
    return lambda images: {EMBEDDING: model.encode_image(images)}
