"""Train the bundled tiny open_clip model on synthetic shape/caption pairs with open_clip's contrastive loss."""
from __future__ import annotations

import logging
import math
import os
import random
from pathlib import Path
from typing import Callable

import open_clip
import torch
from tqdm import tqdm

from pipeline.models.loading import register_project_architectures
from pipeline.offline import shapes

log = logging.getLogger(__name__)

ARCH = "tiny-clip"
SNAPSHOT_EVERY = 300
# Captions the model learns from; the zero-shot prompt sets then probe how well it generalises.
TRAIN_TEMPLATES: list[str] = shapes.TEMPLATES + ["{c}", "a {c}.", "an image of a {c}.", "a small {c}.", "a big {c}."]


def train(steps: int = 1500, seed: int = 0, lr: float = 2e-3, pool_per_class: int = 300,
          snapshot: Callable[[int, torch.nn.Module], None] | None = None, every: int = SNAPSHOT_EVERY) -> torch.nn.Module:
    """Each batch holds one image per class with a random caption, so no caption is a false negative.
    `snapshot(step, model)` is called every `every` steps (the checkpoints a training-curve sweep evaluates)."""
    register_project_architectures()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(ARCH, pretrained=None)
    tokenizer = open_clip.get_tokenizer(ARCH)
    # The 49408-token embedding is most of the parameters; keeping it at its random init makes a
    # step ~2x cheaper on CPU, and the text transformer still separates the few words used here.
    model.token_embedding.requires_grad_(False)
    loss_fn = open_clip.ClipLoss()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.05)
    warmup = steps // 20
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup))),
    )
    classes = shapes.CLASSNAMES
    # Drawing is slower than a training step, so draw a fixed pool once and sample from it.
    pool = torch.stack([torch.stack([preprocess(shapes.draw_shape(label, rng)) for _ in range(pool_per_class)])
                        for label in range(len(classes))])
    labels = list(range(len(classes)))
    model.train()
    for step in tqdm(range(1, steps + 1), desc="training tiny-clip", unit="step", mininterval=2):
        images = pool[labels, [rng.randrange(pool_per_class) for _ in labels]]
        captions = tokenizer([rng.choice(TRAIN_TEMPLATES).format(c=classes[label]) for label in labels])
        image_features, text_features, logit_scale = model(images, captions)
        loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if snapshot is not None and step % every == 0:
            snapshot(step, model.eval())
            model.train()
    return model.eval()


def snapshot_paths(folder: Path, steps: int = 1500, every: int = SNAPSHOT_EVERY) -> list[Path]:
    """The training run's checkpoints, named as a training-curve sweep reads them (`step_<n>.pt`)."""
    return [Path(folder) / f"step_{step}.pt" for step in range(every, steps + 1, every)]


def save_checkpoint(state: dict, path: Path) -> None:
    """`torch.save` into a scratch file renamed into place, so no reader ever finds half a checkpoint."""
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(state, tmp)
    tmp.replace(path)


def ensure_checkpoint(path: Path, steps: int = 1500, snapshots: Path | None = None) -> Path:
    """Train once and save atomically; later calls find the finished file. With `snapshots`, the same training
    also saves its checkpoints every SNAPSHOT_EVERY steps there (trained again only if they are missing; the
    final checkpoint is never overwritten, since every cache key holds its hash)."""
    path = Path(path)
    wanted = snapshot_paths(snapshots, steps) if snapshots is not None else []
    if path.exists() and all(p.exists() for p in wanted):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if snapshots is not None:
        Path(snapshots).mkdir(parents=True, exist_ok=True)
    save_step = lambda step, model: save_checkpoint({"step": step, "state_dict": model.state_dict()}, Path(snapshots) / f"step_{step}.pt")
    model = train(steps=steps, snapshot=save_step if snapshots is not None else None)
    if not path.exists():
        save_checkpoint({"state_dict": model.state_dict()}, path)
        log.info("saved tiny-clip checkpoint to %s", path)
    return path
