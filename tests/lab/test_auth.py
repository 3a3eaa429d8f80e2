"""A lab server that keeps strangers out, with real processes on loopback: `make server` with authentication and
HTTPS on its private PostgreSQL, users added with `make server-user`, workers that need EDIT only (claims
included), readers that build tables locally, and one line for every credential or certificate problem."""
from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pipeline.errors import PipelineError
from pipeline.lab import auth, server
from pipeline.store.tracking import API_PROBE
from tests.conftest import asset_overrides, run_pipeline
from tests.loopback import SERVER_FOLDERS, postgres_mlflow_server, self_signed_certificate

PROMPTS = "prompts=dataset,classname"


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """The server with authentication and TLS, its certificate, and a worker's and a reader's environments."""
    certificates = Path(tempfile.mkdtemp(prefix="clip-tables-tls-"))  # the server process must read it
    certificates.chmod(0o755)
    cert, key = self_signed_certificate(certificates)
    with postgres_mlflow_server("auth=true", f"tls_cert={cert}", f"tls_key={key}") as url:
        folder = SERVER_FOLDERS[url]
        # a user's file written before TLS was turned on: the next `make server-user` brings it up to date
        (folder / "auth" / "users").mkdir(parents=True)
        (folder / "auth" / "users" / "before.env").write_text("MLFLOW_TRACKING_USERNAME=before\n")
        users = {}
        for name, role in (("worker1", "worker"), ("reader1", "reader")):
            done = subprocess.run([sys.executable, "-m", "pipeline.lab.users", f"folder={folder}", f"name={name}",
                                   f"role={role}"], capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr[-2000:]
            env_file = folder / "auth" / "users" / f"{name}.env"
            assert oct(env_file.stat().st_mode & 0o777) == "0o600"
            users[name] = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
        users["before"] = dict(line.split("=", 1) for line in
                               (folder / "auth" / "users" / "before.env").read_text().splitlines())
        yield url, cert, folder, users


def request(url: str, cert: Path, user: dict[str, str], method: str, path: str, body: dict | bytes | None = None
            ) -> tuple[int, dict]:
    """One REST call as `user`: the status the server answers, and its JSON (empty where it sent none)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else None
    credentials = f"{user['MLFLOW_TRACKING_USERNAME']}:{user['MLFLOW_TRACKING_PASSWORD']}".encode()
    sent = urllib.request.Request(url + path, data=data, method=method, headers={
        "Authorization": "Basic " + base64.b64encode(credentials).decode(), "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(sent, context=ssl.create_default_context(cafile=str(cert)), timeout=30) as done:
            status, text = done.status, done.read()
    except urllib.error.HTTPError as refused:
        status, text = refused.code, refused.read()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, {}


def as_user(environment: dict[str, str], **changes: str) -> dict[str, str]:
    return {**environment, **changes}


def run(workdir: Path, env: dict[str, str], *args: str, module: str = "pipeline") -> subprocess.CompletedProcess:
    """A command with a user's environment (the variables MLflow's client reads), as a worker runs it."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        return run_pipeline(workdir, *args, module=module)
    finally:
        for name, value in saved.items():
            os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)


def last_line(done: subprocess.CompletedProcess) -> str:
    return done.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_strangers_are_refused_and_the_admins_secrets_stay_in_files(secured):
    url, cert, folder, _ = secured
    context = ssl.create_default_context(cafile=str(cert))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url + API_PROBE, context=context, timeout=10)
    assert refused.value.code == 401
    for name in ("admin_password", "secret_key"):
        assert oct((folder / "auth" / name).stat().st_mode & 0o777) == "0o600"
    config = (folder / "auth" / "basic_auth.ini").read_text()
    assert "default_permission = NO_PERMISSIONS" in config and "admin_password" not in config
    password = (folder / "auth" / "admin_password").read_text().strip()
    log = (folder / "mlflow-server.log").read_text() + (folder / "server.log").read_text()
    assert password not in log


@pytest.mark.slow
def test_a_worker_with_edit_runs_a_sweep_with_claims_and_the_next_is_served(secured, tmp_path, shapes_root,
                                                                          tiny_checkpoint):
    url, _, _, users = secured
    assets = asset_overrides(shapes_root, tiny_checkpoint)
    arguments = ["-m", "tracking=server", f"tracking.uri={url}", PROMPTS, "hydra/launcher=joblib",
                 "hydra.launcher.n_jobs=2", *assets]
    first = run(tmp_path / "first", users["worker1"], *arguments)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "computed by another job" in first.stdout + first.stderr  # the two jobs shared the image features
    again = run(tmp_path / "again", users["worker1"], *arguments)
    assert again.returncode == 0 and "MISS" not in again.stdout + again.stderr


@pytest.mark.slow
def test_a_reader_builds_tables_locally_and_cannot_write(secured, tmp_path, shapes_root, tiny_checkpoint):
    url, _, _, users = secured
    tables = run(tmp_path, users["reader1"], "tracking=server", f"tracking.uri={url}", module="pipeline.aggregate")
    assert tables.returncode == 0, tables.stderr[-2000:]
    assert (tmp_path / "outputs" / "tables" / "table.csv").is_file()
    assert "written to the folder, not logged to the store: user 'reader1' has no EDIT" in tables.stdout + tables.stderr
    job = run(tmp_path, users["reader1"], "tracking=server", f"tracking.uri={url}",
              *asset_overrides(shapes_root, tiny_checkpoint))
    assert job.returncode == 1 and last_line(job) == (
        f"Error: user 'reader1' lacks EDIT on experiment clip-tables of {url}, which this command needs; the "
        f"server's admin grants it with `make server-user ARGS=\"name=reader1 role=worker\"`")


@pytest.mark.slow
def test_a_wrong_password_a_missing_user_and_an_untrusted_certificate_are_one_line(secured, tmp_path):
    url, _, _, users = secured
    wrong = run(tmp_path, as_user(users["worker1"], MLFLOW_TRACKING_PASSWORD="wrong"), "tracking=server",
                f"tracking.uri={url}", module="pipeline.aggregate")
    assert wrong.returncode == 1 and last_line(wrong) == (
        f"Error: MLflow tracking server {url} refuses the credentials of user 'worker1' (MLFLOW_TRACKING_PASSWORD)")
    anonymous = run(tmp_path, as_user(users["worker1"], MLFLOW_TRACKING_USERNAME="", MLFLOW_TRACKING_PASSWORD=""),
                    "tracking=server", f"tracking.uri={url}", module="pipeline.aggregate")
    assert anonymous.returncode == 1 and "requires a user: set MLFLOW_TRACKING_USERNAME" in last_line(anonymous)
    untrusted = run(tmp_path, as_user(users["worker1"], MLFLOW_TRACKING_SERVER_CERT_PATH=""), "tracking=server",
                    f"tracking.uri={url}", module="pipeline.aggregate")
    assert untrusted.returncode == 1 and "presents a certificate this machine does not trust" in last_line(untrusted)
    assert "MLFLOW_TRACKING_SERVER_CERT_PATH" in last_line(untrusted)


def test_beyond_loopback_the_server_refuses_to_serve_everyone_unless_told(caplog):
    from omegaconf import OmegaConf

    def settings(**given):
        return OmegaConf.create({"host": "127.0.0.1", "port": 5000, "auth": None, **given})

    assert not server.authenticated(settings()) and server.authenticated(settings(host="0.0.0.0"))
    assert server.authenticated(settings(auth=True))
    assert not server.authenticated(settings(host="0.0.0.0", auth=False))
    assert "without authentication (auth=false): anyone who reaches port 5000 can read every result" in caplog.text


def test_the_auth_files_are_made_once_readable_by_their_owner_alone(tmp_path, monkeypatch):
    files = auth.AuthFiles(tmp_path / "auth")
    env = files.server_env()
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == str(files.config)
    assert files.server_env() == env  # kept across restarts
    assert oct(files.folder.stat().st_mode & 0o777) == "0o700"
    assert all(oct((files.folder / name).stat().st_mode & 0o777) == "0o600" for name in ("secret_key", "admin_password"))
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "someone")
    with auth.acting_as(files.admin("/etc/ssl/server.pem")):
        assert os.environ["MLFLOW_TRACKING_USERNAME"] == "admin" and os.environ["MLFLOW_TRACKING_INSECURE_TLS"] == "true"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "someone" and "MLFLOW_TRACKING_INSECURE_TLS" not in os.environ
    with pytest.raises(PipelineError, match="no tracking server has run from"):
        auth.add_user(tmp_path, "worker1", "worker")
    with pytest.raises(PipelineError, match="role='admin' is not one of worker, reader"):
        auth.add_user(tmp_path, "worker1", "admin")


@pytest.mark.slow
def test_a_reader_reads_and_writes_nothing_anywhere_until_made_a_worker(secured):
    url, cert, folder, users = secured
    experiment = json.loads((folder / "server.json").read_text())["experiment_id"]
    reader, worker = users["reader1"], users["worker1"]
    made, created = request(url, cert, worker, "POST", "/api/2.0/mlflow/runs/create", {"experiment_id": experiment})
    assert made == 200
    run_id = created["run"]["info"]["run_id"]
    # what a reader can do: read the project's experiment, its runs and their artifacts
    for method, path, body in (
            ("GET", "/api/2.0/mlflow/experiments/get-by-name?experiment_name=clip-tables", None),
            ("POST", "/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment]}),
            ("POST", "/ajax-api/2.0/mlflow/runs/search", {"experiment_ids": [experiment]}),
            ("GET", f"/api/2.0/mlflow/runs/get?run_id={run_id}", None),
            ("GET", f"/api/2.0/mlflow-artifacts/artifacts?path={experiment}/{run_id}/artifacts", None)):
        assert request(url, cert, reader, method, path, body)[0] == 200, path
    # and nothing that writes, anywhere: no experiment of its own, no run, tag, metric or artifact
    writes = [
        ("POST", "/api/2.0/mlflow/experiments/create", {"name": "readers-own"}),
        ("POST", "/ajax-api/2.0/mlflow/experiments/create", {"name": "readers-own"}),
        ("POST", "/api/2.0/mlflow/runs/create", {"experiment_id": experiment}),
        ("POST", "/api/2.0/mlflow/runs/set-tag", {"run_id": run_id, "key": "k", "value": "v"}),
        ("POST", "/ajax-api/2.0/mlflow/runs/set-tag", {"run_id": run_id, "key": "k", "value": "v"}),
        ("POST", "/api/2.0/mlflow/runs/log-metric", {"run_id": run_id, "key": "m", "value": 1, "timestamp": 0}),
        ("POST", "/api/2.0/mlflow/experiments/set-experiment-tag",
         {"experiment_id": experiment, "key": "k", "value": "v"}),
        ("POST", "/api/2.0/mlflow/registered-models/create", {"name": "readers-model"}),
        ("PUT", f"/api/2.0/mlflow-artifacts/artifacts/{experiment}/{run_id}/artifacts/note.txt", b"written"),
        ("POST", "/api/2.0/mlflow/runs/delete", {"run_id": run_id})]
    refused = [request(url, cert, reader, *write) for write in writes]
    assert [status for status, _ in refused] == [403] * len(writes)
    assert refused[0][1]["error_code"] == "PERMISSION_DENIED" and "reads only" in refused[0][1]["message"]
    admin = {"MLFLOW_TRACKING_USERNAME": "admin",
             "MLFLOW_TRACKING_PASSWORD": (folder / "auth" / "admin_password").read_text().strip()}
    assert request(url, cert, admin, "GET", "/api/2.0/mlflow/experiments/get-by-name?experiment_name=readers-own"
                   )[0] == 404
    # a reader made a worker keeps its password and writes what the cache needs
    added = subprocess.run([sys.executable, "-m", "pipeline.lab.users", f"folder={folder}", "name=reader2",
                            "role=reader"], capture_output=True, text=True, timeout=120)
    assert added.returncode == 0, added.stderr[-2000:]
    reader2 = dict(line.split("=", 1) for line in
                   (folder / "auth" / "users" / "reader2.env").read_text().splitlines())
    run_in = ("POST", "/api/2.0/mlflow/runs/create", {"experiment_id": experiment})
    assert request(url, cert, reader2, *run_in)[0] == 403
    promoted = subprocess.run([sys.executable, "-m", "pipeline.lab.users", f"folder={folder}", "name=reader2",
                               "role=worker"], capture_output=True, text=True, timeout=120)
    assert promoted.returncode == 0 and "can now write to the experiment (EDIT), its password unchanged" in \
        promoted.stdout, promoted.stderr[-2000:]
    assert request(url, cert, reader2, *run_in)[0] == 200


@pytest.mark.slow
def test_every_users_file_names_the_certificate_and_http_against_https_is_one_line(secured, tmp_path):
    url, cert, _, users = secured
    assert users["before"]["MLFLOW_TRACKING_SERVER_CERT_PATH"] == str(cert)  # written before TLS, brought up to date
    assert all(user["MLFLOW_TRACKING_SERVER_CERT_PATH"] == str(cert) for user in users.values())
    plain = "http://" + url.removeprefix("https://")
    done = run(tmp_path, users["worker1"], "tracking=server", f"tracking.uri={plain}", module="pipeline.aggregate")
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1 and last_line(done) == (
        f"Error: MLflow tracking server {plain} speaks HTTPS, not HTTP: use tracking.uri={url} (and "
        f"MLFLOW_TRACKING_SERVER_CERT_PATH for its certificate)")


def test_the_environment_files_follow_the_servers_certificate(tmp_path):
    users = tmp_path / "users"
    users.mkdir()
    (users / "old.env").write_text("MLFLOW_TRACKING_USERNAME=old\nMLFLOW_TRACKING_PASSWORD=p\n")
    (users / "new.env").write_text("MLFLOW_TRACKING_USERNAME=new\nMLFLOW_TRACKING_SERVER_CERT_PATH=/etc/a.pem\n")
    assert auth.refresh_environments(users, "/etc/b.pem") == ["new", "old"]
    assert (users / "old.env").read_text().splitlines()[-1] == "MLFLOW_TRACKING_SERVER_CERT_PATH=/etc/b.pem"
    assert oct((users / "old.env").stat().st_mode & 0o777) == "0o600"
    assert auth.refresh_environments(users, "/etc/b.pem") == []  # as it should be: nothing written
    assert auth.refresh_environments(users, None) == ["new", "old"]
    assert "CERT_PATH" not in (users / "old.env").read_text() + (users / "new.env").read_text()


def test_only_requests_that_read_are_a_readers(tmp_path):
    assert auth.is_read("GET", "/api/2.0/mlflow/runs/get")
    assert auth.is_read("POST", "/ajax-api/2.0/mlflow/runs/search")
    assert auth.is_read("POST", "/api/2.0mlflow/experiments/search-datasets") and auth.is_read("POST", "/graphql")
    assert not any(auth.is_read(method, path) for method, path in (
        ("POST", "/api/2.0/mlflow/experiments/create"), ("POST", "/ajax-api/2.0/mlflow/runs/log-batch"),
        ("PUT", "/api/2.0/mlflow-artifacts/artifacts/1/x"), ("DELETE", "/api/2.0/mlflow/runs/delete"),
        ("PATCH", "/api/2.0/mlflow/registered-models/update")))
    files = auth.AuthFiles(tmp_path / "auth")
    files.folder.mkdir()
    files.config.write_text("[mlflow]\ndefault_permission = NO_PERMISSIONS\ndatabase_uri = sqlite:///x.db\n"
                            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    files.ensure()  # a folder made before readers were kept to reading gets the hook, and keeps the rest
    config = files.config.read_text()
    assert "authorization_function = pipeline.lab.auth:readers_read" in config and "sqlite:///x.db" in config
