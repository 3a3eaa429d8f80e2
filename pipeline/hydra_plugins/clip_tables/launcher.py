"""Hydra's submitit launchers (SLURM and local processes) that run one task per model, with failures reported
the way every command here reports them: one line per failed job, with its log path, and a non-zero exit.

The plugin submits one array task per job: a 13-model x 38-dataset sweep would start 494 processes, each
importing torch and loading its model again. Here a task runs a group of jobs one after another (`group_by:
model`, the default; `jobs_per_task: N` caps a group), each through Hydra's own per-job path (its folder, its
config, its callbacks), in one process that keeps its libraries and its loaded model (the per-process registry,
`models.loading.LOADED_MODELS`). A failed job is reported and the next one runs. The task's time limit is
`timeout_min` per job times the largest group's size. A requeued task (preempted, or past its time) runs its
whole group again: the jobs that had finished are served from the cache, in seconds.

The plugin's own `launch` raises the first failed job's whole stderr as a traceback and leaves the other jobs'
results unread; these subclasses wait for every task, then name each failed job. The executor is built by
`executor()`, which is also how a test renders the sbatch script without submitting it.
"""
from __future__ import annotations

import logging
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, run_job, setup_globals
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, LocalQueueConf, SlurmQueueConf
from omegaconf import OmegaConf, open_dict

from pipeline.errors import one_line

log = logging.getLogger(__name__)

# Launcher fields submitit's executor takes at construction rather than through update_parameters.
_INIT_KEYS = {"submitit_folder", "max_num_timeout"}
# The grouping: this launcher's own fields, never handed to submitit.
_GROUPING_KEYS = {"group_by", "jobs_per_task"}
GROUP_BY = ("model", "none")


@dataclass
class Grouping:
    group_by: str = "model"  # model: one task per model | none: one task per job (or per jobs_per_task jobs)
    jobs_per_task: Optional[int] = None  # at most this many jobs in one task


# The plugin's presets under the same names, with the grouping fields: Hydra validates conf/hydra/launcher/*.yaml
# against these (`install` registers them after the plugin's own, which they replace).
@dataclass
class GroupedLocalConf(LocalQueueConf, Grouping):
    _target_: str = "hydra_plugins.clip_tables.launcher.LocalLauncher"


@dataclass
class GroupedSlurmConf(SlurmQueueConf, Grouping):
    _target_: str = "hydra_plugins.clip_tables.launcher.SlurmLauncher"


def install() -> None:
    """Register these launchers and their presets with Hydra. Hydra finds plugins by walking the hydra_plugins
    namespace, which a PEP 660 editable install (`pip install -e`) hides from it (facebookresearch/hydra#3252), so
    the launchers are registered by hand; and that walk executes every plugin module again, the submitit plugin's
    presets included, so ours are stored after it (`Plugins.instance()` walks once)."""
    from hydra.core.plugins import Plugins

    for launcher in (LocalLauncher, SlurmLauncher):
        Plugins.instance().register(launcher)
    store_presets()


def store_presets() -> None:
    store = ConfigStore.instance()
    store.store(group="hydra/launcher", name="submitit_local", node=GroupedLocalConf(), provider="clip_tables")
    store.store(group="hydra/launcher", name="submitit_slurm", node=GroupedSlurmConf(), provider="clip_tables")


def model_of(overrides: Sequence[str]) -> tuple[str, ...]:
    """The overrides that choose a job's model (`model=...`, `model.pretrained=...`): its group's key."""
    chosen = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key == "model" or key.startswith("model."):
            chosen.append(override)
    return tuple(sorted(chosen))


def group_jobs(job_overrides: Sequence[Sequence[str]], grouping: Grouping) -> list[list[int]]:
    """Job indexes per task, in job order: by model (first appearance), each group cut into `jobs_per_task`."""
    if grouping.group_by not in GROUP_BY:
        raise ValueError(f"hydra.launcher.group_by={grouping.group_by!r}: use one of {', '.join(GROUP_BY)}")
    if grouping.jobs_per_task is not None and grouping.jobs_per_task < 1:
        raise ValueError(f"hydra.launcher.jobs_per_task={grouping.jobs_per_task}: give a number of jobs >= 1, or null")
    groups: dict[Any, list[int]] = {}
    for index, overrides in enumerate(job_overrides):
        key = model_of(overrides) if grouping.group_by == "model" else "all"
        groups.setdefault(key, []).append(index)
    size = grouping.jobs_per_task or (1 if grouping.group_by == "none" else None)
    tasks = []
    for indexes in groups.values():
        step = size or len(indexes)
        tasks += [indexes[start:start + step] for start in range(0, len(indexes), step)]
    return tasks


def executor(cluster: str, params: Mapping[str, Any]):
    """A submitit executor for `cluster` ("slurm" or "local") with the launcher config's parameters; fields that
    are not shared by every submitit executor are the cluster's own (`slurm_partition`, ...)."""
    import submitit

    init = {"folder": params["submitit_folder"]}
    if "max_num_timeout" in params:
        init[f"{cluster}_max_num_timeout"] = params["max_num_timeout"]
    built = submitit.AutoExecutor(cluster=cluster, **init)
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    built.update_parameters(**{key if key in shared else f"{cluster}_{key}": value
                               for key, value in params.items() if key not in _INIT_KEYS | _GROUPING_KEYS})
    return built


def failure_line(job: Any, exc: BaseException) -> str:
    """What a failed task said: the `Error: ...` line our commands end with, else the last line of its stderr."""
    stderr = Path(job.paths.stderr)
    return said(stderr.read_text(errors="replace") if stderr.exists() else "") or one_line(exc)


def said(text: str) -> str:
    """The last `Error: ...` line of a log, else its last line."""
    lines = text.splitlines()
    errors = [line.removeprefix("Error: ") for line in lines if line.startswith("Error: ")]
    return (errors[-1] if errors else next((line for line in reversed(lines) if line.strip()), "")).strip()


@dataclass(frozen=True)
class JobFailed:
    """A job of a task that raised: what it said, read from the task's stderr."""

    message: str


class GroupTask:
    """What one submitit task runs: its jobs one after another, each through the launcher's per-job path."""

    def __init__(self, launcher: "_Reporting") -> None:
        self.launcher = launcher

    def __call__(self, jobs: Sequence[tuple]) -> list[JobReturn | JobFailed]:
        import submitit

        stderr = Path(submitit.JobEnvironment().paths.stderr)
        outcomes: list[JobReturn | JobFailed] = []
        for arguments in jobs:
            sys.stderr.flush()
            start = stderr.stat().st_size if stderr.exists() else 0
            try:
                outcomes.append(self.launcher(*arguments))
            except Exception as exc:  # this job is reported; the next one runs
                if not isinstance(exc, JobExited):  # its whole story goes to the task's log (it said its own line)
                    traceback.print_exc()
                sys.stderr.flush()
                text = stderr.read_bytes()[start:].decode(errors="replace") if stderr.exists() else ""
                outcomes.append(JobFailed(said(text) or f"{type(exc).__name__}: {one_line(exc)}"))
        return outcomes

    def checkpoint(self, jobs: Sequence[tuple]) -> Any:
        """Requeued (preempted or past its time): the whole group again; finished jobs are served from the cache."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, jobs)


class JobExited(RuntimeError):
    """A job ended with `SystemExit` (a bad input, already reported on its stderr)."""


class _Reporting:
    """Mixed into the plugin's launchers: submit every job, wait for all, then report each failure on one line."""

    _EXECUTOR: str

    def __call__(self, sweep_overrides: list[str], job_dir_key: str, job_num: int, job_id: str,
                 singleton_state: dict) -> JobReturn:
        """Runs in the task, once per job: the plugin's per-job path (`BaseSubmititLauncher.__call__`), but with
        these presets stored after `Singleton.set_state`, which scans Hydra's plugins again and so stores the
        plugin's own presets over ours. A SystemExit (how our commands end on a bad input) would end the task and
        its remaining jobs; as an exception, `GroupTask` reports it and runs the next job."""
        import submitit

        Singleton.set_state(singleton_state)
        store_presets()
        setup_globals()
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, sweep_overrides)
        with open_dict(sweep_config.hydra.job) as job:
            job.id = submitit.JobEnvironment().job_id
            sweep_config.hydra.job.num = job_num
        try:
            return run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=sweep_config,
                           job_dir_key=job_dir_key, job_subdir_key="hydra.sweep.subdir")
        except SystemExit as exc:
            raise JobExited(f"exit status {exc.code}") from None

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("Submitit '%s' sweep output dir: %s", self._EXECUTOR, sweep_dir)
        arguments = []
        for number, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
            arguments.append((list(overrides), "hydra.sweep.dir", number, f"job_id_for_{number}",
                              Singleton.get_state()))
        grouping = Grouping(**{key: self.params[key] for key in _GROUPING_KEYS if key in self.params})
        try:
            tasks = group_jobs(job_overrides, grouping)
        except ValueError as exc:
            print(f"Error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(1) from None
        largest = max(len(task) for task in tasks)
        params = {**self.params, "timeout_min": int(self.params.get("timeout_min", 60)) * largest}
        log.info("%d jobs in %d tasks (group_by=%s, jobs_per_task=%s), up to %d min each", len(job_overrides),
                 len(tasks), grouping.group_by, grouping.jobs_per_task, params["timeout_min"])
        submitted = executor(self._EXECUTOR, params).map_array(GroupTask(self), [[arguments[i] for i in task]
                                                                                  for task in tasks])
        returns: dict[int, JobReturn] = {}
        failures = []
        for submitted_task, task in zip(submitted, tasks):
            try:
                outcomes = submitted_task.results()[0]
            except Exception as exc:  # the task itself died (killed, out of memory): every job it had is lost
                outcomes = [JobFailed(failure_line(submitted_task, exc))] * len(task)
            for index, outcome in zip(task, outcomes):
                overrides = job_overrides[index]
                described = f"job #{initial_job_idx + index} ({' '.join(filter_overrides(overrides))})"
                log_path = submitted_task.paths.stderr
                if isinstance(outcome, JobFailed):
                    failures.append(f"Error: {described} failed: {outcome.message} (log: {log_path})")
                elif outcome.status == JobStatus.FAILED:  # an unexpected error, which Hydra's run_job caught
                    error = outcome._return_value
                    failures.append(f"Error: {described} failed: {type(error).__name__}: {one_line(error)} "
                                    f"(log: {log_path})")
                else:
                    returns[index] = outcome
        if failures:
            sys.stderr.flush()
            print("\n".join(failures), file=sys.stderr, flush=True)
            raise SystemExit(1)
        return [returns[index] for index in sorted(returns)]


class LocalLauncher(_Reporting, submitit_launcher.LocalLauncher):
    pass


class SlurmLauncher(_Reporting, submitit_launcher.SlurmLauncher):
    pass
