"""What every part shares about failure: `PipelineError` for a bad input or environment, and how it ends a
command: its one-line message as the last line of stderr, a non-zero exit, and the traceback in the job's log file
(Hydra's file handler) rather than on the terminal."""
from __future__ import annotations

import functools
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # MLflow loads where the store is used: a table of result files never imports it
    from mlflow.exceptions import MlflowException


log = logging.getLogger("pipeline")


class PipelineError(RuntimeError):
    """A bad input or environment: the message says what was wrong and what to do."""


class Interrupted(BaseException):
    """The process was told to stop (SIGTERM, a scheduler's preemption or time-limit signal) while a job ran: it
    unwinds the job like Ctrl-C does, past every `except Exception`, so its runs end KILLED with this reason and its
    claims are released on the way out."""


def one_line(error: BaseException | str) -> str:
    """An error's message on one line: a DataLoader worker's re-raised error carries the worker's whole
    traceback, whose last line is the actual error; other multi-line messages keep their first line."""
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[-1] if "Traceback" in text else lines[0]


def _to_log_files(exc: BaseException) -> None:
    # Hydra gives the root logger a console handler and a file handler; the traceback goes to the file only.
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (exc,), (type(exc), exc, exc.__traceback__))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _exit(exc: BaseException, message: str) -> None:
    _to_log_files(exc)
    sys.stderr.flush()
    message = " ".join(message.split("\n"))  # one line, whatever a library put in the message
    print(f"Error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1) from None


# What the server sends back where authentication is on: the variables MLflow's client reads the credentials from.
CREDENTIALS = "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
CERTIFICATE = "MLFLOW_TRACKING_SERVER_CERT_PATH"


def is_mlflow_error(exc: BaseException) -> bool:
    """Whether MLflow raised it: only possible once MLflow is imported, which a table of result files never does."""
    module = sys.modules.get("mlflow.exceptions")
    return module is not None and isinstance(exc, module.MlflowException)


def store_failure(exc: MlflowException) -> str:
    """What an MLflow error says about where the fault is: the store (down, refusing), the credentials, the
    user's permissions, the server's certificate, or MLflow's own client inside this process."""
    message = one_line(exc)[:300]
    cause = exc.__cause__ or exc.__context__
    code = getattr(exc, "error_code", "")
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if code == "UNAUTHENTICATED":
        said = f"the credentials of user {user!r} were refused" if user else "it requires credentials"
        return (f"the MLflow tracking server refused the request: {said}; set {CREDENTIALS} to a user of that server "
                f"(its admin adds one with `make server-user`)")
    if code == "PERMISSION_DENIED":
        return (f"user {user!r} lacks a permission this step needs on the tracking server ({message}); a worker needs "
                f"EDIT on the experiment, a reader READ: its admin grants them with `make server-user`")
    if _is_certificate_error(cause):
        return (f"the tracking server's certificate is not trusted ({one_line(cause)[-160:]}); set {CERTIFICATE} to "
                f"the certificate (or its CA bundle) the server presents")
    if cause is not None and not _is_request_error(cause):
        return (f"MLflow's client failed inside this process ({type(cause).__name__}: {one_line(cause)[:200]}), not "
                f"the tracking store; rerun, and report it if it persists (every stage that finished is served from "
                f"the cache)")
    return (f"the MLflow tracking store failed: {message}. Check that it is up (tracking.uri) and rerun; every stage "
            f"that finished is served from the cache")


def _is_request_error(error: BaseException) -> bool:
    """A failure of the connection to the store (refused, reset, timed out), as `requests` reports it."""
    import requests

    return isinstance(error, (requests.exceptions.RequestException, OSError))


def _is_certificate_error(error: BaseException | None) -> bool:
    import ssl

    while error is not None:
        if isinstance(error, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def reported(task: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a Hydra task function: a `PipelineError` (or a tracking store failure) exits with status 1 and its
    message alone.

    SystemExit is not an Exception, so Hydra neither prints its own report nor runs later jobs of the sweep."""

    @functools.wraps(task)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except PipelineError as exc:
            _exit(exc, str(exc))
        except Exception as exc:  # the store refused, went away mid-job, or MLflow's client itself failed
            if not is_mlflow_error(exc):
                raise
            _exit(exc, store_failure(exc))

    return wrapper


def reported_hook(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wrap a Hydra callback hook so that its failure ends the command with status 1. Hydra turns an exception a
    callback raises into a warning and exits 0, so a sweep whose aggregate step failed would pass for a success
    (SystemExit is not an Exception, so it gets through). A bad input reads as one line; anything else is a bug,
    shown with its traceback."""

    def decorate(hook: Callable[..., Any]) -> Callable[..., Any]:
        checked = reported(hook)

        @functools.wraps(hook)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return checked(*args, **kwargs)
            except Exception as exc:
                log.error("%s failed", what, exc_info=exc)
                print(f"Error: {what} failed: {type(exc).__name__}: {one_line(exc)[:300]}", file=sys.stderr,
                      flush=True)
                raise SystemExit(1) from None

        return wrapper

    return decorate
