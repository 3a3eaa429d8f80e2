"""How a bad input ends a command: its one-line message as the last line of stderr, a non-zero exit, and the
traceback in the job's log file (Hydra's file handler) rather than on the terminal."""
from __future__ import annotations

import functools
import logging
import sys
from typing import Any, Callable

from pipeline import PipelineError

log = logging.getLogger("pipeline")


def _to_log_files(exc: BaseException) -> None:
    # Hydra gives the root logger a console handler and a file handler; the traceback goes to the file only.
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (exc,), (type(exc), exc, exc.__traceback__))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def reported(task: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a Hydra task function: a `PipelineError` exits with status 1 and its message alone.

    SystemExit is not an Exception, so Hydra neither prints its own report nor runs later jobs of the sweep."""

    @functools.wraps(task)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except PipelineError as exc:
            _to_log_files(exc)
            sys.stderr.flush()
            message = " ".join(str(exc).split("\n"))  # one line, whatever a library put in the message
            print(f"Error: {message}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None

    return wrapper
