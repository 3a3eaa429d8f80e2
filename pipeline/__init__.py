"""CLIP benchmark tables as an experiment pipeline: Hydra configs -> stages -> artifacts cached in MLflow -> reports.

The package is grouped by role; a group imports only from the groups listed before it (`tests/test_package.py`
checks it):

    errors          PipelineError and one-line reporting: what every part shares
    data, store     datasets, readers, remote copies, the catalog, prompt sets | the tracking store, the
                    content-keyed cache, artifacts, claims, links into the MLflow UI (neither imports the other)
    models          open_clip models, their fingerprints and the precision recipes
    stages          embed -> heads (zero-shot classifier, linear probe) / classify -> score (metrics, intervals),
                    generate and explain: task-agnostic, one contract (StageContext in, StageResult out)
    tasks           the task types, one module each (what a kind of evaluation encodes, computes, scores), and
                    their registry
    reports         score records, tables, layouts, plots and report.html, and the published reference data
    jobs, lab,      a job's typed spec, one job of a sweep, its job run, the sweep run and its plan |
    offline         the lab's tracking server, its PostgreSQL cluster, the UI and a one-node SLURM | the bundled
                    offline assets (none imports another)
    entry points    `python -m pipeline`, `python -m pipeline.aggregate`, hydra_plugins/ (the planning sweeper
                    and the SLURM launchers) and bench/ (`make bench`)

This module only wires the config: it registers the OmegaConf resolvers the configs use.
"""
import os
import warnings
from pathlib import Path

from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def user_cache() -> Path:
    """The project's folder in the user's cache (`$XDG_CACHE_HOME`, else ~/.cache), which `make clean` leaves alone:
    checkpoints' remembered hashes, parameter counts, the tracking stores' indexes."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clip-tables"


def _dataset_root(data_root: str | None, source: str, key: str) -> str:
    from pipeline.data.sources import dataset_root

    return dataset_root(data_root, source, key)


# Lets conf/paths/default.yaml make every location absolute once, relative to the launch directory.
OmegaConf.register_new_resolver("abspath", lambda path: str(Path(path).expanduser().resolve()), replace=True)
# Lets each catalog dataset point at its public copy, or at a local mirror when `data_root` is set.
OmegaConf.register_new_resolver("dataset_root", _dataset_root, replace=True)
# How many GPUs this process sees: the submitit_local launcher gives its jobs that many (it hides them otherwise).
OmegaConf.register_new_resolver("visible_gpus", lambda: __import__("torch").cuda.device_count(), replace=True)
# conf/hydra/launcher/submitit_{slurm,local}.yaml replace the plugin's presets of the same name, so Hydra 1.3
# validates them against the plugin's schema (typed fields, which is what we want) and warns that it does. Each
# preset lists every field, so it stays complete should a later Hydra stop matching schemas by name.
warnings.filterwarnings("ignore", message=r"\n'hydra/launcher/submitit_\w+' is validated against ConfigStore schema")
# A cache hit downloads a few small files; MLflow's per-download progress bars would bury the one line per stage.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Against a tracking server MLflow prints "View run ... / View experiment ..." as each run ends: 8 lines a job. The
# report links every run, and `make ui` prints the sweep's view; =false brings the lines back.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
# MLflow's usage telemetry starts at `import mlflow`: a thread fetching its config unsets an environment variable
# when the fetch fails (always, offline) while another thread's request iterates os.environ, and that request
# fails with a KeyError (docs/lab.md). A lab's workers have no reason to send it. MLflow reads this once, when it is
# first imported, so it is set here, before any module of this package imports mlflow; child processes (joblib,
# submitit, the tracking server) inherit it. A user's own setting wins.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
