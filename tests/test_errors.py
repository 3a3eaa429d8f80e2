"""How a bad input ends a command: one line on stderr, exit status 1, the traceback in the log file only; the table of
bad inputs, every entry point, each one line that creates nothing."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, OverrideParseException
from mlflow.exceptions import MlflowException

from pipeline.errors import PipelineError, config_error, one_line, reported, reported_hook, store_failure
from pipeline.store import tracking
from tests.conftest import CONF, run_pipeline


def test_one_line_keeps_a_workers_actual_error_and_a_messages_first_line():
    worker = "Caught OSError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n" \
             "  File \"x.py\", line 1\nOSError: shard 3.tar is truncated"
    assert one_line(RuntimeError(worker)) == "OSError: shard 3.tar is truncated"
    assert one_line(ValueError("first line\nsecond line")) == "first line"
    assert one_line(KeyError()) == "KeyError"


def test_a_bad_input_exits_1_with_its_message_alone(capsys, tmp_path):
    log_file = logging.FileHandler(tmp_path / "job.log")
    logging.getLogger().addHandler(log_file)
    try:
        @reported
        def task() -> None:
            raise PipelineError("dataset.root=/nowhere does not exist\n(more detail)")

        with pytest.raises(SystemExit) as exited:
            task()
    finally:
        logging.getLogger().removeHandler(log_file)
        log_file.close()
    assert exited.value.code == 1
    assert capsys.readouterr().err.strip().splitlines() == ["Error: dataset.root=/nowhere does not exist (more detail)"]
    assert "Traceback" in (tmp_path / "job.log").read_text()  # kept for whoever reads the log


def test_a_store_failure_is_named_as_the_stores():
    @reported
    def task() -> None:
        raise MlflowException("API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/create failed")

    with pytest.raises(SystemExit):
        task()


def test_a_failing_hook_ends_the_command_with_status_1(capsys):
    @reported_hook("the sweep's aggregate step")
    def hook() -> None:
        raise ZeroDivisionError("division by zero")

    with pytest.raises(SystemExit) as exited:
        hook()
    assert exited.value.code == 1
    assert "Error: the sweep's aggregate step failed: ZeroDivisionError: division by zero" in capsys.readouterr().err


def test_a_failure_inside_mlflows_client_is_not_blamed_on_the_store():
    """How MLflow 3.17 reports any exception raised while it sends a request (mlflow/utils/rest_utils.py, line 320:
    `except Exception as e: raise MlflowException(f"API request to {url} failed with exception {e}")`): a KeyError
    from os.environ changing under requests' proxy lookup reads like an unreachable server."""
    try:
        try:
            raise KeyError("_MLFLOW_TELEMETRY_SESSION_ID")
        except Exception as e:
            raise MlflowException(f"API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/log-batch failed with "
                                  f"exception {e}")
    except MlflowException as exc:
        said = store_failure(exc)
    assert said.startswith("MLflow's client failed inside this process (KeyError: '_MLFLOW_TELEMETRY_SESSION_ID'), "
                           "not the tracking store")


def test_an_unreachable_store_is_named_as_the_store():
    import requests

    try:
        try:
            raise requests.exceptions.ConnectionError("Connection refused")
        except Exception as e:
            raise MlflowException(f"API request to http://127.0.0.1:5000 failed with exception {e}")
    except MlflowException as exc:
        assert store_failure(exc).startswith("the MLflow tracking store failed: API request to")


# -- Hydra's refusals as one line ---------------------------------------------------------------------------------
def hydras_refusal(*overrides: str, config_name: str = "config") -> str:
    """What `config_error` makes of Hydra's refusal to compose, while Hydra's loader still lists the groups (as it
    does when an entry point reports it)."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        with pytest.raises((ConfigCompositionException, OverrideParseException)) as refused:
            compose(config_name, overrides=list(overrides))
        return config_error(refused.value)


@pytest.mark.parametrize("overrides, said", [
    (["model=vit_b_32_opnai"], "model=vit_b_32_opnai is not an option of model/; did you mean vit_b_32_openai, "),
    (["dataset=vtab/petz"], "dataset=vtab/petz is not an option of dataset/; did you mean vtab/pets, "),
    (["dataset=nosuch"], "dataset=nosuch is not an option of dataset/ (`"),
    (["prompts=a_foto_of"], "prompts=a_foto_of is not an option of prompts/; did you mean a_photo_of?"),
    (["suite=datacomp39"], "suite=datacomp39 is not an option of suite/; did you mean datacomp38?"),
    (["model_set=blog"], "model_set=blog is not an option of model_set/; did you mean blog13?"),
    (["head=linear"], "head=linear is not an option of head/; did you mean linear_probe?"),
    (["hydra/launcher=submitit"], "hydra/launcher=submitit is not an option of hydra/launcher/; did you mean "),
    (["model="], "model= names no option of model/: give one"),
    (["model==x"], "the override 'model==x' is malformed (extraneous input '='): write key=value"),
    (["dataset=[a"], "the override 'dataset=[a' is malformed (no viable alternative at input '[a')"),
    (["batch_sise=3"], "Could not override 'batch_sise'. To append to your config use +batch_sise=3; did you mean "
                       "batch_size?"),
])
def test_hydras_refusals_read_as_one_line_with_the_closest_names(overrides, said):
    line = hydras_refusal(*overrides)
    assert line.startswith(said) and "\n" not in line and len(line) < 300


# -- the bad-input table: every entry point, one line, exit status 1, nothing created ----------------------------
@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    said: str                 # the start of the one line (after "Error: ")
    module: str = "pipeline"
    workdir: str = ""         # a prepared folder: "hit" (the job below, finished), "empty" (a store without runs)
    job_folder: bool = False  # refused inside the job: Hydra's job folder keeps the log with the traceback


BAD_INPUTS = {
    "misspelt model": Case(("model=vit_b_32_opnai",), "model=vit_b_32_opnai is not an option of model/; did you "
                                                      "mean vit_b_32_openai, "),
    "unknown dataset": Case(("dataset=nosuch",), "dataset=nosuch is not an option of dataset/"),
    "unknown dataset, multirun": Case(("-m", "dataset=vtab/nosuch"), "dataset=vtab/nosuch is not an option of "),
    "misspelt model among the swept ones": Case(("-m", "model=tiny,vit_b_32_opnai"), "model=vit_b_32_opnai is not an "
                                                "option of model/; did you mean vit_b_32_openai, "),
    "empty option": Case(("prompts=",), "prompts= names no option of prompts/"),
    "malformed override": Case(("model==x",), "the override 'model==x' is malformed"),
    "unclosed bracket": Case(("dataset=[a",), "the override 'dataset=[a' is malformed"),
    "batch_size=abc, a miss": Case(("batch_size=abc",), "batch_size='abc' must be a whole number of at least 1",
                                   job_folder=True),
    "batch_size=abc, a hit": Case(("batch_size=abc",), "batch_size='abc' must be a whole number of at least 1",
                                  workdir="hit", job_folder=True),
    "batch_size=-3": Case(("batch_size=-3",), "batch_size=-3 must be a whole number of at least 1", job_folder=True),
    "num_workers=-1": Case(("num_workers=-1",), "num_workers=-1 must be a whole number of at least 0",
                           job_folder=True),
    "result file of binary garbage": Case(("results_dir=GARBAGE",), "GARBAGE is not UTF-8 text (byte 0x89 at "
                                          "offset 0); it starts with b'\\x89PNG", module="pipeline.aggregate"),
    "aggregate, no store": Case((), "no tracking store at ", module="pipeline.aggregate"),
    "aggregate, empty store": Case((), "no finished job runs in sqlite:", module="pipeline.aggregate",
                                   workdir="empty"),
    "aggregate, misspelt metric": Case(("metric=ac1",), "metric=ac1 is not an option of metric/; did you mean acc1? "
                                       "(`python -m pipeline.aggregate --help` lists every group's options)",
                                       module="pipeline.aggregate"),
}


def outputs_tree(workdir: Path) -> set[str]:
    return {str(p.relative_to(workdir)) for p in (workdir / "outputs").rglob("*")}


def run_count(workdir: Path) -> int:
    if not (workdir / "outputs" / "mlflow.db").exists():
        return 0
    store = tracking.connect(f"sqlite:///{workdir}/outputs/mlflow.db", "clip-tables", access=tracking.READ)
    return len(tracking.search_all(store, "", limit=None))


@pytest.fixture(scope="module")
def refused(tmp_path_factory, shapes_root, tiny_checkpoint) -> dict[str, tuple]:
    """Every bad input at once (each process is a second or two of imports); the hit case after the job it
    repeats has finished."""
    assets = [f"dataset.root={shapes_root}", f"model.pretrained={tiny_checkpoint}", "num_workers=0"]
    empty = tmp_path_factory.mktemp("empty")
    tracking.connect(f"sqlite:///{empty}/outputs/mlflow.db", "clip-tables")
    garbage = tmp_path_factory.mktemp("files") / "result.json"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2000)  # 512 KB that is not text

    def refuse(name: str, case: Case, workdir: Path, before: tuple) -> tuple:
        if case.workdir == "hit":
            done = run_pipeline(workdir, *assets)
            assert done.returncode == 0, done.stderr[-2000:]
            before = (outputs_tree(workdir), run_count(workdir))
        args = [a.replace("GARBAGE", str(garbage)) for a in case.args]
        if case.module == "pipeline":  # the case's overrides last, so that they win; Hydra's flags first
            args = [a for a in args if a.startswith("-")] + assets + [a for a in args if not a.startswith("-")]
        env = {**os.environ, "CLIP_TABLES_OUTPUTS": str(workdir / "outputs"),
               "HYDRA_FULL_ERROR": "1" if name == "HYDRA_FULL_ERROR=1" else "0"}
        done = subprocess.run([sys.executable, "-m", case.module, *args], cwd=workdir, env=env, text=True,
                              capture_output=True, timeout=300)
        return done.stdout, done.stderr, done.returncode, workdir, before, str(garbage)

    cases = {**BAD_INPUTS, "HYDRA_FULL_ERROR=1": BAD_INPUTS["misspelt model"]}
    with ThreadPoolExecutor(len(cases)) as pool:
        workdirs = {name: empty if case.workdir == "empty" else tmp_path_factory.mktemp("case")
                    for name, case in cases.items()}
        started = {name: pool.submit(refuse, name, case, workdirs[name],
                                     (outputs_tree(workdirs[name]), run_count(workdirs[name])))
                   for name, case in cases.items()}
        return {name: future.result() for name, future in started.items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_a_bad_input_is_one_line_exit_1_and_creates_nothing(refused, name):
    case = BAD_INPUTS[name]
    stdout, stderr, code, workdir, (tree, runs), garbage = refused[name]
    assert code == 1, stderr[-2000:]
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr[-3000:]
    line = lines[0]
    assert line.startswith("Error: " + case.said.replace("GARBAGE", garbage)), line
    assert len(line) < 400 and stdout.strip() in ("", line)
    created = outputs_tree(workdir) - tree
    if case.job_folder:  # Hydra's folder for the job, with the job's log (the traceback is there, not on screen)
        created = {path for path in created if not path.startswith("outputs/runs")}
    assert created == set() and run_count(workdir) == runs


@pytest.mark.slow
def test_hydras_own_report_stays_available(refused):
    stdout, stderr, code, *_ = refused["HYDRA_FULL_ERROR=1"]
    assert code == 1 and "Could not find 'model/vit_b_32_opnai'" in stderr and "Available options" in stderr
