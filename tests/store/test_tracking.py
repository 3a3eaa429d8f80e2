"""Connecting to the tracking store: a fresh SQLite file is created, an unreachable server fails at once and clearly."""
import os
import socket
import subprocess
import sys

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


# A user's machine, as far as MLflow 3.17 can tell (mlflow/telemetry/utils.py, `_is_ci_env_or_testing`): none of
# the variables by which it recognises CI or a test run, and nobody's choice about telemetry.
NOT_A_USERS_MACHINE = ("PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "CI", "CIRCLECI", "GITLAB_CI", "JENKINS_URL", "TRAVIS",
                       "TF_BUILD", "BITBUCKET_BUILD_NUMBER", "CODEBUILD_BUILD_ARN", "BUILDKITE", "TEAMCITY_VERSION",
                       "CLOUD_RUN_EXECUTION", "RUNBOT_HOST_URL", "RUNBOT_BUILD_NAME", "RUNBOT_WORKER_ID",
                       "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "_MLFLOW_TELEMETRY_SESSION_ID")
WATCH_TELEMETRY = """
import os, sys, time
{first}
import mlflow
from mlflow.telemetry import get_telemetry_client
print("telemetry", get_telemetry_client() is not None, flush=True)
print("session variable", "_MLFLOW_TELEMETRY_SESSION_ID" in os.environ, flush=True)
client = mlflow.MlflowClient(sys.argv[1])
client.set_terminated(client.create_run(client.create_experiment(str(time.time_ns()))).info.run_id)  # telemetry starts
for _ in range(100):
    if "_MLFLOW_TELEMETRY_SESSION_ID" not in os.environ:
        break
    time.sleep(0.1)
print("session variable after the fetch", "_MLFLOW_TELEMETRY_SESSION_ID" in os.environ, flush=True)
"""


def watch_telemetry(tmp_path, first: str = "", **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in NOT_A_USERS_MACHINE}
    done = subprocess.run([sys.executable, "-c", WATCH_TELEMETRY.format(first=first), f"sqlite:///{tmp_path}/t.db"],
                          env={**clean, **env}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.splitlines()


def test_mlflows_telemetry_unsets_a_variable_from_a_background_thread(tmp_path):
    """The cause of the parallel sweeps' flaky failure: on a user's machine MLflow starts telemetry at import, and
    when its config cannot be fetched (always, offline) a daemon thread removes `_MLFLOW_TELEMETRY_SESSION_ID` from
    os.environ, while a request in another thread may be iterating os.environ (requests' proxy lookup)."""
    assert watch_telemetry(tmp_path) == ["telemetry True", "session variable True",
                                         "session variable after the fetch False"]


def test_the_project_turns_telemetry_off_before_mlflow_starts_it_unless_the_user_chose(tmp_path):
    assert watch_telemetry(tmp_path, first="import pipeline") == [
        "telemetry False", "session variable False", "session variable after the fetch False"]
    assert watch_telemetry(tmp_path, first="import pipeline", MLFLOW_DISABLE_TELEMETRY="false")[0] == "telemetry True"
