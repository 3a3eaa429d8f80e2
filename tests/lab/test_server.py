"""Lab scale, with real processes on loopback: `make server`'s PostgreSQL-backed tracking server shared by parallel
jobs, the submitit launchers, and two sweeps racing on one SQLite store. No key is ever computed twice."""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from hydra.core.hydra_config import HydraConfig
from mlflow.entities import ViewType
from omegaconf import OmegaConf

from pipeline.errors import PipelineError
from pipeline.lab.postgres import Cluster, traversal_problem
from pipeline.store import indexes, tracking
from pipeline.store.claims import CLAIM_STAGE, RELEASED, STATE_TAG
from tests.conftest import asset_overrides, compose_config, run_pipeline
from tests.loopback import SERVER_FOLDERS, postgres_mlflow_server

PROMPTS = "prompts=dataset,classname,a_photo_of,simple_imagenet"
STAGES = ("embed", "classify", "score")


def all_runs(store: tracking.TrackingStore):
    """Every run of the experiment: any status, active or deleted."""
    return store.client.search_runs([store.experiment_id], "", run_view_type=ViewType.ALL, max_results=5000)


def stage_runs(store: tracking.TrackingStore):
    return [run for run in all_runs(store) if run.data.tags.get("stage") in STAGES]


def counts(store: tracking.TrackingStore) -> Counter:
    return Counter((run.data.tags["stage"], run.data.tags.get("modality", ""), run.info.status)
                   for run in all_runs(store) if run.data.tags.get("stage") != CLAIM_STAGE)


def assert_no_key_computed_twice(store: tracking.TrackingStore) -> None:
    keys = Counter(run.data.tags["cache_key"] for run in stage_runs(store))
    assert keys and max(keys.values()) == 1, [key for key, n in keys.items() if n > 1]


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def sweep_table(workdir: Path) -> pd.DataFrame:
    [table] = sorted((workdir / "outputs" / "multirun").glob("*/*/table.csv"))[-1:]
    return pd.read_csv(table).set_index("prompts").sort_index()


@pytest.fixture(scope="module")
def assets(shapes_root, tiny_checkpoint) -> list[str]:
    return asset_overrides(shapes_root, tiny_checkpoint)


@pytest.fixture(scope="module")
def server():
    with postgres_mlflow_server() as url:
        yield url


@pytest.fixture(scope="module")
def server_sweep(server, assets, tmp_path_factory) -> tuple[tracking.TrackingStore, pd.DataFrame, Counter]:
    """A 4-job parallel sweep (joblib, n_jobs=4) over four prompt sets of one model and dataset."""
    workdir = tmp_path_factory.mktemp("lab")
    proc = run_pipeline(workdir, "-m", "tracking=server", f"tracking.uri={server}", "hydra/launcher=joblib",
                        "hydra.launcher.n_jobs=4", PROMPTS, *assets)
    assert_ok(proc)
    store = tracking.connect(server, "clip-tables")
    return store, sweep_table(workdir), counts(store)


@pytest.mark.slow
def test_parallel_jobs_on_a_postgres_backed_server_compute_each_key_once(server_sweep, server, assets, tmp_path):
    store, table, first = server_sweep
    assert first[("embed", "image", "FINISHED")] == 1 and first[("score", "", "FINISHED")] == 4
    assert first[("embed", "text", "FINISHED")] == 4 and first[("job", "", "FINISHED")] == 4
    assert {status for _, _, status in first} == {"FINISHED"}
    assert_no_key_computed_twice(store)  # templates shared by several prompt sets included
    assert sorted(table.index) == ["a_photo_of", "classname", "dataset", "simple_imagenet"]
    # claims lived on the job runs: every one released, none left held, no run of its own, nothing deleted
    claimed = [run for run in all_runs(store) if STATE_TAG in run.data.tags]
    assert claimed and {(run.data.tags["stage"], run.data.tags[STATE_TAG]) for run in claimed} == {("job", RELEASED)}
    assert not [run for run in all_runs(store) if run.data.tags.get("stage") == CLAIM_STAGE]
    assert all(run.info.lifecycle_stage == "active" for run in all_runs(store))
    with Cluster(SERVER_FOLDERS[server], 0, "postgres").running(attach=True) as cluster:  # `make server`'s own
        with cluster.connect() as connection:
            [definition] = connection.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s",
                                              (indexes.INDEX,)).fetchone()
    assert "(key, value)" in definition and "cache_key" in definition and "claim_keys" not in definition

    again = run_pipeline(tmp_path, "-m", "tracking=server", f"tracking.uri={server}", PROMPTS, *assets)
    assert_ok(again)
    assert "MISS" not in again.stdout + again.stderr
    assert counts(store) == first + Counter({("job", "", "FINISHED"): 4, ("aggregate", "", "FINISHED"): 1,
                                            ("sweep", "", "FINISHED"): 1})


@pytest.mark.slow
def test_a_failing_submitit_job_reports_its_error_and_log_in_one_line(tmp_path, tiny_checkpoint):
    proc = run_pipeline(tmp_path, "-m", "hydra/launcher=submitit_local", "prompts=classname",
                        f"dataset.root={tmp_path}/missing", f"model.pretrained={tiny_checkpoint}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert "job #0 (prompts=classname" in line and "does not exist" in line
    log = Path(line.rsplit("(log: ", 1)[1].rstrip(")"))
    assert log.is_file() and ".submitit" in log.parts


@pytest.mark.slow
def test_two_sweeps_started_together_on_one_sqlite_store_embed_the_images_once(tmp_path, assets):
    tracking.connect(f"sqlite:///{tmp_path}/outputs/mlflow.db", "clip-tables",  # the store exists, as in a lab
                     str(tmp_path / "outputs" / "mlartifacts"))
    env = {**os.environ, "CLIP_TABLES_OUTPUTS": str(tmp_path / "outputs"), "HYDRA_FULL_ERROR": "0"}
    sweeps = [subprocess.Popen([sys.executable, "-m", "pipeline", "-m", prompts, *assets], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for prompts in ("prompts=dataset,classname", "prompts=a_photo_of,simple_imagenet")]
    outputs = [sweep.communicate(timeout=600) for sweep in sweeps]
    assert all(sweep.returncode == 0 for sweep in sweeps), outputs
    store = tracking.connect(f"sqlite:///{tmp_path}/outputs/mlflow.db", "clip-tables")
    found = counts(store)
    assert found[("embed", "image", "FINISHED")] == 1 and found[("score", "", "FINISHED")] == 4
    assert_no_key_computed_twice(store)


def test_submitit_slurm_preset_renders_one_gpu_per_job(tmp_path, monkeypatch):
    """The sbatch script submitit would submit, rendered without submitting. submitit's SLURM executor only checks
    that `srun` is on the PATH when it is built, so an empty stand-in is put there; nothing runs it."""
    from hydra_plugins.clip_tables.launcher import executor

    (tmp_path / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    cfg = compose_config("hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu-a100",
                         f"hydra.sweep.dir={tmp_path}/sweep", "hydra.launcher.timeout_min=240", return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params.pop("_target_") == "hydra_plugins.clip_tables.launcher.SlurmLauncher"
    script = executor("slurm", params)._executor._make_submission_file_text("python -m pipeline", "uid")
    for line in ("#SBATCH --gpus-per-node=1", "#SBATCH --partition=gpu-a100", "#SBATCH --time=240",
                 "#SBATCH --mem=64GB", "#SBATCH --cpus-per-task=8", f"#SBATCH --output={tmp_path}/sweep/.submitit/"):
        assert line in script, script


def test_submitit_local_preset_hands_jobs_the_visible_gpus():
    import torch

    cfg = compose_config("hydra/launcher=submitit_local", return_hydra_config=True)
    assert cfg.hydra.launcher.gpus_per_node == torch.cuda.device_count()
    assert cfg.hydra.launcher._target_ == "hydra_plugins.clip_tables.launcher.LocalLauncher"


def test_server_folder_the_postgres_user_cannot_enter_is_refused_with_what_to_do():
    if os.geteuid() != 0:
        pytest.skip("the check concerns `make server` run as root, which runs PostgreSQL as `postgres`")
    postgres = pwd.getpwnam("postgres")
    base = Path(tempfile.mkdtemp(prefix="clip-tables-locked-"))
    try:
        base.chmod(0o755)
        locked = base / "locked"
        locked.mkdir(mode=0o700)
        assert traversal_problem(base / "server", postgres) is None
        assert traversal_problem(locked / "server", postgres) == locked
        with pytest.raises(PipelineError, match=rf"cannot enter {locked}.*chmod o\+x {locked}"):
            Cluster(locked / "server", 5999).check_folder()
    finally:
        shutil.rmtree(base)


def test_server_folder_a_shell_would_misread_is_refused():
    """pg_ctl hands the data folder to /bin/sh; such a folder is refused before anything is made."""
    with pytest.raises(PipelineError, match="characters"):
        Cluster(Path("/tmp/clip-tables;touch x"), 5999).check_folder()
    assert not Path("/tmp/clip-tables;touch x").exists()


def test_a_second_server_on_the_same_folder_or_port_is_refused(tmp_path):
    """Another `make server` on the same folder would stop the first one's database, and one on a taken port
    would be answered by whatever holds it: both are refused before anything starts."""
    import fcntl
    import socket

    from pipeline.lab.server import ensure_port_free

    base = Path(tempfile.mkdtemp(prefix="clip-tables-twice-"))
    try:
        base.chmod(0o755)
        (base / "server").mkdir()
        with open(base / "server" / ".lock", "w") as held:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            with pytest.raises(PipelineError, match="another `make server` is running on"):
                with Cluster(base / "server", 5999).running():
                    pass
        assert not (base / "server" / "pgdata").exists()
    finally:
        shutil.rmtree(base)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PipelineError, match=rf"port {port} on 127.0.0.1 is in use.*port=\.\.\."):
            ensure_port_free("127.0.0.1", port, "the tracking server's", "port")


def test_jobs_are_grouped_by_model_in_job_order_and_cut_into_chunks():
    from hydra_plugins.clip_tables.launcher import Grouping, group_jobs

    jobs = [["model.pretrained=a", "dataset=x"], ["model.pretrained=b", "dataset=x"],
            ["model.pretrained=a", "dataset=y"], ["model.pretrained=b", "dataset=y"], ["model.pretrained=a", "dataset=z"]]
    assert group_jobs(jobs, Grouping()) == [[0, 2, 4], [1, 3]]
    assert group_jobs(jobs, Grouping(jobs_per_task=2)) == [[0, 2], [4], [1, 3]]
    assert group_jobs(jobs, Grouping(group_by="none")) == [[0], [1], [2], [3], [4]]
    assert group_jobs(jobs, Grouping(group_by="none", jobs_per_task=2)) == [[0, 1], [2, 3], [4]]
    assert group_jobs([["dataset=x"], ["dataset=y"]], Grouping()) == [[0, 1]]  # one model, one task
    with pytest.raises(ValueError, match="group_by='dataset': use one of model, none"):
        group_jobs(jobs, Grouping(group_by="dataset"))


def task_logs(workdir: Path) -> list[Path]:
    return sorted((workdir / "outputs" / "multirun").glob("*/*/.submitit/*/*_log.*"))


@pytest.mark.slow
def test_a_submitit_sweep_runs_one_task_per_model_and_loads_each_model_once(tmp_path, tiny_checkpoint):
    """2 models x 3 datasets through submitit: 2 tasks of 3 jobs, each model loaded once, no key computed twice,
    and the table of a sweep run job by job in one process (Hydra's basic launcher)."""
    from pipeline.bench.processes import Dataset, dataset_configs
    from tests import synthetic
    from tests.conftest import TRAINING_RUN

    sets = [Dataset(f"stand_in{i}", synthetic.write_wds_classification(tmp_path / f"stand_in{i}", seed=i))
            for i in range(3)]
    conf = dataset_configs(tmp_path, sets)
    sweep = ["-m", f"hydra.searchpath=[file://{conf}]", "model=tiny",
             f"model.pretrained={TRAINING_RUN / 'step_300.pt'},{tiny_checkpoint}",
             f"dataset={','.join(s.name for s in sets)}", "prompts=classname", "num_workers=0"]
    grouped = run_pipeline(tmp_path / "grouped", *sweep, "hydra/launcher=submitit_local")
    assert_ok(grouped)
    logs = task_logs(tmp_path / "grouped")
    assert len({log.parent for log in logs}) == 2, logs
    loads = [line for log in logs for line in log.read_text().splitlines() if "loading tiny-clip" in line]
    assert len(loads) == 2, loads
    store = tracking.connect(f"sqlite:///{tmp_path}/grouped/outputs/mlflow.db", "clip-tables")
    assert counts(store)[("job", "", "FINISHED")] == 6 and counts(store)[("embed", "image", "FINISHED")] == 6
    assert_no_key_computed_twice(store)
    in_process = run_pipeline(tmp_path / "in_process", *sweep)
    assert_ok(in_process)
    pd.testing.assert_frame_equal(sweep_table(tmp_path / "grouped"), sweep_table(tmp_path / "in_process"))
