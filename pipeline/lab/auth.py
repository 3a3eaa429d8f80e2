"""Authentication for the lab's tracking server: MLflow's basic-auth app, with everything it needs kept in the
server's folder. The app's config (whose users database lives beside it), the Flask secret key and the admin's
password are generated at first start into files only their owner can read; they reach the server through its
environment, never its command line or its log. A new user can read nothing until granted (`default_permission =
NO_PERMISSIONS`); `make server-user` adds workers (EDIT on the experiment) and readers (READ). Readers only read:
the app's authorization hook (`readers_read`) refuses them every request that writes, anywhere on the server.
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
CERTIFICATE_VARIABLE = "MLFLOW_TRACKING_SERVER_CERT_PATH"
AUTHORIZATION_FUNCTION = "pipeline.lab.auth:readers_read"
# What a reader may ask: MLflow reads by GET, and by POST where a search's filter may be long; its GraphQL
# endpoint, which the UI reads runs through, has no mutation but a test one.
READ_METHODS = {"GET", "HEAD", "OPTIONS"}
READ_POSTS = ("search", "get-latest-versions", "presigned-download-url", "batchGetInfos")
WRITERS = {"EDIT", "MANAGE"}  # the permissions on the project's experiment that make a user one who writes


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
        """The app's config, made once; a folder made before readers were kept to reading gets the hook."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o700)
        config = configparser.ConfigParser()
        if self.config.is_file():
            config.read(self.config)
            if config["mlflow"].get("authorization_function") == AUTHORIZATION_FUNCTION:
                return
        else:
            # Each request's password is checked with PBKDF2 unless remembered: a worker makes hundreds of requests
            # per job, so a check is remembered for a minute (a changed password takes as long to apply).
            config["mlflow"] = {"default_permission": "NO_PERMISSIONS",
                                "database_uri": f"sqlite:///{self.folder / 'users.db'}", "admin_username": ADMIN,
                                "auth_cache_ttl_seconds": "60"}
        config["mlflow"]["authorization_function"] = AUTHORIZATION_FUNCTION
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
    """Create `name` on the server that runs from `folder` (or, if it exists, change its role), grant it `role`'s
    permission on the experiment, and write its environment (user, password, the certificate to trust) to a file
    only its owner can read (a user that existed keeps its password and file); every user's file gets the server's
    current certificate."""
    from mlflow.exceptions import MlflowException

    if role not in ROLES:
        raise PipelineError(f"role={role!r} is not one of {', '.join(ROLES)} (worker: EDIT, reader: READ)")
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise PipelineError(f"name={name!r}: a user name is letters, digits, - and _")
    if name == ADMIN:
        raise PipelineError(f"name={ADMIN} is the server's admin; choose another name")
    server = recorded_server(folder)
    if not server["auth"]:
        raise PipelineError(f"the server of {folder} runs without authentication; restart it with auth=true")
    files = AuthFiles(folder / "auth")
    env = files.users / f"{name}.env"
    password = secrets.token_urlsafe(18)
    try:
        with acting_as(files.admin(server["certificate"])):
            auth_client(str(server["url"])).create_user(name, password)
        new = True
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise PipelineError(f"cannot add user {name} on {server['url']}: {exc.message[:200]} (is `make server` "
                                f"running from {folder}?)") from exc
        new = False
    try:
        grant(folder, name, str(server["experiment_id"]), ROLES[role])
    except MlflowException as exc:
        raise PipelineError(f"cannot grant user {name} {ROLES[role]} on {server['url']}: {exc.message[:200]}") from exc
    if new:
        files.users.mkdir(parents=True, exist_ok=True)
        write_private(env, f"MLFLOW_TRACKING_USERNAME={name}\nMLFLOW_TRACKING_PASSWORD={password}\n")
    refresh_environments(files.users, server["certificate"])
    return env


def refresh_environments(users: Path, certificate: str | None) -> list[str]:
    """Every user's environment file names the certificate the server presents now (none without TLS): a file
    written before TLS was turned on, or before the certificate changed, is brought up to date. The users whose
    file changed."""
    changed = []
    for env in sorted(users.glob("*.env")) if users.is_dir() else []:
        lines = [line for line in env.read_text().splitlines() if not line.startswith(f"{CERTIFICATE_VARIABLE}=")]
        if certificate:
            lines.append(f"{CERTIFICATE_VARIABLE}={certificate}")
        text = "\n".join(lines) + "\n"
        if text != env.read_text():
            write_private(env, text)
            changed.append(env.stem)
    return changed


def auth_client(url: str):
    """MLflow's client of the basic-auth app's own API (users, permissions), for the user in the environment."""
    with warnings.catch_warnings():  # the server package's own deprecation notices, not this command's business
        warnings.simplefilter("ignore")
        from mlflow.server.auth.client import AuthServiceClient
    return AuthServiceClient(url)


def grant(folder: Path, name: str, experiment_id: str, permission: str) -> None:
    """Give user `name` `permission` on an experiment of the server that runs from `folder`, as its admin, in
    place of the one it had there (MLflow's API grants only where nothing is granted yet)."""
    from mlflow.exceptions import MlflowException

    server = recorded_server(folder)
    with acting_as(AuthFiles(folder / "auth").admin(server["certificate"])):
        client = auth_client(str(server["url"]))
        try:
            client.grant_user_permission(name, "experiment", experiment_id, permission)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            client.revoke_user_permission(name, "experiment", experiment_id)
            client.grant_user_permission(name, "experiment", experiment_id, permission)


def is_read(method: str, path: str) -> bool:
    """Whether MLflow answers this request without writing."""
    last = path.rstrip("/").rsplit("/", 1)[-1]
    return (method in READ_METHODS or path.endswith("/graphql")
            or (method == "POST" and (last.startswith("search") or last in READ_POSTS)))


def may_write(store, username: str, config_path: Path) -> bool:
    """The admin, and a user with EDIT (or MANAGE) on the project's experiment (recorded in `server.json` beside
    the app's folder) or on every experiment."""
    if store.get_user(username).is_admin:
        return True
    try:
        experiment = str(json.loads((config_path.parent.parent / SERVER_FILE).read_text())["experiment_id"])
    except (OSError, ValueError, KeyError):  # the server has not recorded its experiment yet: only the admin writes
        return False
    return any(grant.experiment_id in (experiment, "*") and grant.permission in WRITERS
               for grant in store.list_experiment_permissions(username))


def readers_read():
    """The server's `authorization_function` (basic_auth.ini): MLflow's basic authentication, and then a reader (a
    user without EDIT on the project's experiment) is refused every request that writes, with 403. MLflow's app
    lets any user create experiments (and registered models, prompts, ...) and makes the creator their manager, so
    a reader could otherwise log runs, tags and artifacts into an experiment of its own. The hook is MLflow's way
    to add a check of one's own: it runs before the app's per-endpoint checks, on its Flask and FastAPI routes
    alike, and a response it returns is the answer."""
    from flask import Response, g, request
    from mlflow.server.auth import authenticate_request_basic_auth, store
    from werkzeug.datastructures import Authorization

    authorization = authenticate_request_basic_auth()
    if not isinstance(authorization, Authorization) or is_read(request.method, request.path):
        return authorization
    if "clip_tables_may_write" not in g:  # the app's checks ask again within one request
        g.clip_tables_may_write = may_write(store, authorization.username, Path(os.environ["MLFLOW_AUTH_CONFIG_PATH"]))
    if g.clip_tables_may_write:
        return authorization
    message = (f"user {authorization.username!r} reads only (it lacks EDIT on the project's experiment), so it may "
               f"not {request.method} {request.path}; the server's admin makes it a worker with `make server-user "
               f"ARGS=\"name={authorization.username} role=worker\"`")
    return Response(json.dumps({"error_code": "PERMISSION_DENIED", "message": message}), status=403,
                    mimetype="application/json")
