"""The Hydra app: `python -m pipeline [-m] model=... dataset=... prompts=... metric=...`."""
from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from pipeline.cli import reported
from pipeline.job import run_job


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
@reported
def main(cfg: DictConfig) -> float:
    result = run_job(cfg, output_dir=HydraConfig.get().runtime.output_dir)
    return result.value


if __name__ == "__main__":
    main()
