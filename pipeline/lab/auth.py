"""Authentication for the lab's tracking server: MLflow's basic-auth app, with everything it needs kept in the
server's folder. The app's config (whose users database lives beside it), the Flask secret key and the admin's
password are generated at first start into files only their owner can read; they reach the server through its
environment, never its command line or its log. A new user can read nothing until granted (`default_permission =
NO_PERMISSIONS`); `make server-user` adds workers (EDIT on the experiment) and readers (READ).
"""
from __future__ import annotations

import configparser
import json
import os
import secrets
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from pipeline.errors import PipelineError
from pipeline.lab.postgres import write_private
from pipeline.store.tracking import EDIT, READ, Credentials

ADMIN = "admin"
ROLES = {"worker": EDIT, "reader": READ}  # what each kind of user needs on the experiment (docs/lab.md)
SERVER_FILE = "server.json"  # where a running server says where it is, for `make server-user`


@dataclass(frozen=True)
class AuthFiles:
    """The basic-auth app's files under `<server folder>/auth/`."""

    folder: Path

    @property
    def config(self) -> Path:
        return self.folder / "basic_auth.ini"

    @property
    def users(self) -> Path:
        return self.folder / "users"

    def secret(self, name: str) -> str:
        """A generated secret (`secret_key`, `admin_password`): made once, kept across restarts."""
        path = self.folder / name
        if not path.is_file():
            write_private(path, secrets.token_urlsafe(32) + "\n")
        return path.read_text().strip()

    def ensure(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o700)
        if not self.config.is_file():
            config = configparser.ConfigParser()
            # Each request's password is checked with PBKDF2 unless remembered: a worker makes hundreds of requests
            # per job, so a check is remembered for a minute (a changed password takes as long to apply).
            config["mlflow"] = {"default_permission": "NO_PERMISSIONS",
                                "database_uri": f"sqlite:///{self.folder / 'users.db'}", "admin_username": ADMIN,
                                "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
                                "auth_cache_ttl_seconds": "60"}
            with open(self.config, "w") as handle:
                config.write(handle)

    def server_env(self) -> dict[str, str]:
        """What the server process needs: its config, secret key and admin password."""
        self.ensure()
        return {"MLFLOW_AUTH_CONFIG_PATH": str(self.config),
                "MLFLOW_FLASK_SERVER_SECRET_KEY": self.secret("secret_key"),
                "MLFLOW_AUTH_ADMIN_PASSWORD": self.secret("admin_password")}

    def admin(self, certificate: str | None) -> Credentials:
        """The admin, as the server's own machine reaches it on loopback."""
        return Credentials(ADMIN, self.secret("admin_password"), certificate, verify=False)


@contextmanager
def acting_as(credentials: Credentials) -> Iterator[None]:
    """MLflow's clients read the user from the environment: set it for the block, then put back what was there."""
    names = {"MLFLOW_TRACKING_USERNAME": credentials.username, "MLFLOW_TRACKING_PASSWORD": credentials.password,
             "MLFLOW_TRACKING_SERVER_CERT_PATH": credentials.certificate if credentials.verify else None,
             "MLFLOW_TRACKING_INSECURE_TLS": None if credentials.verify else "true"}
    saved = {name: os.environ.get(name) for name in names}
    try:
        with warnings.catch_warnings():  # the server's own process, on loopback: its certificate names another host
            warnings.filterwarnings("ignore", message="Unverified HTTPS request")
            set_environ(names)
            yield
    finally:
        set_environ(saved)


def set_environ(values: Mapping[str, str | None]) -> None:
    """Set each variable, or unset it where its value is None."""
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def record_server(folder: Path, **recorded: object) -> None:
    """Where the running server is (`url` on this machine, on loopback; `worker_url` for other machines), its
    experiment, whether it authenticates, the certificate workers trust, and where it keeps runs and artifacts."""
    write_private(folder / SERVER_FILE, json.dumps(recorded, indent=2))


def recorded_server(folder: Path) -> Mapping[str, object]:
    path = folder / SERVER_FILE
    if not path.is_file():
        raise PipelineError(f"no tracking server has run from {folder} (no {SERVER_FILE}); start it with `make server`")
    return json.loads(path.read_text())


def add_user(folder: Path, name: str, role: str) -> Path:
    """Create `name` on the server that runs from `folder`, grant it `role`'s permission on the experiment, and
    write its environment (user, password, the certificate to trust) to a file only its owner can read."""
    from mlflow.exceptions import MlflowException

    if role not in ROLES:
        raise PipelineError(f"role={role!r} is not one of {', '.join(ROLES)} (worker: EDIT, reader: READ)")
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise PipelineError(f"name={name!r}: a user name is letters, digits, - and _")
    server = recorded_server(folder)
    if not server["auth"]:
        raise PipelineError(f"the server of {folder} runs without authentication; restart it with auth=true")
    files = AuthFiles(folder / "auth")
    password = secrets.token_urlsafe(18)
    try:
        with acting_as(files.admin(server["certificate"])):
            auth_client(str(server["url"])).create_user(name, password)
        grant(folder, name, str(server["experiment_id"]), ROLES[role])
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_ALREADY_EXISTS":
            raise PipelineError(f"user {name} exists already on {server['url']}; choose another name") from None
        raise PipelineError(f"cannot add user {name} on {server['url']}: {exc.message[:200]} (is `make server` "
                            f"running from {folder}?)") from exc
    files.users.mkdir(parents=True, exist_ok=True)
    env = files.users / f"{name}.env"
    lines = [f"MLFLOW_TRACKING_USERNAME={name}", f"MLFLOW_TRACKING_PASSWORD={password}"]
    if server["certificate"]:
        lines.append(f"MLFLOW_TRACKING_SERVER_CERT_PATH={server['certificate']}")
    write_private(env, "\n".join(lines) + "\n")
    return env


def auth_client(url: str):
    """MLflow's client of the basic-auth app's own API (users, permissions), for the user in the environment."""
    with warnings.catch_warnings():  # the server package's own deprecation notices, not this command's business
        warnings.simplefilter("ignore")
        from mlflow.server.auth.client import AuthServiceClient
    return AuthServiceClient(url)


def grant(folder: Path, name: str, experiment_id: str, permission: str) -> None:
    """Give user `name` `permission` on an experiment of the server that runs from `folder`, as its admin."""
    server = recorded_server(folder)
    with acting_as(AuthFiles(folder / "auth").admin(server["certificate"])):
        auth_client(str(server["url"])).grant_user_permission(name, "experiment", experiment_id, permission)
