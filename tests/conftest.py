"""Shared fixtures: the bundled offline assets (built once under outputs/) and real SQLite MLflow stores."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra_plugins.clip_tables import launcher

import pipeline  # noqa: F401  (registers the `abspath` resolver)
from pipeline.offline.captions import ensure_captions
from pipeline.offline.compositional import ensure_compositional
from pipeline.offline.shapes import ensure_shapes
from pipeline.offline.tiny_clip import ensure_checkpoint
from pipeline.offline.tiny_coca import ensure_coca
from pipeline.store import tracking

REPO = Path(__file__).resolve().parents[1]
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two test files at once on CI's two cores: each test's processes compute on one thread, so
    # the two never fight over the cores (keys and results do not depend on the thread count).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
launcher.install()  # as pipeline/__main__.py does: the grouped launchers' presets
CONF = REPO / "conf"
FIXTURES = REPO / "tests" / "fixtures"  # small files the tests read (see its README)
ASSETS = REPO / "outputs"


@pytest.fixture(scope="session")
def shapes_root() -> Path:
    return ensure_shapes(ASSETS / "data" / "shapes")


@pytest.fixture(scope="session")
def compositional_root() -> Path:
    """The bundled SugarCrepe and Winoground stand-ins, a mirror for `data_root=`."""
    root = ASSETS / "data" / "compositional"
    ensure_compositional(root)
    return root


@pytest.fixture(scope="session")
def captions_root() -> Path:
    """The bundled MSCOCO caption-set stand-in, a mirror for `data_root=`."""
    root = ASSETS / "data" / "captions"
    ensure_captions(root)
    return root


@pytest.fixture(scope="session")
def tiny_coca_checkpoint() -> Path:
    return ensure_coca(ASSETS / "models" / "tiny-coca.pt")


TRAINING_RUN = ASSETS / "models" / "tiny-clip-run" / "checkpoints"  # its checkpoints every 300 steps


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    return ensure_checkpoint(ASSETS / "models" / "tiny-clip.pt", snapshots=TRAINING_RUN)


@pytest.fixture
def store(tmp_path: Path) -> tracking.TrackingStore:
    return tracking.connect(f"sqlite:///{tmp_path}/mlflow.db", "test", str(tmp_path / "artifacts"))


def compose_config(*overrides: str, config_name: str = "config", return_hydra_config: bool = False):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)


def asset_overrides(shapes_root: Path, tiny_checkpoint: Path) -> list[str]:
    return [f"dataset.root={shapes_root}", f"model.pretrained={tiny_checkpoint}"]


def run_pipeline(workdir: Path, *args: str, module: str = "pipeline") -> subprocess.CompletedProcess:
    """Run the Hydra app in a subprocess with its outputs (store, sweeps) under `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CLIP_TABLES_OUTPUTS": str(workdir / "outputs"), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=600)
