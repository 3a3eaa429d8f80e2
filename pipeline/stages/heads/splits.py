"""Which training examples a probe sees (issue 10): a stratified validation split carved out of train when the
dataset provides none, and K shots per class drawn from what remains. Seeded, so a seed sweep is reproducible."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import PipelineError


@dataclass(frozen=True)
class ProbeSplit:
    """Indices into the train features (fit, validation) and how validation was obtained."""

    fit: np.ndarray
    validation: np.ndarray
    validation_source: str  # "provided" or "carved"
    seed: int


def carve_validation(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, validation) indices: `fraction` of every class goes to validation (scikit-learn's
    splitter). A class with a single example cannot be on both sides, so it stays in train."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    single = np.isin(labels, np.flatnonzero(np.bincount(labels) == 1))
    rest = indices[~single]
    try:
        train, val = train_test_split(rest, test_size=fraction, random_state=seed, stratify=labels[rest])
    except ValueError as exc:
        raise PipelineError(f"cannot carve a stratified {fraction:.0%} validation split from {len(labels)} training "
                            f"examples of {len(np.unique(labels))} classes ({exc}); raise head.val_fraction, or name "
                            f"the dataset's own validation split with dataset.validation_split") from exc
    return np.sort(np.concatenate([train, indices[single]])), np.sort(val)


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
        everything = np.arange(len(train_labels))
        fit, validation = everything[~np.isin(everything, provided_validation)], np.sort(provided_validation)
        source = "provided"
    else:
        (fit, validation), source = carve_validation(train_labels, val_fraction, seed), "carved"
    if k_shot is not None:
        fit = draw_shots(train_labels, fit, k_shot, seed)
    return ProbeSplit(fit, validation, source, seed)
