"""Which computations run in reduced precision: a protocol's per-task autocast flags resolved for one device.

A protocol config (`conf/protocol/`) says, per task, whether the image tower, the text tower and the
logits (similarities) sit inside an autocast block in the reference code, and on which device types that
autocast is active. `recipe` turns that into the dtype each stage effectively computes in, which is also
what each stage's cache key carries.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ContextManager, Mapping

import numpy as np

from pipeline.errors import PipelineError

if TYPE_CHECKING:  # torch is imported where tensors are made: a served job makes none
    import torch

FP32 = "fp32"
# torch's default autocast dtype per device type: float16 on CUDA, bfloat16 on CPU.
AMP_LABELS = {"cuda": "amp-fp16", "cpu": "amp-bf16"}
TORCH_DTYPES = {FP32: "float32", "amp-fp16": "float16", "amp-bf16": "bfloat16"}  # names of torch's dtypes
TOWERS = ("image", "text", "logits")
MODEL_PRECISIONS = ("fp32", "amp")


@dataclass(frozen=True)
class Recipe:
    """The effective precision of each computation: `fp32`, `amp-fp16` or `amp-bf16`."""

    image: str = FP32
    text: str = FP32
    logits: str = FP32


FP32_RECIPE = Recipe()


def recipe(protocol: Mapping[str, Any], task: str, device_type: str, model_precision: str = "amp") -> Recipe:
    """The precision of each tower and of the logits for `task` on `device_type` under `protocol`.

    `model_precision="fp32"` forces fp32 whatever the protocol; `"amp"` lets the protocol decide.
    """
    if model_precision not in MODEL_PRECISIONS:
        raise PipelineError(f"model.precision={model_precision!r} is not one of {MODEL_PRECISIONS}")
    flags = (protocol.get("autocast") or {}).get(task)
    if flags is None:
        raise PipelineError(f"protocol {protocol.get('name')!r} says nothing about task {task!r}; add it under autocast:")
    active = device_type in (protocol.get("autocast_devices") or ())
    if model_precision == "fp32" or not active:
        return FP32_RECIPE
    if device_type not in AMP_LABELS:
        raise PipelineError(f"no autocast dtype known for device type {device_type!r}; use protocol=fp32")
    amp = AMP_LABELS[device_type]
    image, text = (amp if flags[t] else FP32 for t in ("image", "text"))
    logits = amp if flags["logits"] else FP32
    if logits == FP32 and device_type == "cpu" and FP32 not in (image, text):
        # CPU autocast has no fp32 rule for `norm`, so embeddings normalized inside the towers stay bfloat16 and
        # their product, though outside autocast, is bfloat16 too. CUDA autocast computes `norm` in fp32, so
        # there the towers hand fp32 embeddings to a product outside autocast.
        logits = amp
    return Recipe(image, text, logits)


def autocast(device: torch.device, label: str) -> ContextManager:
    """Autocast for `label` on `device` (disabled for fp32)."""
    import torch

    if label == FP32:
        return nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, TORCH_DTYPES[label]))


# -- features keep the dtype the tower produced them in --------------------------------------------------
DTYPE_SUFFIX = "__dtype"


def dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def with_dtype(name: str, tensor: torch.Tensor) -> dict[str, np.ndarray]:
    """`tensor` as float32 (exact for fp16/bf16 values) plus the dtype it had, so it can be restored bit for bit."""
    return {name: tensor.float().cpu().numpy(), name + DTYPE_SUFFIX: np.array(dtype_name(tensor))}


def restored(arrays: Mapping[str, np.ndarray], name: str, device: torch.device) -> torch.Tensor:
    """The tensor saved by `with_dtype`, back in its original dtype on `device` (fp32 when none was recorded)."""
    import torch

    dtype = getattr(torch, str(arrays[name + DTYPE_SUFFIX])) if name + DTYPE_SUFFIX in arrays else torch.float32
    return torch.from_numpy(np.ascontiguousarray(arrays[name])).to(device=device, dtype=dtype)


def normalized(features: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    return F.normalize(features, dim=-1)
