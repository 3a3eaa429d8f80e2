"""A sweep's job configs composed from its template and option nodes equal Hydra's own composition of each job, over
the catalog's datasets and prompt sets, models, heads, protocols, value overrides and a global preset."""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

from pipeline.data import catalog
from pipeline.jobs.compose import Composer
from tests.conftest import CONF


def hydra_config(loader, master, overrides):
    composed = loader.load_sweep_config(master, list(overrides))
    with open_dict(composed):
        del composed["hydra"]
    return OmegaConf.to_container(composed, resolve=True)


def datasets() -> list[str]:
    found = sorted((CONF / "dataset").rglob("*.yaml"))
    return [str(path.relative_to(CONF / "dataset").with_suffix("")) for path in found]


@pytest.fixture(scope="module")
def loader_and_master():
    with initialize_config_dir(str(CONF), version_base="1.3"):
        master = compose("config", overrides=["suite=datacomp38"], return_hydra_config=True)
        yield GlobalHydra.instance().config_loader(), master


def test_every_dataset_and_prompt_set_composes_as_hydra_composes_it(loader_and_master):
    loader, master = loader_and_master
    composer = Composer(loader, master)
    prompts = sorted(path.stem for path in (CONF / "prompts").glob("*.yaml") if path.stem != "file")
    jobs = [["model=vit_b_32_openai", f"dataset={name}", "suite=datacomp38", "prompts=dataset"]
            for name in datasets() if name != "wds"]
    jobs += [["model=tiny", "dataset=cifar10", "suite=datacomp38", f"prompts={name}"] for name in prompts]
    for job in jobs:
        assert composer.compose(job) == hydra_config(loader, master, job), job
    # Hydra composed the template alone: every option was read from its file, every job put together
    assert composer.fallbacks == 1
    assert len(jobs) > 60 and len(catalog.entries()) > 60


def test_models_heads_protocols_and_values_compose_as_hydra_composes_them(loader_and_master, tiny_checkpoint):
    loader, master = loader_and_master
    composer = Composer(loader, master)
    jobs = [[f"model={model}", "dataset=cifar10", f"head={head}", f"protocol={protocol}", f"head.seed={seed}",
             f"model.pretrained={tiny_checkpoint if model == 'tiny' else 'openai'}"]
            for model in ("tiny", "vit_b_32_openai", "rn50_openai") for head in ("zeroshot", "linear_probe")
            for protocol in ("datacomp", "clip_benchmark") for seed in (0, 1)]
    for job in jobs:
        if "head=zeroshot" in job:
            job.remove(next(o for o in job if o.startswith("head.seed")))
    for job in jobs:
        assert composer.compose(job) == hydra_config(loader, master, job), job


def test_variations_that_reach_other_nodes_or_meet_in_one_compose_as_hydra_composes_them(loader_and_master, tmp_path):
    """`paths.outputs` moves every path that interpolates it (the tiny model's checkpoint, the tracking store);
    `data_root` moves every catalog dataset's root, which a swept dataset also sets: put together as a whole."""
    loader, master = loader_and_master
    composer = Composer(loader, master)
    jobs = [[f"model={model}", f"dataset={dataset}", f"paths.outputs={tmp_path / outputs}", f"data_root={root}"]
            for model in ("tiny", "vit_b_32_openai") for dataset in ("cifar10", "vtab/pets")
            for outputs in ("a", "b") for root in ("null", str(tmp_path / "mirror"))]
    for job in jobs:
        assert composer.compose(job) == hydra_config(loader, master, job), job
    assert composer.compose(jobs[1])["dataset"]["root"].startswith(str(tmp_path / "mirror"))
    assert composer.compose(jobs[2])["model"]["pretrained"] == f"{tmp_path / 'b'}/models/tiny-clip.pt"
    assert composer.fallbacks == 1


def test_what_it_cannot_put_together_hydra_composes(loader_and_master):
    loader, master = loader_and_master
    composer = Composer(loader, master)
    composer.compose(["model=tiny", "dataset=cifar10"])
    before = composer.fallbacks
    for job in (["model=tiny", "dataset=cifar10", "+extra=1"],           # an addition
                ["model=tiny", "dataset=cifar10", "model_set=blog13"],   # other keys than the template's
                ["model=tiny", "dataset=cifar10", "suite=datacomp38"]):  # a global preset the template lacks
        assert composer.compose(job) == hydra_config(loader, master, job)
    assert composer.fallbacks == before + 3
