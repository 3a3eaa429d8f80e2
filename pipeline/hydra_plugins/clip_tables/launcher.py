"""Hydra's submitit launchers (SLURM and local processes) that run one task per model, with failures reported
the way every command here reports them: one line per failed job or dead task, with its log path, and a non-zero
exit once the sweep's table of the finished jobs is written.

The plugin submits one array task per job: a 13-model x 38-dataset sweep would start 494 processes, each
importing torch and loading its model again. Here a task runs a group of jobs one after another (`group_by:
model`, the default; `jobs_per_task: N` caps a group), each through Hydra's own per-job path (its folder, its
config, its callbacks), in one process that keeps its libraries and its loaded model (the per-process registry,
`models.loading.LOADED_MODELS`). A failed job is reported and the next one runs. The task's time limit is
`timeout_min` per job times the largest group's size, and each model's tasks are named after it.

A task told to stop (preempted, warned of its time limit, cancelled) abandons the job in progress cleanly and is
requeued, by submitit or by SLURM; the requeued task skips the jobs its progress file lists as done (`tasks`).
The launcher watches every task (`watch`): a task that dies is reported from SLURM's state with the jobs it did
not finish, one SLURM cannot start is cancelled within `pending_limit_s`, and Ctrl-C cancels the sweep's tasks.
The jobs that finished are returned to Hydra, so the sweep's aggregate step builds the table from them; what did
not finish is written to the sweep's folder (`errors.FAILURES_FILE`), which ends the sweep with status 1.
The executor is built by `executor()`, which is also how a test renders the sbatch script without submitting it.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, run_job, setup_globals
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, LocalQueueConf, SlurmQueueConf
from omegaconf import OmegaConf, open_dict

from pipeline.errors import FAILURES_FILE, one_line

from hydra_plugins.clip_tables import watch
from hydra_plugins.clip_tables.tasks import GroupTask, JobDone, JobExited, progress_file

log = logging.getLogger(__name__)

# Launcher fields submitit's executor takes at construction rather than through update_parameters.
_INIT_KEYS = {"submitit_folder", "max_num_timeout"}
# This launcher's own fields, never handed to submitit.
_GROUPING_KEYS = {"group_by", "jobs_per_task", "pending_limit_s"}
GROUP_BY = ("model", "none")
NAME_PREFIX = "clip-tables"  # SLURM job names: clip-tables:<model>


@dataclass
class Grouping:
    group_by: str = "model"  # model: one task per model | none: one task per job (or per jobs_per_task jobs)
    jobs_per_task: Optional[int] = None  # at most this many jobs in one task
    pending_limit_s: float = 30.0  # a task PENDING this long for a reason waiting cannot clear is cancelled


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

    from hydra_plugins.clip_tables.sweeper import PlanningSweeper

    for plugin in (LocalLauncher, SlurmLauncher, PlanningSweeper):
        Plugins.instance().register(plugin)
    store_presets()


def store_presets() -> None:
    from hydra_plugins.clip_tables.sweeper import store_preset

    store_preset()
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


def task_label(overrides: Sequence[str], default: str | None) -> str:
    """What a task runs, for its SLURM job name: its model's preset, and the checkpoint's file stem when a sweep
    chooses the weights (`model.pretrained=`)."""
    chosen = dict(override.split("=", 1) for override in model_of(overrides))
    parts = [chosen.get("model") or default or "model"]
    if chosen.get("model.pretrained"):
        parts.append(Path(chosen["model.pretrained"]).stem)
    label = ":".join(parts)
    return "".join(char if char.isalnum() or char in "_.:+-" else "_" for char in label)[:80]


def request_of(params: Mapping[str, Any]) -> str:
    """The resources a task asks for, as the launcher's fields name them (for a one-line report)."""
    keys = ("partition", "nodes", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min", "constraint", "qos",
            "account")
    return " ".join(f"{key}={params[key]}" for key in keys if params.get(key) is not None)


class _Reporting:
    """Mixed into the plugin's launchers: submit every group, watch every task, return the jobs that finished and
    report the others on one line per cause."""

    _EXECUTOR: str
    job_numbers: list[int] | None = None  # the jobs' numbers in their sweep, where the sweeper served some

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
        numbers = self.job_numbers or range(initial_job_idx, initial_job_idx + len(job_overrides))
        self.job_numbers = None  # the sweeper's numbers hold for this launch alone
        for number, overrides in zip(numbers, job_overrides):
            log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
            arguments.append((list(overrides), "hydra.sweep.dir", number, f"job_id_for_{number}",
                              Singleton.get_state()))
        grouping = Grouping(**{key: self.params[key] for key in _GROUPING_KEYS if key in self.params})
        try:
            groups = group_jobs(job_overrides, grouping)
        except ValueError as exc:
            _fail([f"Error: {exc}"])
        largest = max(len(group) for group in groups)
        params = {**self.params, "timeout_min": int(self.params.get("timeout_min", 60)) * largest}
        log.info("%d jobs in %d tasks (group_by=%s, jobs_per_task=%s), up to %d min each", len(job_overrides),
                 len(groups), grouping.group_by, grouping.jobs_per_task, params["timeout_min"])
        tasks = self._submit(groups, arguments, params, sweep_dir)
        try:
            watch.wait(tasks, self._EXECUTOR == "slurm", grouping.pending_limit_s, request_of(params))
        except KeyboardInterrupt:
            for task in tasks:
                task.job.cancel(check=False)
            ids = ", ".join(str(task.job.job_id) for task in tasks)
            _record(sweep_dir, [], unfinished=len(job_overrides), interrupted=True)
            _fail([f"Error: interrupted: cancelled the sweep's {len(tasks)} task(s) ({ids}); the jobs that finished "
                   f"are in the store (python -m pipeline.aggregate rebuilds their table)"], status=130)
        return self._report(tasks, dict(zip(numbers, job_overrides)), sweep_dir)

    def _submit(self, groups: list[list[int]], arguments: list[tuple], params: Mapping[str, Any],
                sweep_dir: Path) -> list[watch.Task]:
        """One submission (a SLURM array) per model, its tasks named after it; an sbatch refusal is one line."""
        default = OmegaConf.select(self.config, "model.name", default=None)
        by_name: dict[str, list[list[int]]] = {}
        for group in groups:
            by_name.setdefault(task_label([str(o) for o in arguments[group[0]][0]], default), []).append(group)
        tasks: list[watch.Task] = []
        for name, named in by_name.items():
            built = executor(self._EXECUTOR, params)
            built.update_parameters(name=f"{NAME_PREFIX}:{name}")
            progress = [progress_file(sweep_dir, arguments[group[0]][2]) for group in named]
            try:
                with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's refusal itself
                    jobs = built.map_array(GroupTask(self), [[arguments[i] for i in group] for group in named],
                                           progress)
            except Exception as exc:
                for task in tasks:
                    task.job.cancel(check=False)
                _fail([f"Error: {self._EXECUTOR} refused the sweep's tasks: {one_line(exc)} (the request: "
                       f"{request_of(params)}); change hydra.launcher.* (docs/lab.md, \"Scheduler\")"])
            tasks += [watch.Task(job, [arguments[i][2] for i in group], watch.Progress(path), name,
                                 self._EXECUTOR == "slurm")
                      for job, group, path in zip(jobs, named, progress)]
        return tasks

    def _report(self, tasks: list[watch.Task], job_overrides: Mapping[int, Sequence[str]],
                sweep_dir: Path) -> list[JobReturn]:
        """The finished jobs' returns for Hydra; a line for each failed job and for each task that died."""
        returns: dict[int, JobReturn] = {}
        lines = []
        for task in tasks:
            lost = []
            for number, outcome in zip(task.numbers, task.outcomes or []):
                overrides = list(job_overrides[number])
                if isinstance(outcome, JobDone):
                    returns[number] = JobReturn(overrides=overrides, status=JobStatus.COMPLETED,
                                                _return_value=outcome.value)
                elif task.cause and outcome.message == task.cause:
                    lost.append(f"#{number}")
                else:
                    lines.append(f"Error: job #{number} ({' '.join(filter_overrides(overrides))}) failed: "
                                 f"{outcome.message} (log: {task.log_path})")
            if lost:  # a task that never started has no log
                log_path = f" (log: {task.log_path})" if Path(task.log_path).exists() else ""
                lines.append(f"Error: {len(lost)} of the {len(task.numbers)} jobs of task {task.name} did not finish "
                             f"({', '.join(lost)}): {task.cause}{log_path}")
        if lines:
            sys.stderr.flush()
            print("\n".join(lines), file=sys.stderr, flush=True)
            _record(sweep_dir, lines, unfinished=sum(len(task.numbers) for task in tasks) - len(returns),
                    interrupted=False)
        return [returns[number] for number in sorted(returns)]


def _record(sweep_dir: Path, lines: list[str], unfinished: int, interrupted: bool) -> None:
    """What did not finish, for the sweep's aggregate step (which then ends with status 1) and its sweep run."""
    (sweep_dir / FAILURES_FILE).write_text(json.dumps({"lines": lines, "unfinished": unfinished,
                                                       "interrupted": interrupted}, indent=2))


def _fail(lines: list[str], status: int = 1) -> None:
    sys.stderr.flush()
    print("\n".join(lines), file=sys.stderr, flush=True)
    raise SystemExit(status)


class LocalLauncher(_Reporting, submitit_launcher.LocalLauncher):
    pass


class SlurmLauncher(_Reporting, submitit_launcher.SlurmLauncher):
    pass
