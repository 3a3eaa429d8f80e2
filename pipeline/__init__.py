"""Zero-shot CLIP benchmark tables: Hydra configs, embed -> classify -> score -> aggregate, cached in MLflow."""
import os
import warnings
from pathlib import Path

from omegaconf import OmegaConf

from pipeline.sources import dataset_root

# Lets conf/paths/default.yaml make every location absolute once, relative to the launch directory.
OmegaConf.register_new_resolver("abspath", lambda path: str(Path(path).expanduser().resolve()), replace=True)
# Lets each catalog dataset point at its public copy, or at a local mirror when `data_root` is set.
OmegaConf.register_new_resolver("dataset_root", dataset_root, replace=True)
# How many GPUs this process sees: the submitit_local launcher gives its jobs that many (it hides them otherwise).
OmegaConf.register_new_resolver("visible_gpus", lambda: __import__("torch").cuda.device_count(), replace=True)
# conf/hydra/launcher/submitit_{slurm,local}.yaml replace the plugin's presets of the same name, so Hydra 1.3
# validates them against the plugin's schema (typed fields, which is what we want) and warns that it does. Each
# preset lists every field, so it stays complete should a later Hydra stop matching schemas by name.
warnings.filterwarnings("ignore", message=r"\n'hydra/launcher/submitit_\w+' is validated against ConfigStore schema")
# A cache hit downloads a few small files; MLflow's per-download progress bars would bury the one line per stage.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class PipelineError(RuntimeError):
    """A bad input or environment: the message says what was wrong and what to do."""


def one_line(error: BaseException | str) -> str:
    """An error's message on one line: a DataLoader worker's re-raised error carries the worker's whole
    traceback, whose last line is the actual error; other multi-line messages keep their first line."""
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[-1] if "Traceback" in text else lines[0]
