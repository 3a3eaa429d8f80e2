"""Gradient-weighted attention rollout (Chefer et al., 2021, "Generic Attention-model Explainability", eq. 5-6):
for each block b from `start_layer` on, R ← R + Ē_b·R with Ē_b = mean over heads of (∇A_b ⊙ A_b)⁺, where A_b
are the block's attention probabilities and ∇A_b their gradient with respect to the image–text logit. The map
of an image for a caption is the class token's row of R over the patch tokens.

The logit is CLIP's `logit_scale · cos(image, text)`, as in Chefer's CLIP notebook: the scale is not a no-op,
since the rollout adds the identity to products of gradient-weighted maps."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from pipeline.models.loading import LoadedModel
from pipeline.stages.explain.attention import rerouted, vit_blocks


def rollout(probs: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], start_layer: int = 0) -> torch.Tensor:
    """The class token's relevance over the other tokens, (batch, tokens - 1), from each block's (batch, heads,
    tokens, tokens) attention probabilities and their gradients; blocks before `start_layer` are skipped (a
    negative index counts from the last block, as Python's does)."""
    start = range(len(probs))[start_layer]
    batch, _, tokens, _ = probs[0].shape
    relevance = torch.eye(tokens, dtype=torch.float32, device=probs[0].device).expand(batch, tokens, tokens)
    for attention, grad in zip(probs[start:], grads[start:]):
        weighted = (grad.float() * attention.float()).clamp(min=0).mean(dim=1)
        relevance = relevance + weighted @ relevance
    return relevance[:, 0, 1:]


@dataclass(frozen=True)
class Maps:
    """One relevance map per (image, caption) pair, on the tower's patch grid, and each pair's logit."""

    relevance: np.ndarray   # (pairs, grid_h, grid_w) float32
    logits: np.ndarray      # (pairs,) float32


def encode_captions(loaded: LoadedModel, captions: Sequence[str], precision: str) -> torch.Tensor:
    with torch.no_grad(), loaded.autocast(precision):
        return loaded.model.encode_text(loaded.tokenizer(list(captions)).to(loaded.device), normalize=True).float()


def relevance_maps(loaded: LoadedModel, images: torch.Tensor, texts: torch.Tensor, model_label: str,
                   image_precision: str, start_layer: int = 0) -> Maps:
    """Maps of `images` (batch, 3, H, W), already preprocessed, each for the caption embedding at the same row of
    `texts` (batch, dim). Pairs are independent: a ViT mixes no information across a batch, so the gradient of the
    summed logits with respect to one image's attention is that image's own."""
    model = loaded.model
    visual = model.visual
    blocks = vit_blocks(visual, model_label)
    grid = tuple(visual.grid_size)
    with rerouted(blocks) as exposed, torch.enable_grad(), loaded.autocast(image_precision):
        features = model.encode_image(images.to(loaded.device), normalize=True)
        logits = model.logit_scale.exp() * (features.float() * texts.to(loaded.device)).sum(dim=-1)
        probs = [module.probs for module in exposed]
        grads = torch.autograd.grad(logits.sum(), probs)
    relevance = rollout([p.detach() for p in probs], grads, start_layer)
    return Maps(relevance.reshape(len(images), *grid).cpu().numpy().astype(np.float32),
                logits.detach().float().cpu().numpy())
