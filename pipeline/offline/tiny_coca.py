"""The bundled tiny CoCa: open_clip's CoCa at the size of the tiny CLIP (`pipeline/models/configs/tiny-coca.json`),
with random weights, saved as a checkpoint in open_clip's layout, so the captioning task runs offline."""
from __future__ import annotations

import logging
from pathlib import Path

import open_clip
import torch

from pipeline.models.loading import register_project_architectures
from pipeline.offline.tiny_clip import save_checkpoint

log = logging.getLogger(__name__)

ARCH = "tiny-coca"


def build(seed: int = 0) -> torch.nn.Module:
    """A random tiny CoCa, the same for a seed. open_clip leaves the caption decoder's output projection as
    `torch.empty` left it (a trained checkpoint overwrites it; the decoder's `init_parameters`, never called, would
    fail), so it is drawn here with the std that method names: otherwise the captions would depend on whatever
    the memory held."""
    register_project_architectures()
    torch.manual_seed(seed)
    model = open_clip.create_model(ARCH)
    decoder = model.text_decoder
    torch.nn.init.normal_(decoder.text_projection, std=decoder.width ** -0.5)
    return model.eval()


def ensure_coca(path: Path, seed: int = 0) -> Path:
    """Write the checkpoint once, atomically (every cache key holds its hash, so it is never rewritten)."""
    path = Path(path)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"state_dict": build(seed).state_dict()}, path)
    log.info("saved %s checkpoint to %s", ARCH, path)
    return path
