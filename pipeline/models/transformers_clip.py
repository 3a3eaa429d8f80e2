"""A transformers checkpoint behind the interface the stages use for open_clip models: `encode_image` and
`encode_text` (with `normalize`), a tokenizer returning one tensor, an image transform, `logit_scale`.

The features are the checkpoint's own `get_image_features` / `get_text_features` on what its own image processor
and tokenizer make, so nothing of the model is re-implemented here: only how its inputs travel through the stages
(a tokenizer's several outputs, a NaFlex image's patches, mask and grid, each as one tensor per row)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import PipelineError, one_line
from pipeline.models import hf_checkpoints
from pipeline.models.hf_checkpoints import Family


def pooled(output: Any) -> torch.Tensor:
    """transformers 5's `get_*_features` return a model output whose `pooler_output` is the features; earlier
    releases return the tensor itself."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@dataclass
class Tokenizer:
    """The checkpoint's tokenizer as the stages call open_clip's: texts in, one LongTensor out, (texts, fields,
    context) with the fields the text tower takes (`Family.text_inputs`), every text padded to the context length,
    so a text's tokens never depend on the batch it is encoded in."""

    tokenizer: Any
    fields: tuple[str, ...]
    context_length: int

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        encoded = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.context_length,
                                 return_tensors="pt")
        return torch.stack([encoded[name].long() for name in self.fields], dim=1)

    def __len__(self) -> int:
        return len(self.tokenizer)


@dataclass
class ImageTransform:
    """The checkpoint's image processor on one PIL image (made RGB first, as open_clip's transforms do), as one
    tensor: its pixel values, or for NaFlex its patches with their mask as a last column and the patch grid in an
    extra last row, so the DataLoader batches it like any image."""

    processor: Any
    packed: bool = False

    def __call__(self, image) -> torch.Tensor:
        if getattr(image, "mode", "RGB") != "RGB":
            image = image.convert("RGB")
        out = self.processor(images=image, return_tensors="pt")
        if not self.packed:
            return out["pixel_values"][0]
        patches, mask, grid = out["pixel_values"][0], out["pixel_attention_mask"][0], out["spatial_shapes"][0]
        packed = torch.zeros(patches.shape[0] + 1, patches.shape[1] + 1, dtype=patches.dtype)
        packed[:-1, :-1], packed[:-1, -1], packed[-1, :2] = patches, mask.to(patches.dtype), grid.to(patches.dtype)
        return packed


def unpacked(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """`ImageTransform`'s NaFlex tensors, batched, as Siglip2Model's keyword arguments (the mask and grid are
    small integers, exact in float32)."""
    return {"pixel_values": images[:, :-1, :-1], "pixel_attention_mask": images[:, :-1, -1].round().to(torch.int32),
            "spatial_shapes": images[:, -1, :2].round().long()}


class TransformersCLIP(nn.Module):
    """A transformers CLIP-style model with open_clip's `encode_image` / `encode_text` signatures."""

    def __init__(self, model: nn.Module, family: Family):
        super().__init__()
        self.model, self.family = model, family

    @property
    def logit_scale(self) -> torch.Tensor:
        """The checkpoint's learned temperature, in log space as open_clip keeps it."""
        return self.model.logit_scale

    @property
    def has_pre_projection(self) -> bool:
        """CLIP-like towers project their pooled output (`visual_projection`); SigLIP's pooling head is the
        last layer, so its embedding is its pre-projection feature (as a ModifiedResNet's is)."""
        return self.family.projected and isinstance(getattr(self.model, "visual_projection", None), nn.Module)

    def image_inputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return unpacked(images) if self.family.packed_images else {"pixel_values": images}

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = pooled(self.model.get_image_features(**self.image_inputs(images)))
        return F.normalize(features, dim=-1) if normalize else features

    def encode_image_with_pre_projection(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pre-projection features, embedding) from one pass: the input `visual_projection` receives inside
        `get_image_features`, and what it returns."""
        captured: list[torch.Tensor] = []
        hook = self.model.visual_projection.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
        try:
            embedding = self.encode_image(images)
        finally:
            hook.remove()
        return captured[-1], embedding

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        inputs = dict(zip(self.family.text_inputs, tokens.unbind(dim=1)))
        features = pooled(self.model.get_text_features(**inputs))
        return F.normalize(features, dim=-1) if normalize else features


def context_length(tokenizer: Any, model: nn.Module, configured: int | None) -> int:
    """`model.context_length` where set, else the tokenizer's own limit within the text tower's positions."""
    positions = getattr(getattr(model.config, "text_config", None), "max_position_embeddings", None)
    if configured is not None:
        if positions is not None and configured > positions:
            raise PipelineError(f"model.context_length={configured} exceeds the text tower's {positions} positions")
        return configured
    limit = tokenizer.model_max_length
    if positions is not None and (limit is None or limit > positions):
        limit = positions
    return int(limit)


def load(cls: str, pretrained: str, cache_dir: str | None, configured_context: int | None,
         device: torch.device) -> tuple[TransformersCLIP, ImageTransform, Tokenizer]:
    """The checkpoint's model (fp32, as open_clip models are loaded; the protocols autocast), image transform and
    tokenizer, all read from its folder: nothing is fetched here."""
    import transformers

    family = hf_checkpoints.family(cls)
    folder = hf_checkpoints.checkpoint_folder(pretrained, cache_dir)
    model_class = getattr(transformers, family.cls, None)
    if model_class is None:
        raise PipelineError(f"transformers {transformers.__version__} has no {family.cls} ({family.title})")
    try:
        model, report = model_class.from_pretrained(folder, dtype=torch.float32, local_files_only=True,
                                                    output_loading_info=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        processor = transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, ImportError, RuntimeError) as exc:  # RuntimeError: weights of another shape
        raise PipelineError(f"the transformers checkpoint {pretrained} did not load as {family.cls} "
                            f"({type(exc).__name__}: {one_line(exc)})") from exc
    missing = sorted(report.get("missing_keys") or ())
    if missing:  # transformers would initialize them at random and only warn
        raise PipelineError(f"the transformers checkpoint {pretrained} lacks {len(missing)} of {family.cls}'s weights "
                            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): it is not a "
                            f"{family.cls} checkpoint (a model of its own code, such as rinna's Japanese CLIP?)")
    model = model.to(device).eval()
    return (TransformersCLIP(model, family), ImageTransform(processor, family.packed_images),
            Tokenizer(tokenizer, family.text_inputs, context_length(tokenizer, model, configured_context)))
