"""Config composition through Hydra's compose API."""
from pathlib import Path

import pytest
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from tests.conftest import CONF, compose_config

GROUPS = {"model": 3, "dataset": 2, "prompts": 6, "metric": 5, "tracking": 2}


def test_defaults_compose_to_the_offline_demo():
    cfg = compose_config()
    assert (cfg.model.name, cfg.dataset.name, cfg.prompts.name, cfg.metric.name) == ("tiny", "shapes", "dataset", "acc1")
    assert Path(cfg.paths.outputs).is_absolute()
    assert cfg.tracking.uri == f"sqlite:///{cfg.paths.outputs}/mlflow.db"
    assert cfg.dataset.root == f"{cfg.paths.outputs}/data/shapes"


@pytest.mark.parametrize("group", GROUPS)
def test_every_choice_composes(group):
    choices = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    assert len(choices) >= GROUPS[group]
    for choice in choices:
        cfg = compose_config(f"{group}={choice}")
        assert cfg[group].get("name", choice) is not None


def test_openai_weights_use_quickgelu_architectures():
    cfg = compose_config("model=vit_b_32_openai")
    assert (cfg.model.arch, cfg.model.pretrained) == ("ViT-B-32-quickgelu", "openai")
    cfg = compose_config("model=vit_b_32_laion2b")
    assert (cfg.model.arch, cfg.model.pretrained) == ("ViT-B-32", "laion2b_s34b_b79k")


def test_generic_wds_needs_name_and_root():
    cfg = compose_config("dataset=wds")
    assert OmegaConf.is_missing(cfg.dataset, "name") and OmegaConf.is_missing(cfg.dataset, "root")
    cfg = compose_config("dataset=wds", "dataset.name=cifar10", "dataset.root=/data/wds_cifar10")
    assert (cfg.dataset.name, cfg.dataset.root, cfg.dataset.split) == ("cifar10", "/data/wds_cifar10", "test")


def test_unknown_choice_lists_the_valid_ones():
    with pytest.raises(MissingConfigException, match="tiny"):
        compose_config("model=nope")


def test_outputs_move_with_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIP_TABLES_OUTPUTS", str(tmp_path))
    assert compose_config().paths.models == f"{tmp_path}/models"


def test_aggregate_config_composes():
    cfg = compose_config("metric=main", config_name="aggregate")
    assert cfg.metric.name == "main" and cfg.output_dir.endswith("/tables")
