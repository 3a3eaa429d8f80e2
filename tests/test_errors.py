"""How a bad input ends a command: one line on stderr, exit status 1, the traceback in the log file only."""
from __future__ import annotations

import logging

import pytest
from mlflow.exceptions import MlflowException

from pipeline.errors import PipelineError, one_line, reported, reported_hook, store_failure


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
