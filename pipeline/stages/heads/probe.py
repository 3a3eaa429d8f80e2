"""The CLIP paper's linear probe (appendix A.3): scikit-learn's L-BFGS logistic regression, at most 1,000
iterations, its L2 strength λ searched on a validation split, then refitted.

The search visits λ = 10^(k/8) for k in −48…48 (1e-6…1e6, 8 steps per decade). It starts at the seven values
10^-6, 10^-4, …, 10^6 (every 16th k) and halves the interval around the best one until the step is one k: at each
halving the two midpoints beside the current peak are evaluated, and the best of the three becomes the new peak.
Ties in validation accuracy go to the smaller λ (the paper leaves ties open; this project fixes the rule).
scikit-learn's `C` is 1/λ. No library implements this search, hence the hand-written loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

K_MIN, K_MAX, STEPS_PER_DECADE = -48, 48, 8
START_STEP = 16  # the paper's starting grid: every second decade


def lam(k: int) -> float:
    """λ at grid position k."""
    return 10.0 ** (k / STEPS_PER_DECADE)


@dataclass(frozen=True)
class Search:
    """The chosen grid position and every (k, validation accuracy) the search evaluated, in visiting order."""

    best_k: int
    curve: tuple[tuple[int, float], ...]

    @property
    def best_lambda(self) -> float:
        return lam(self.best_k)

    @property
    def best_c(self) -> float:
        return 1.0 / self.best_lambda


def search(accuracy_at: Callable[[float], float]) -> Search:
    """Search λ with `accuracy_at(λ)` (validation accuracy of a model fitted with that λ)."""
    seen: dict[int, float] = {}

    def visit(k: int) -> float:
        if k not in seen:
            seen[k] = float(accuracy_at(lam(k)))
        return seen[k]

    def better(a: int, b: int) -> int:
        """The better of two grid positions: higher accuracy, then the smaller λ."""
        return a if (visit(a), -a) > (visit(b), -b) else b

    peak = K_MIN
    for k in range(K_MIN, K_MAX + 1, START_STEP):
        peak = better(k, peak)
    step = START_STEP
    while step > 1:
        step //= 2
        for k in (peak - step, peak + step):
            if K_MIN <= k <= K_MAX:
                peak = better(k, peak)
    return Search(peak, tuple(seen.items()))


def fit(features: np.ndarray, labels: np.ndarray, lam_value: float, seed: int = 0):
    """scikit-learn's L-BFGS logistic regression with C = 1/λ, at most 1,000 iterations (the paper's settings)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1.0 / lam_value, max_iter=1000, solver="lbfgs", random_state=seed)
    return model.fit(features, labels)


def validation_accuracy(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                        seed: int = 0) -> Callable[[float], float]:
    """`accuracy_at(λ)` for `search`: fit on `train`, score top-1 accuracy on `val`."""

    def accuracy_at(lam_value: float) -> float:
        model = fit(*train, lam_value, seed)
        return float(np.mean(model.predict(val[0]) == val[1]))

    return accuracy_at


@dataclass(frozen=True)
class ProbeResult:
    """Test logits, one column per class of the dataset (-inf for a class the probe never saw), and the search."""

    logits: np.ndarray
    search: Search
    examples_per_class: int


def class_logits(model, features: np.ndarray, n_classes: int) -> np.ndarray:
    """scikit-learn's decision values as a (n, n_classes) matrix over the dataset's class indices: a binary model's
    single column becomes (-d, d), and classes absent from the fit get -inf."""
    scores = model.decision_function(features)
    if scores.ndim == 1:
        scores = np.stack([-scores, scores], axis=1)
    logits = np.full((len(features), n_classes), -np.inf, dtype=np.float64)
    logits[:, model.classes_] = scores
    return logits


def run(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray, n_classes: int,
        split, refit_on_validation: bool, seed: int = 0) -> ProbeResult:
    """Search λ on `split` (a `heads.splits.ProbeSplit`), refit (on fit + validation for the full probe, on the
    K shots alone for a k-shot probe), and score the test features."""
    fit_set = (train_features[split.fit], train_labels[split.fit])
    val_set = (train_features[split.validation], train_labels[split.validation])
    found = search(validation_accuracy(fit_set, val_set, seed))
    final = np.concatenate([split.fit, split.validation]) if refit_on_validation else split.fit
    model = fit(train_features[final], train_labels[final], found.best_lambda, seed)
    per_class = int(np.bincount(train_labels[final]).max())
    return ProbeResult(class_logits(model, test_features, n_classes), found, per_class)
