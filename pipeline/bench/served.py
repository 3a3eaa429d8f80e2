"""Benchmark 8: open_clip's 121 x 38 suite fully cached. A synthetic store holds the score of every one of its 4,598
jobs (121 open_clip presets, 38 small synthetic webdatasets in DataComp's layout, keyed as each job keys them, the
way benchmark 6 grows a store), and the sweep is timed twice: planned (`plan=true`) and run, every job served from
its plan. Benchmark 9: a table over every result of stores of 1,000 / 10,000 / 50,000 job runs, through the index
against MLflow's search run by run."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from mlflow.utils.file_utils import local_file_uri_to_path

from pipeline import CONF_DIR
from pipeline.bench.processes import PYTHON, Dataset, dataset_configs, seconds
from pipeline.stages.score import ORDER_TAG, uncertainty
from pipeline.store import bulk, tracking
from pipeline.store.artifacts import CHECKSUM_TAG, sha256_file

DATASETS = 38


def presets() -> list[str]:
    return sorted(f"openclip/{path.stem}" for path in (CONF_DIR / "model" / "openclip").glob("*.yaml"))


def suite(scratch: Path, count: int = DATASETS) -> tuple[Path, list[str]]:
    """`count` synthetic test splits of 24 images, and the Hydra search path holding their configs."""
    from pipeline.bench import fixtures

    sets = [Dataset(f"suite{i:02d}", fixtures.shapes(scratch / f"suite{i:02d}", 24, seed=100 + i, shards=1))
            for i in range(count)]
    return dataset_configs(scratch, sets), [s.name for s in sets]


def arguments(conf: Path, names: list[str], models: list[str]) -> list[str]:
    return ["-m", f"hydra.searchpath=[file://{conf}]", f"model={','.join(models)}", f"dataset={','.join(names)}",
            "prompts=dataset", "protocol=fp32", "device=cpu"]


def score_keys(conf: Path, store: tracking.TrackingStore, models: list[str], names: list[str], overrides: list[str]
               ) -> list[tuple[object, str]]:
    """(job, score key) of every job of the sweep, as its plan keys them."""
    from hydra_plugins.clip_tables import launcher
    from hydra_plugins.clip_tables.sweeper import keyed

    launcher.install()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        master = compose("config", overrides=[f"hydra.searchpath=[file://{conf}]", f"tracking.uri={store.uri}"],
                         return_hydra_config=True)
        jobs = [[f"model={model}", f"dataset={name}", *overrides] for model in models for name in names]
        planned = keyed(GlobalHydra.instance().config_loader(), master, jobs)
    return [(job.job, job.keys["score"]) for job in planned]


def cached_store(outputs: Path, conf: Path, models: list[str], names: list[str]) -> tracking.TrackingStore:
    """A store holding the score of every job of the suite, FINISHED and servable, with the bootstrap replicates its
    intervals are drawn from (checksummed, as the score stage writes them), written at once."""
    store = tracking.connect(f"sqlite:///{outputs}/mlflow.db", "clip-tables", str(outputs / "mlartifacts"))
    keyed = score_keys(conf, store, models, names, ["prompts=dataset", "protocol=fp32", "device=cpu"])
    metrics = {"acc1": 0.5, "acc5": 0.9, "mean_per_class_recall": 0.5, "acc1_adjusted": 0.45, "n": 24.0,
               "num_samples": 24.0, "num_classes": 12.0, "ties": 0.0, "ci_low/acc1": 0.3, "ci_high/acc1": 0.7}
    files = replicate_files(outputs / "replicates")
    checksums = {f"{CHECKSUM_TAG}{path.name}": sha256_file(path) for path in files}
    runs = [bulk.NewRun(f"score:{job.tags['model']}:{job.tags['dataset']}:dataset",
                        {**job.tags, "stage": "score", "cache_key": key, "cache_store": "true", ORDER_TAG: "synthetic",
                         "main_metric": "acc1", "input.embed_image": "synthetic", "input.text": "synthetic",
                         "input.classify": "synthetic", **checksums}, {}, metrics) for job, key in keyed]
    artifacts = Path(local_file_uri_to_path(store.client.get_experiment(store.experiment_id).artifact_location))
    for run_id in bulk.write(store, runs):
        folder = artifacts / run_id / "artifacts"
        folder.mkdir(parents=True)
        for path in files:
            shutil.copyfile(path, folder / path.name)
    return store


def replicate_files(folder: Path) -> list[Path]:
    """A score's bootstrap replicates as the score stage saves them (1,000 resamples of one metric)."""
    folder.mkdir(parents=True, exist_ok=True)
    replicates = np.random.default_rng(0).uniform(0.3, 0.7, size=(1, uncertainty.RESAMPLES))
    np.save(folder / "bootstrap.npy", replicates)
    np.save(folder / "bootstrap_metrics.npy", np.array(["acc1"]))
    return [folder / "bootstrap.npy", folder / "bootstrap_metrics.npy"]


def served_suite(scratch: Path, models: list[str] | None = None, datasets: int = DATASETS
                 ) -> tuple[float, float, float, int]:
    """(seconds to plan, seconds to run, a bare interpreter's seconds, jobs) for the fully cached suite."""
    models = models or presets()
    conf, names = suite(scratch, datasets)
    outputs = scratch / "served" / "outputs"
    cached_store(outputs, conf, models, names)
    env = {"CLIP_TABLES_OUTPUTS": str(outputs), "XDG_CACHE_HOME": str(scratch / "served" / "cache")}
    command = [PYTHON, "-m", "pipeline", *arguments(conf, names, models)]
    planned = seconds([*command, "plan=true"], env)
    ran = seconds(command, env)
    bare = min(seconds([PYTHON, "-c", "import pipeline.__main__, pipeline.aggregate"]) for _ in range(3))
    return planned, ran, bare, len(models) * len(names)


def table_over_stores(scratch: Path, sizes: tuple[int, ...] = (1_000, 10_000, 50_000)) -> list[tuple[int, float, float, float]]:
    """(job runs, seconds through MLflow's search, seconds through the index when it is first built, and once it is
    up to date) for a table over every result of a store grown to each size (10 runs per job run, as a lab's)."""
    from pipeline.bench.store import RUNS_PER_GROUP, grow
    from pipeline.reports import results

    store = tracking.connect(f"sqlite:///{scratch}/tables/mlflow.db", "clip-tables", str(scratch / "tables" / "a"))
    found, have = [], 0
    for size in sizes:
        runs = size * RUNS_PER_GROUP
        for first in range(have, runs, 50_000):
            grow(store.uri, store.experiment_id, first, min(50_000, runs - first))
        have = runs
        searched = _timed(lambda: results.latest_in_store_searched(store))
        index_folder = scratch / "tables" / f"cache{size}"
        first_build = _timed(lambda: results.latest_in_store(store), index_folder)
        warm = _timed(lambda: results.latest_in_store(store), index_folder)
        found.append((size, searched, first_build, warm))
    return found


def _timed(action, cache: Path | None = None) -> float:
    """Seconds `action` takes, with the user's cache (where the store's index lives) in `cache` if given."""
    import os
    from unittest import mock

    with mock.patch.dict(os.environ, {"XDG_CACHE_HOME": str(cache)} if cache is not None else {}):
        start = time.perf_counter()
        action()
        return time.perf_counter() - start
