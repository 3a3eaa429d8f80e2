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


def one_line(error: BaseException | str) -> str:
    """An error's message on one line: a DataLoader worker's re-raised error carries the worker's whole
    traceback, whose last line is the actual error; other multi-line messages keep their first line."""
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[-1] if "Traceback" in text else lines[0]
