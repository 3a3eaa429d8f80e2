"""Train the bundled tiny open_clip model on synthetic shape/caption pairs with open_clip's contrastive loss."""
from __future__ import annotations

import logging
import math
import os
import random
from pathlib import Path

import open_clip
import torch
from tqdm import tqdm

from pipeline.models import register_project_architectures
from pipeline.offline import shapes

log = logging.getLogger(__name__)

ARCH = "tiny-clip"
# Captions the model learns from; the zero-shot prompt sets then probe how well it generalises.
TRAIN_TEMPLATES: list[str] = shapes.TEMPLATES + ["{c}", "a {c}.", "an image of a {c}.", "a small {c}.", "a big {c}."]


def train(steps: int = 1500, seed: int = 0, lr: float = 2e-3, pool_per_class: int = 300) -> torch.nn.Module:
    """Each batch holds one image per class with a random caption, so no caption is a false negative."""
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
    for _ in tqdm(range(steps), desc="training tiny-clip", unit="step", mininterval=2):
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
    return model.eval()


def ensure_checkpoint(path: Path, steps: int = 1500) -> Path:
    """Train once and save atomically; later calls find the finished file."""
    path = Path(path)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    model = train(steps=steps)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"state_dict": model.state_dict()}, tmp)
    tmp.replace(path)
    log.info("saved tiny-clip checkpoint to %s", path)
    return path
