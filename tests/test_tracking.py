"""Connecting to the tracking store: a fresh SQLite file is created, an unreachable server fails at once and clearly."""
import socket

import pytest

from pipeline import PipelineError, tracking


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
