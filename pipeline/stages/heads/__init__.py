"""Classifier heads between the embed and score stages: the zero-shot classifier (`pipeline/stages/classify.py`) and the
CLIP paper's linear probe (`linear_probe.py`), chosen by the `head/` config group."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from pipeline.errors import PipelineError

ZEROSHOT, LINEAR_PROBE = "zeroshot", "linear_probe"
HEADS = (ZEROSHOT, LINEAR_PROBE)
FEATURES = ("pre_projection", "embedding")
NOT_APPLICABLE = "-"  # the k_shot and seed labels of a zero-shot result
ALL_SHOTS = "all"     # the k_shot label of a probe fitted on the whole train split


@dataclass(frozen=True)
class HeadSpec:
    """A `head/` config: which head, and for the probe its shots, seed, features and carved validation share."""

    name: str = ZEROSHOT
    k_shot: int | None = None
    seed: int = 0
    features: str = "pre_projection"
    val_fraction: float = 0.2

    @classmethod
    def from_cfg(cls, cfg: Any) -> "HeadSpec":
        plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg or {})
        name = plain.get("name", ZEROSHOT)
        if name not in HEADS:
            raise PipelineError(f"head={name!r} is not one of {HEADS}")
        if name == ZEROSHOT:
            return cls()
        k_shot, seed = plain.get("k_shot"), plain.get("seed", 0)
        if k_shot is not None and (not isinstance(k_shot, int) or isinstance(k_shot, bool) or k_shot < 1):
            raise PipelineError(f"head.k_shot={k_shot!r} must be a positive number of examples per class, or null")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise PipelineError(f"head.seed={seed!r} must be an integer")
        features = plain.get("features", "pre_projection")
        if features not in FEATURES:
            raise PipelineError(f"head.features={features!r} is not one of {FEATURES}")
        val_fraction = plain.get("val_fraction", 0.2)
        if not isinstance(val_fraction, (int, float)) or not 0 < float(val_fraction) < 1:
            raise PipelineError(f"head.val_fraction={val_fraction!r} must lie strictly between 0 and 1")
        return cls(name, k_shot, seed, features, float(val_fraction))

    @property
    def is_probe(self) -> bool:
        return self.name == LINEAR_PROBE

    def labels(self) -> dict[str, str]:
        """The tags a job run carries: `head`, `k_shot`, `seed` (and the probe's `features`)."""
        if not self.is_probe:
            return {"head": self.name, "k_shot": NOT_APPLICABLE, "seed": NOT_APPLICABLE}
        return {"head": self.name, "k_shot": ALL_SHOTS if self.k_shot is None else str(self.k_shot),
                "seed": str(self.seed), "features": self.features}

    def key_material(self, provided_validation: bool) -> dict[str, Any]:
        """What changes a probe's result: with a provided validation split the carved share never applies, and
        the seed only draws shots (L-BFGS itself is deterministic), so sweeping it there reuses one run."""
        material: dict[str, Any] = {"k_shot": self.k_shot, "features": self.features}
        if not provided_validation:
            material["val_fraction"] = self.val_fraction
        if not provided_validation or self.k_shot is not None:
            material["seed"] = self.seed
        return material
