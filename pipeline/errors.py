"""What every part shares about failure: `PipelineError` for a bad input or environment, and how it ends a
command: its one-line message as the last line of stderr, a non-zero exit, and the traceback in the job's log file
(Hydra's file handler) rather than on the terminal; Hydra's own refusals of a command line end the same way."""
from __future__ import annotations

import difflib
import functools
import logging
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:  # MLflow loads where the store is used: a table of result files never imports it
    from mlflow.exceptions import MlflowException


log = logging.getLogger("pipeline")


class PipelineError(RuntimeError):
    """A bad input or environment: the message says what was wrong and what to do."""


# What a launcher leaves in a sweep's folder when some jobs did not finish: the lines it reported and whether the
# sweep was interrupted. The sweep's aggregate step builds the table from the others, then ends with status 1.
FAILURES_FILE = "failures.json"


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
    message alone; so does a config Hydra cannot compose, before any task runs (`report_config_errors`).

    SystemExit is not an Exception, so Hydra neither prints its own report nor runs later jobs of the sweep."""
    report_config_errors()

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


# -- Hydra's own refusals: a misspelt option, a malformed override ---------------------------------------------
def report_config_errors() -> None:
    """Make Hydra's refusals of a command line (a misspelt option, a malformed override) one line each, as ours
    are. Hydra prints them itself before any task runs, in `run_and_report` (hydra/_internal/utils.py: a group's
    every option and the search path, up to 35 lines, no suggestion), which `hydra.main` looks up in its module at
    each call: wrapping it there reaches every entry point, and `reported`, which they all use, installs it once.
    HYDRA_FULL_ERROR=1 still shows Hydra's own report."""
    from hydra._internal import utils

    if not callable(getattr(utils, "run_and_report", None)) or getattr(utils.run_and_report, "one_line", False):
        return  # a Hydra without it (not 1.3) keeps its own report
    hydras = utils.run_and_report

    def run_and_report(func: Callable[[], Any]) -> Any:
        return hydras(functools.partial(_config_errors_in_one_line, func))  # a partial adds no traceback frame

    run_and_report.one_line = True  # type: ignore[attr-defined]
    utils.run_and_report = run_and_report


def _config_errors_in_one_line(func: Callable[[], Any]) -> Any:
    from hydra.errors import ConfigCompositionException, OverrideParseException, SearchPathException

    try:
        return func()
    except (ConfigCompositionException, OverrideParseException, SearchPathException) as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        _exit(exc, config_error(exc))


def config_error(exc: Exception) -> str:
    """What a Hydra composition or parsing error says, as one line: the override, the closest names, where to
    look."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(exc, OverrideParseException):
        reason = [line for line in exc.message.splitlines()
                  if line.strip() and not line.startswith(("Error parsing override", "See https://"))]
        said = reason[0].split(" expecting ")[0].strip() if reason else "it does not parse"
        return (f"the override {exc.override!r} is malformed ({said[:100]}): write key=value or group=option, and "
                f"quote a value that holds brackets, commas or '=' "
                f"(https://hydra.cc/docs/advanced/override_grammar/basic/)")
    if isinstance(exc, MissingConfigException) and "/" in (exc.missing_cfg_file or ""):
        return _missing_option(exc)
    text = str(exc).split("\nConfig search path:")[0].split("\nSearch path:")[0]
    message = " ".join(text.split())[:300]
    cause = exc.__cause__
    parent, key = getattr(cause, "parent_node", None), getattr(cause, "key", None)
    if isinstance(key, str) and hasattr(parent, "keys"):  # a setting that does not exist: name the close ones
        close = difflib.get_close_matches(key, [str(k) for k in parent.keys()], n=3)
        if close:
            message += f"; did you mean {_either(close)}?"
    return message


def _missing_option(exc: Any) -> str:
    """`model=vit_b_32_opnai`: the group's closest options (nested ones, `vtab/pets`, included) and where to list
    them all."""
    found = re.search(r"Available options in '([^']+)'", str(exc))
    group = found.group(1) if found else exc.missing_cfg_file.rpartition("/")[0]
    option = exc.missing_cfg_file[len(group) + 1:]
    return unknown_option(group, option, _group_options(group) or list(exc.options or ()))


def unknown_option(group: str, option: str, options: list[str]) -> str:
    """A choice that is not an option of its group, with the closest ones and where to list them all."""
    listing = f"`{_command()} --{'hydra-' if group.startswith('hydra/') else ''}help` lists every group's options"
    if not option:
        return f"{group}= names no option of {group}/: give one ({listing})"
    close = difflib.get_close_matches(option, options, n=3)
    guess = f"; did you mean {_either(close)}?" if close else ""
    return f"{group}={option} is not an option of {group}/{guess} ({listing})"


def check_sweep_choices(task_overrides: list[str], search_path: Sequence[str] = ()) -> None:
    """A multirun's swept choices (`model=a,b`) are composed by Hydra only after the sweep has started (its store,
    its folder, its run); each is checked against its group's options here, before any of that exists, those a
    `hydra.searchpath` folder adds included (a search path Hydra alone can read, `pkg://`, is left to Hydra)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if any(not entry.startswith("file://") for entry in search_path):
        return
    folders = [Path(entry.removeprefix("file://")) for entry in search_path]
    for override in OverridesParser.create().parse_overrides(task_overrides):
        group = override.get_key_element()
        options = _group_options(group) if override.is_sweep_override() else []
        if not options:  # not a config group (a value sweep), or not swept: Hydra checks those first
            continue
        options += [str(path.relative_to(folder / group).with_suffix("")) for folder in folders
                    for path in (folder / group).rglob("*.yaml")]
        for option in override.sweep_string_iterator():
            if option not in options:
                raise PipelineError(unknown_option(group, option, options))


def _either(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _group_options(group: str) -> list[str]:
    """Every option of a config group, those of its subgroups as `sub/name`, as Hydra's config loader finds them."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.object_type import ObjectType

    if not GlobalHydra.instance().is_initialized():
        return []
    loader = GlobalHydra.instance().config_loader()

    def walk(path: str, prefix: str) -> list[str]:
        names = [prefix + name for name in loader.get_group_options(path, ObjectType.CONFIG)]
        for sub in loader.get_group_options(path, ObjectType.GROUP):
            names += walk(f"{path}/{sub}", f"{prefix}{sub}/")
        return names

    return walk(group, "")


def _command() -> str:
    """How this command was started: `python -m pipeline`, `python -m pipeline.aggregate`."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is None:
        return f"python {sys.argv[0]}"
    return f"python -m {spec.name.removesuffix('.__main__')}"
