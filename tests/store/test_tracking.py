"""Connecting to the tracking store: a fresh SQLite file is created, an unreachable server fails at once and clearly."""
import socket

import pytest

from pipeline.errors import PipelineError
from pipeline.store import tracking
from tests.loopback import mlflow_server


def test_fresh_sqlite_store_gets_schema_and_experiment(tmp_path):
    store = tracking.connect(f"sqlite:///{tmp_path}/sub/mlflow.db", "exp", str(tmp_path / "artifacts"))
    again = tracking.connect(f"sqlite:///{tmp_path}/sub/mlflow.db", "exp")
    assert store.experiment_id == again.experiment_id
    assert store.client.get_experiment(store.experiment_id).artifact_location == (tmp_path / "artifacts").as_uri()


def test_unreachable_server_says_what_to_do():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(PipelineError, match=rf"http://127.0.0.1:{port} is not reachable.*mlflow server"):
        tracking.connect(f"http://127.0.0.1:{port}", "exp")


@pytest.mark.slow
def test_server_refusing_the_host_says_to_start_it_with_allowed_hosts(tmp_path):
    """MLflow 3.17 answers /health whatever the Host header, but refuses API calls addressed to a host it does not
    allow; a server started with `--allowed-hosts` for a lab name refuses 127.0.0.1, and the probe says why."""
    with mlflow_server(tmp_path, "--allowed-hosts", "mlflow.lab.example.org") as url:
        with pytest.raises(PipelineError, match=r"refuses requests addressed to 127.0.0.1.*--allowed-hosts"):
            tracking.connect(url, "exp")


def test_a_store_that_fails_mid_job_ends_the_command_in_one_line(monkeypatch, capsys):
    """A real client call to a server that has gone away (MLflow's own retries off, so it fails at once)."""
    from mlflow.tracking import MlflowClient

    from pipeline.errors import reported

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    @reported
    def job() -> None:
        MlflowClient(f"http://127.0.0.1:{port}").search_runs(["0"])

    with pytest.raises(SystemExit) as exited:
        job()
    assert exited.value.code == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("Error: the MLflow tracking store failed:") and "rerun" in line
