"""Exact trimmed text encoding: a causal text tower pooled at the end-of-text token never lets a position after
that token influence the result, so a batch needs only 1 + its largest end-of-text position, not 77 positions.

`encode_text` cannot take trimmed tokens (it adds the full positional embedding and the full mask), so the
trimmed path runs the tower's own modules with `positional_embedding[:L]` and `attn_mask[:L, :L]`, in the
order `open_clip.model.CLIP.encode_text` and `open_clip.transformer.TextTransformer.forward` (3.3.0) run them.
Every tower this does not provably hold for (no causal mask, `last`/`first` pooling, a class token, a Hugging
Face text model, CoCa) takes the model's own `encode_text` unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import TextTransformer, text_global_pool
from torch import nn

END_POOLING = ("argmax", "eos")


@dataclass(frozen=True)
class CausalTower:
    """The modules of a causal text tower, wherever the model keeps them."""

    token_embedding: nn.Module
    positional_embedding: torch.Tensor
    transformer: nn.Module
    attn_mask: torch.Tensor
    ln_final: nn.Module
    pool_type: str
    eos_id: int | None
    projection: Union[nn.Module, torch.Tensor, None]


def causal_tower(model: nn.Module) -> CausalTower | None:
    """The model's text tower when trimming it is exact, else None."""
    if isinstance(model, open_clip.CLIP):
        # CLIP copies its TextTransformer's modules onto itself (and never uses a class token).
        if model.attn_mask is None or model.text_pool_type not in END_POOLING:
            return None
        return CausalTower(model.token_embedding, model.positional_embedding, model.transformer, model.attn_mask,
                           model.ln_final, model.text_pool_type, getattr(model, "text_eos_id", None),
                           model.text_projection)
    text = getattr(model, "text", None)
    if isinstance(model, open_clip.CustomTextCLIP) and type(text) is TextTransformer:
        if text.attn_mask is None or text.cls_emb is not None or text.use_pad_mask or text.pool_type not in END_POOLING:
            return None
        return CausalTower(text.token_embedding, text.positional_embedding, text.transformer, text.attn_mask,
                           text.ln_final, text.pool_type, text.eos_id, text.text_projection)
    return None


def end_positions(tower: CausalTower, tokens: torch.Tensor) -> torch.Tensor:
    """Where each sequence is pooled: `text_global_pool`'s own index for `argmax` and `eos`."""
    if tower.pool_type == "argmax":
        return tokens.argmax(dim=-1)
    return (tokens == tower.eos_id).int().argmax(dim=-1)


def encode_trimmed(tower: CausalTower, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """`encode_text(tokens)` computed on the first 1 + max(end position) positions only."""
    length = int(end_positions(tower, tokens).max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = tower.transformer.get_cast_dtype()
    x = tower.token_embedding(tokens).to(cast_dtype)
    x = x + tower.positional_embedding[:length].to(cast_dtype)
    x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])
    x = tower.ln_final(x)
    x = text_global_pool(x, tokens, tower.pool_type, eos_token_id=tower.eos_id)
    if isinstance(tower.projection, nn.Linear):
        x = tower.projection(x)
    elif tower.projection is not None:
        x = x @ tower.projection
    return F.normalize(x, dim=-1) if normalize else x


def encode_tokens(model: nn.Module, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """Text features of `tokens`: trimmed where that is exact, the model's own `encode_text` elsewhere."""
    tower = causal_tower(model)
    if tower is None:
        return model.encode_text(tokens, normalize=normalize)
    return encode_trimmed(tower, tokens, normalize)


def length_order(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """An order that puts prompts of similar length together, so each trimmed batch stays tight (identity for
    towers that are not trimmed)."""
    tower = causal_tower(model)
    if tower is None:
        return torch.arange(len(tokens))
    return torch.sort(end_positions(tower, tokens), stable=True).indices
