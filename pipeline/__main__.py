"""The Hydra app: `python -m pipeline [-m] model=... dataset=... prompts=... metric=...`."""
from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra_plugins.clip_tables import launcher
from omegaconf import DictConfig

from pipeline import CONF_DIR
from pipeline.errors import reported
from pipeline.jobs.scoring import run_job
from pipeline.jobs.spec import JobSpec

launcher.install()  # the submitit launchers that group jobs into tasks, and their presets


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
@reported
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    sweep_dir = Path(hydra_cfg.sweep.dir) if in_sweep else None
    spec = JobSpec.from_cfg(cfg)  # the one reader of the job's config: jobs take its typed spec
    if spec.explain is not None:
        from pipeline.jobs.explaining import run_explain_job  # torch and the model, which only explaining needs

        run_explain_job(spec, output_dir=Path(hydra_cfg.runtime.output_dir), sweep_dir=sweep_dir)
        return None
    return run_job(spec, output_dir=hydra_cfg.runtime.output_dir, sweep_dir=sweep_dir).value


if __name__ == "__main__":
    main()
