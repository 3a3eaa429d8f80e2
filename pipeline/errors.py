"""What every part shares about failure: `PipelineError` for a bad input or environment, and how it ends a
command: its one-line message as the last line of stderr, a non-zero exit, and the traceback in the job's log file
(Hydra's file handler) rather than on the terminal."""
from __future__ import annotations

import functools
import logging
import sys
from typing import Any, Callable

from mlflow.exceptions import MlflowException

log = logging.getLogger("pipeline")


class PipelineError(RuntimeError):
    """A bad input or environment: the message says what was wrong and what to do."""


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
        except MlflowException as exc:  # the store went away or refused mid-job, after MLflow's own retries
            _exit(exc, f"the MLflow tracking store failed: {one_line(exc)[:300]}. Check that it is up (tracking.uri) "
                       f"and rerun; every stage that finished is served from the cache")

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
