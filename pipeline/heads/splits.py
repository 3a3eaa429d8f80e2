"""Which training examples a probe sees (issue 10): a stratified validation split carved out of train when the
dataset provides none, and K shots per class drawn from what remains. Seeded, so a seed sweep is reproducible."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ProbeSplit:
    """Indices into the train features (fit, validation) and how validation was obtained."""

    fit: np.ndarray
    validation: np.ndarray
    validation_source: str  # "provided" or "carved"
    seed: int


def carve_validation(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, validation) indices: `fraction` of every class, at least one example, goes to validation
    (scikit-learn's splitter, which needs two examples of a class to put one on each side)."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    train, val = train_test_split(indices, test_size=fraction, random_state=seed, stratify=labels)
    return np.sort(train), np.sort(val)


def draw_shots(labels: np.ndarray, pool: np.ndarray, k: int, seed: int) -> np.ndarray:
    """K indices per class from `pool` (all of a class when it has fewer), drawn with `seed`."""
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(members, size=min(k, len(members)), replace=False)
              for cls in np.unique(labels[pool]) for members in [pool[labels[pool] == cls]]]
    return np.sort(np.concatenate(chosen))


def probe_split(train_labels: np.ndarray, k_shot: int | None, val_fraction: float, seed: int,
                provided_validation: np.ndarray | None = None) -> ProbeSplit:
    """The issue's protocol: validation set aside first (provided, or carved from train), then the K shots drawn
    from the rest of train; without K the whole rest of train is fitted."""
    if provided_validation is not None:
        fit, validation, source = np.arange(len(train_labels)), provided_validation, "provided"
    else:
        (fit, validation), source = carve_validation(train_labels, val_fraction, seed), "carved"
    if k_shot is not None:
        fit = draw_shots(train_labels, fit, k_shot, seed)
    return ProbeSplit(fit, validation, source, seed)
