"""Zero-shot CLIP benchmark tables: Hydra configs, embed -> classify -> score -> aggregate, cached in MLflow."""
import os
from pathlib import Path

from omegaconf import OmegaConf

from pipeline.sources import dataset_root

# Lets conf/paths/default.yaml make every location absolute once, relative to the launch directory.
OmegaConf.register_new_resolver("abspath", lambda path: str(Path(path).expanduser().resolve()), replace=True)
# Lets each catalog dataset point at its public copy, or at a local mirror when `data_root` is set.
OmegaConf.register_new_resolver("dataset_root", dataset_root, replace=True)
# A cache hit downloads a few small files; MLflow's per-download progress bars would bury the one line per stage.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class PipelineError(RuntimeError):
    """A bad input or environment: the message says what was wrong and what to do."""
