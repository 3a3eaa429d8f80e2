"""Runs a dead process left RUNNING (a sweep, job or stage run of a worker killed by `kill -9`, SIGKILL at a time
limit, a lost node): found by the holder their tags name (`store.holders`) and closed KILLED with the reason, so
the UI never shows a dead sweep as running. Claims use the same rule for the keys such a process held."""
from __future__ import annotations

import logging

from pipeline.store import holders
from pipeline.store.claims import EXPIRED, HELD, STATE_TAG, ended_tags
from pipeline.store.holders import Holder
from pipeline.store.tracking import KILLED_BY, TrackingStore, run_tags, search_all

log = logging.getLogger(__name__)


def close_dead_runs(store: TrackingStore) -> int:
    """Mark KILLED every RUNNING run whose holder is known to be gone; returns how many. Holders that cannot be
    checked from here (another host without SLURM) are left alone."""
    me = Holder.current()
    verdicts: dict[Holder, bool | None] = {}
    closed = 0
    for run in search_all(store, "attributes.status = 'RUNNING'"):
        holder = Holder.from_tags(run.data.tags)
        if holder is None or holder.pid == me.pid and holder.host == me.host:
            continue
        if holder not in verdicts:
            verdicts[holder] = holders.alive(holder, me)
        if verdicts[holder] is False:
            why = f"its process, {holder.describe()}, is gone"
            held = run.data.tags.get(STATE_TAG) == HELD  # a job run carrying a claim: the claim expires with it
            store.client.log_batch(run.info.run_id, tags=run_tags({KILLED_BY: why, **(ended_tags(EXPIRED, why)
                                                                                       if held else {})}))
            store.client.set_terminated(run.info.run_id, "KILLED")
            closed += 1
            log.info("run %s (%s) was left RUNNING: %s; marked KILLED", run.info.run_id, run.info.run_name, why)
    if closed:
        log.warning("%d run(s) left RUNNING by processes that are gone were marked KILLED", closed)
    return closed
