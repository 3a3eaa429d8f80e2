"""Hydra's submitit launchers (SLURM and local processes), with failures reported the way every command here
reports them: one line per failed job, with its log path, and a non-zero exit.

The plugin's own `launch` raises the first failed job's whole stderr as a traceback and leaves the other jobs'
results unread; these subclasses wait for every job, then name each failure. The executor is built by
`executor()`, which is also how a test renders the sbatch script without submitting it.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

from pipeline.errors import one_line

log = logging.getLogger(__name__)

# Launcher fields submitit's executor takes at construction rather than through update_parameters.
_INIT_KEYS = {"submitit_folder", "max_num_timeout"}


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
                               for key, value in params.items() if key not in _INIT_KEYS})
    return built


def failure_line(job: Any, exc: BaseException) -> str:
    """What a failed job said: the `Error: ...` line our commands end with, else the last line of its stderr."""
    stderr = Path(job.paths.stderr)
    lines = stderr.read_text(errors="replace").splitlines() if stderr.exists() else []
    said = [line.removeprefix("Error: ") for line in lines if line.startswith("Error: ")]
    last = said[-1] if said else next((line for line in reversed(lines) if line.strip()), "")
    return last.strip() or str(exc).strip().splitlines()[0]


class JobExited(RuntimeError):
    """A job ended with `SystemExit` (a bad input, already reported on its stderr)."""


class _Reporting:
    """Mixed into the plugin's launchers: submit every job, wait for all, then report each failure on one line."""

    _EXECUTOR: str

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        # Runs in the job. submitit records an exception as the job's result at once, but a SystemExit (how our
        # commands end on a bad input) leaves no result, which the launcher waits 15 s for before calling it lost.
        try:
            return super().__call__(*args, **kwargs)
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
        jobs = executor(self._EXECUTOR, self.params).map_array(self, *zip(*arguments))
        returns, failures = [], []
        for number, (job, overrides) in enumerate(zip(jobs, job_overrides), start=initial_job_idx):
            described = f"job #{number} ({' '.join(filter_overrides(overrides))})"
            try:
                returned = job.results()[0]
            except Exception as exc:  # submitit raises UncompletedJobError/FailedJobError, or a pickled error
                failures.append(f"Error: {described} failed: {failure_line(job, exc)} (log: {job.paths.stderr})")
                continue
            if returned.status == JobStatus.FAILED:  # an unexpected error, which Hydra's run_job caught
                error = returned._return_value
                failures.append(f"Error: {described} failed: {type(error).__name__}: {one_line(error)} "
                                f"(log: {job.paths.stderr})")
                continue
            returns.append(returned)
        if failures:
            sys.stderr.flush()
            print("\n".join(failures), file=sys.stderr, flush=True)
            raise SystemExit(1)
        return returns


class LocalLauncher(_Reporting, submitit_launcher.LocalLauncher):
    pass


class SlurmLauncher(_Reporting, submitit_launcher.SlurmLauncher):
    pass
