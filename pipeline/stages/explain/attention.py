"""Attention probabilities on the autograd path: open_clip's ViT blocks rerouted through an equivalent module.

open_clip's `ResidualAttentionBlock` calls `nn.MultiheadAttention` with `need_weights=False`, and the weights that
module returns with `need_weights=True` are a new tensor (reshaped and head-averaged) made after the output was
computed from the probabilities, so the output does not depend on it and its gradient cannot be taken. `ExposedAttention`
computes the same function itself, `softmax(QKᵀ/√d)·V` with the wrapped module's own parameters, and keeps the
probability tensor it multiplies V by. `rerouted` swaps it into each block of a tower for the duration of a
`with` block and puts the original modules back, so the installed package and the model shared by the process's
model registry are left as they were.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import PipelineError


class ExposedAttention(nn.Module):
    """`nn.MultiheadAttention.forward`, written out; `probs` holds the last call's (batch, heads, L, S) probabilities."""

    def __init__(self, attention: nn.MultiheadAttention):
        super().__init__()
        if attention.bias_k is not None or attention.add_zero_attn:
            raise PipelineError("the attention uses bias_k/bias_v or add_zero_attn, which CLIP towers never do; "
                                "relevance maps are only computed for plain multi-head self-attention")
        self.wrapped = attention  # its parameters, not copies: gradients and weights are the block's own
        self.probs: torch.Tensor | None = None

    def projections(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mha = self.wrapped
        bias = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None, None, None)
        if mha._qkv_same_embed_dim:
            weights = mha.in_proj_weight.chunk(3)
        else:
            weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
        return tuple(F.linear(x, w, b) for x, w, b in zip((query, key, value), weights, bias))

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, length, embed) -> (batch, heads, length, head_dim)."""
        batch, length, _ = x.shape
        return x.reshape(batch, length, self.wrapped.num_heads, -1).transpose(1, 2)

    def additive_mask(self, attn_mask: torch.Tensor | None, key_padding_mask: torch.Tensor | None, batch: int,
                      target: int, source: int, dtype: torch.dtype) -> torch.Tensor | None:
        """Both masks as one float mask broadcastable to (batch, heads, L, S); True in a boolean mask means
        "may not attend", as in `nn.MultiheadAttention`."""
        mask = None
        if attn_mask is not None:
            mask = _as_additive(attn_mask, dtype)
            mask = mask.reshape(batch, self.wrapped.num_heads, target, source) if mask.dim() == 3 else mask
        if key_padding_mask is not None:
            padding = _as_additive(key_padding_mask, dtype).reshape(batch, 1, 1, source)
            mask = padding if mask is None else mask + padding
        return mask

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        mha = self.wrapped
        if not mha.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        batch, target, _ = query.shape
        source = key.shape[1]
        q, k, v = (self.heads(x) for x in self.projections(query, key, value))
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if is_causal and attn_mask is None:
            attn_mask = torch.ones(target, source, dtype=torch.bool, device=query.device).triu(1)
        mask = self.additive_mask(attn_mask, key_padding_mask, batch, target, source, scores.dtype)
        if mask is not None:
            scores = scores + mask
        probs = scores.softmax(dim=-1)
        self.probs = probs
        mixed = F.dropout(probs, p=mha.dropout, training=mha.training) @ v
        output = mha.out_proj(mixed.transpose(1, 2).reshape(batch, target, -1))
        if not mha.batch_first:
            output = output.transpose(0, 1)
        weights = (probs.mean(dim=1) if average_attn_weights else probs) if need_weights else None
        return output, weights


def _as_additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


# open_clip's vision config flags that switch its blocks to `CustomResidualAttentionBlock` (its own attention).
CUSTOM_BLOCK_FLAGS = ("qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner", "scale_attn", "scale_fc")


RESNET, TIMM, HUGGING_FACE = "its image tower is a ResNet", "its image tower is a timm model", \
    "its image tower is a Hugging Face model"
POOLED = "its ViT pools with an attentional pooler or by averaging, not from its class token"
CUSTOM = "its ViT blocks use open_clip's custom attention (qk-norm, scaled cosine attention)"


def refusal(model_label: str, why: str) -> PipelineError:
    return PipelineError(f"model {model_label}: {why}, so relevance maps (gradient-weighted attention rollout from the "
                         f"class token) do not apply; choose a ViT model that pools its class token")


def vit_depth(arch: str, model_label: str) -> int:
    """The number of blocks of `arch`'s ViT tower, read from open_clip's model config before any weights load;
    a refusal for every tower the method does not apply to."""
    import open_clip

    from pipeline.models.loading import register_project_architectures

    register_project_architectures()
    config = open_clip.get_model_config(arch)
    if config is None:
        raise PipelineError(f"unknown open_clip architecture {arch!r}; see open_clip.list_models()")
    vision = config.get("vision_cfg") or {}
    label = f"{model_label} ({arch})"
    if isinstance(vision.get("layers"), (list, tuple)):
        raise refusal(label, RESNET)
    if vision.get("timm_model_name") or vision.get("hf_model_name"):
        raise refusal(label, TIMM if vision.get("timm_model_name") else HUGGING_FACE)
    if vision.get("attentional_pool") or vision.get("pool_type", "tok") != "tok":
        raise refusal(label, POOLED)
    if vision.get("block_type") == "custom" or any(vision.get(flag) for flag in CUSTOM_BLOCK_FLAGS):
        raise refusal(label, CUSTOM)
    return int(vision.get("layers", 12))


def vit_blocks(visual: nn.Module, model_label: str) -> list[nn.Module]:
    """The residual blocks of an open_clip ViT image tower whose class token the relevance is read from; a clear
    refusal for every other tower."""
    from open_clip.transformer import VisionTransformer

    kind = type(visual).__name__
    if not isinstance(visual, VisionTransformer):
        raise refusal(model_label, RESNET if "ResNet" in kind else TIMM if "Timm" in kind else f"its image tower is a {kind}")
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
        raise refusal(model_label, POOLED)
    blocks = list(visual.transformer.resblocks)
    if not all(isinstance(getattr(block, "attn", None), nn.MultiheadAttention) for block in blocks):
        raise refusal(model_label, CUSTOM)
    return blocks


@contextmanager
def rerouted(blocks: list[nn.Module]) -> Iterator[list[ExposedAttention]]:
    """Each block's attention computed by an `ExposedAttention` inside the `with` block; restored afterwards."""
    originals = [block.attn for block in blocks]
    exposed = [ExposedAttention(attention) for attention in originals]
    try:
        for block, module in zip(blocks, exposed):
            block.attn = module
        yield exposed
    finally:
        for block, attention in zip(blocks, originals):
            block.attn = attention
