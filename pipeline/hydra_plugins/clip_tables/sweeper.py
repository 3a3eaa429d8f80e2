"""The sweeper every multirun uses: Hydra's basic sweeper (the same jobs, in the same order), but it plans before it
launches. It composes each job once (`jobs.compose`, not twice as Hydra's sweeper and launcher do), keys it from
its config alone, looks every key up at once in the store's index (`jobs.plan`), serves the jobs whose score is
cached as they are (`jobs.served`: their job runs recorded, nothing run) and hands only the others to the launcher,
with their numbers. `plan=true` prints the plan, writes `plan.json` into the sweep's folder and launches nothing.

A job the plan cannot key (an explain job, a config that does not compose or resolve) is launched as it is, where
it fails or runs as any job does.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf

from pipeline.data import datasets
from pipeline.errors import one_line
from pipeline.jobs import plan, served, sweep
from pipeline.jobs.compose import Composer
from pipeline.jobs.scoring import resolve
from pipeline.jobs.spec import JobSpec
from pipeline.store import holders, tracking
from pipeline.store.index import StoreIndex

log = logging.getLogger(__name__)


@dataclass
class PlanningSweeperConf:
    _target_: str = "hydra_plugins.clip_tables.sweeper.PlanningSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None


def store_preset() -> None:
    ConfigStore.instance().store(group="hydra/sweeper", name="planning", node=PlanningSweeperConf,
                                 provider="clip_tables")


class PlanningSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[Dict[str, str]] = None) -> None:
        # Not BasicSweeper.__init__: it calls `super(BasicSweeper, self)` by name, and Hydra's plugin scan imports
        # its module again, so that name is another class than the one this one derives from.
        Sweeper.__init__(self)
        self.overrides, self.batch_index, self.max_batch_size, self.params = None, 0, max_batch_size, params or {}
        self.hydra_context = self.config = self.launcher = None

    def sweep(self, arguments: List[str]) -> Any:
        params = self._parse_config()
        params.extend(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        jobs = [list(job) for batch in self.split_arguments(parser.parse_overrides(params), None) for job in batch]
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        only_plan = bool(self.config.get("plan"))
        store = open_store(self.config.tracking, only_plan)
        index = StoreIndex.of(store) if store is not None else None
        if index is not None:
            index.refresh()
        planned = keyed(self.hydra_context.config_loader, self.config, jobs)
        made = plan.make(planned, index, held_keys(store))
        print(made.render(), flush=True)
        written = made.write(sweep_dir)
        if only_plan:
            print(f"Plan written to {written}; nothing launched (plan=true)", flush=True)
            return []
        served.serve(made.served, store, index, sweep_dir, sweep.recorded(sweep_dir, store))
        return [self.launch([job.number for job in made.launched], [job.overrides for job in made.launched])]

    def launch(self, numbers: Sequence[int], overrides: Sequence[list[str]]) -> Sequence[JobReturn]:
        """The jobs with work left, under their own numbers: a launcher of this project takes the numbers; any other
        is given each run of consecutive numbers in turn."""
        if not numbers:
            return []
        if hasattr(self.launcher, "job_numbers"):
            self.launcher.job_numbers = list(numbers)
            return self.launcher.launch(list(overrides), initial_job_idx=numbers[0])
        returns: list[JobReturn] = []
        start = 0
        while start < len(numbers):
            end = start + 1
            while end < len(numbers) and numbers[end] == numbers[end - 1] + 1:
                end += 1
            returns += self.launcher.launch(list(overrides[start:end]), initial_job_idx=numbers[start])
            start = end
        return returns


def keyed(loader: Any, master: Any, jobs: Sequence[list[str]]) -> list[plan.PlannedJob]:
    """Every job composed once (Hydra's `loader`, the sweep's primary config) and keyed; a job that cannot be is
    planned to launch as it is."""
    composer = Composer(loader, master)
    described: dict[tuple, datasets.DatasetInfo] = {}

    def describe(spec: datasets.DatasetSpec, classes: bool | None = None) -> datasets.DatasetInfo:
        if (spec, classes) not in described:
            described[(spec, classes)] = datasets.describe(spec, classes)
        return described[(spec, classes)]

    planned = []
    for number, overrides in enumerate(jobs):
        job = None
        try:
            spec = JobSpec.from_cfg(composer.compose(overrides))
            job = resolve(spec, describe) if spec.explain is None else None
        except Exception as exc:  # the job says what is wrong with it when it runs, as any job does
            log.debug("job #%d not planned: %s", number, one_line(exc))
        planned.append(plan.keyed(number, overrides, job))
    return planned


def open_store(tracking_cfg: Any, read_only: bool) -> tracking.TrackingStore | None:
    """The sweep's store; None for a plan over a local store that does not exist yet (nothing is cached)."""
    spec = tracking.TrackingSpec.from_cfg(tracking_cfg)
    if read_only and spec.uri.startswith("sqlite:///") and not Path(spec.uri.removeprefix("sqlite:///")).is_file():
        return None
    return spec.connect(tracking.READ if read_only else tracking.EDIT)


def held_keys(store: tracking.TrackingStore | None) -> set[str]:
    """The keys live workers hold claims on now (a dead holder's are taken over, so they count as free)."""
    if store is None:
        return set()
    held = set()
    for run in tracking.search_all(store, "tags.claim_state = 'held'"):
        holder = holders.Holder.from_tags(run.data.tags)
        if holder is None or holders.alive(holder) is not False:
            held.update(filter(None, run.data.tags.get("claim_keys", "").split(",")))
    return held

