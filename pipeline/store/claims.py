"""Claims on cache keys, kept in the tracking store itself, so that jobs missing the same key at once compute it
once: one computes, the others wait and are served its run. They work the same on SQLite and on a tracking server.

MLflow has no compare-and-set, so a claim is a set of tags (the group, the keys it claims, a heartbeat, a ticket,
`claim_state=held`) ordered as in Lamport's bakery algorithm: after writing its claim a job lists the group's
claims and takes a ticket one above the highest it saw; a claim without a ticket yet is still choosing, and nobody
decides while one is. Then, for each key, the live claim with the lowest (ticket, run id) owns it. Start times
would not do: a claim stamped earlier can be committed after a later one has already looked and found itself
alone, and both would compute. Every store here is linearizable per request, which is all the bakery needs.

A job's claim lives on its own job run (one claim at a time, since a job's stages run one after another), so
claims add no runs to the store and a worker needs no more than EDIT on the experiment: a claim is released by a
tag, never by deleting a run (which takes MANAGE). Code without a job run (a bare `StageCache`) gets a run of its
own per claim (`stage=claim`), ended when released.

A claim names its holder (`store.holders`: host, pid and start time, and under SLURM the job and its restart
count). A job that meets another's claim asks whether that holder is alive: on its own host by /proc, elsewhere by
SLURM's state of its job; a dead holder's claim is taken over at once, and a requeued task takes over its own
earlier claims. Where nothing can tell (another host without SLURM), a claim whose heartbeat value has not changed
for `timeout_s`, as the observer's own monotonic clock measures it (so workers' clocks need not agree), belongs
to a killed worker. Either way the observer marks the stage runs the dead claim left RUNNING as KILLED, marks the
claim expired (and its run KILLED), and the next claim in order takes its keys over. Stage runs carry `claim_id`,
the run of the claim they were computed under, which is how a dead claim's runs are found. A claimant that finds
its own claim expired (taken over while its heartbeats could not reach the store) stops relying on it.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Sequence

from pipeline.errors import one_line
from pipeline.store import holders
from pipeline.store.holders import Holder
from pipeline.store.tracking import KILLED_BY, TrackingStore, run_tags

if TYPE_CHECKING:  # MLflow loads where the store is used: a table of result files never imports it
    from mlflow.entities import Run

log = logging.getLogger(__name__)

CLAIM_STAGE = "claim"     # the stage of a claim's own run, where there is no job run to carry it
CLAIM_ID_TAG = "claim_id"  # on a stage run: the run of the claim it was computed under
_GROUP, _KEYS, _HEARTBEAT, _TICKET = "claim_group", "claim_keys", "claim_heartbeat", "claim_ticket"
STATE_TAG, HELD, RELEASED, EXPIRED = "claim_state", "held", "released", "expired"
CHOOSING = "-"  # the ticket of a claim still choosing one
# MLflow keeps tag values up to 8000 characters; keys are 24 characters and a comma.
MAX_KEYS = 300
# How long a holder's verdict (alive or not) stands before it is asked again: SLURM's controller is asked at most
# this often per claim and observer.
RECHECK_S = 15.0


def ended_tags(state: str, why: str = "") -> dict[str, str]:
    """The tags that take a claim out of its group: released, or expired (`why` its holder is taken to be dead)."""
    return {STATE_TAG: state, _GROUP: "", **({KILLED_BY: f"claim expired: {why}"} if why else {})}


@dataclass(frozen=True)
class ClaimInfo:
    run_id: str
    keys: frozenset[str]
    heartbeat: float
    ticket: int | None  # None while the claimant is still choosing it
    holder: Holder | None = None  # None for a claim written before holders were recorded

    @property
    def order(self) -> tuple[int, str]:
        return self.ticket or 0, self.run_id

    @classmethod
    def from_run(cls, run: Run) -> "ClaimInfo":
        tags = run.data.tags
        ticket = tags.get(_TICKET, CHOOSING)
        return cls(run.info.run_id, frozenset(filter(None, tags.get(_KEYS, "").split(","))),
                   float(tags.get(_HEARTBEAT, 0.0)), int(ticket) if ticket.isdigit() else None, Holder.from_tags(tags))


@dataclass
class Claim:
    """A claim this process holds; its heartbeat thread runs until it is released."""

    claims: "Claims"
    info: ClaimInfo
    group: str
    lost: threading.Event = field(default_factory=threading.Event)  # set when another job took it over
    _stop: threading.Event = field(default_factory=threading.Event)
    _seen: dict[str, tuple[float, float]] = field(default_factory=dict)  # other claim -> (heartbeat, first seen)
    _verdicts: dict[str, tuple[bool | None, float]] = field(default_factory=dict)  # other claim -> (alive, asked at)
    _others: dict[str, ClaimInfo] = field(default_factory=dict)  # the other live claims, as last listed

    @property
    def run_id(self) -> str:
        return self.info.run_id

    def owners(self) -> dict[str, str] | None:
        """The run id of the claim that owns each of this claim's keys (expired claims reaped first), or None while
        another claim of the group is still choosing its ticket."""
        live, choosing = [self.info], False
        self._others = {}
        for other in self.claims.listed(self.group):
            if other.run_id == self.run_id:
                continue
            stale = self._stale(other)
            if self._alive(other) is False:
                self.claims.reap(other, f"its holder, {other.holder.describe()}, is gone")
            elif stale:
                self.claims.reap(other, f"no heartbeat for {time.monotonic() - self._seen[other.run_id][1]:.0f} s")
            elif other.ticket is None:
                choosing = True
            else:
                live.append(other)
                self._others[other.run_id] = other
        if choosing:
            return None
        live.sort(key=lambda claim: claim.order)
        return {key: next(claim.run_id for claim in live if key in claim.keys) for key in self.info.keys}

    def _stale(self, other: ClaimInfo) -> bool:
        """Whether `other`'s heartbeat has stood still for the timeout, by this process's monotonic clock."""
        now = time.monotonic()
        seen = self._seen.get(other.run_id)
        if seen is None or seen[0] != other.heartbeat:
            self._seen[other.run_id] = (other.heartbeat, now)
            return False
        return now - seen[1] > self.claims.timeout_s

    def _alive(self, other: ClaimInfo) -> bool | None:
        """Whether `other`'s holder runs (None: nothing here can tell), asked again every `RECHECK_S`."""
        if other.holder is None:
            return None
        now = time.monotonic()
        verdict = self._verdicts.get(other.run_id)
        if verdict is None or now - verdict[1] > RECHECK_S:
            verdict = (holders.alive(other.holder), now)
            self._verdicts[other.run_id] = verdict
        return verdict[0]

    def describe(self, run_id: str) -> str:
        """Who holds another claim and what this job waits for: a live holder until it finishes, one that cannot
        be checked until its heartbeat has stood still for the timeout."""
        other = self._others.get(run_id)
        if other is None or other.holder is None:
            return f"claim {run_id}"
        if self._alive(other):
            return f"claim {run_id} of {other.holder.describe()}, which is alive"
        seen = self._seen.get(run_id)
        left = self.claims.timeout_s - (time.monotonic() - seen[1]) if seen else self.claims.timeout_s
        return (f"claim {run_id} of {other.holder.describe()}, which cannot be checked from here: taken over if its "
                f"heartbeat stands still for {max(left, 0):.0f} s more")

    def _beat(self) -> None:
        """Heartbeat until released. Another job can take a claim over only after its heartbeats stopped reaching
        the store for the timeout, so whether it did is asked when they fail, and once when they get through
        again (a claim on a job run still takes heartbeats after it expired)."""
        client = self.claims.store.client
        failing = False
        while not self._stop.wait(self.claims.heartbeat_s):
            try:
                client.set_tag(self.run_id, _HEARTBEAT, f"{time.time():.3f}")
                recovered, failing = failing, False
            except Exception as exc:  # the store may be down for a while: keep trying, unless the claim is gone
                if not failing:
                    log.warning("claim %s: heartbeat failed (%s); retrying", self.run_id, one_line(exc)[:200])
                recovered, failing = False, True
            if (failing or recovered) and self._taken_over():
                log.warning("claim %s was taken over by another job (its heartbeats did not reach the store for "
                            "%.0f s); this job no longer counts on it", self.run_id, self.claims.timeout_s)
                self.lost.set()
                return

    def _taken_over(self) -> bool:
        try:
            run = self.claims.store.client.get_run(self.run_id)
        except Exception:  # unreachable, or already gone: only a definite answer counts
            return False
        return run.info.lifecycle_stage == "deleted" or run.data.tags.get(STATE_TAG) != HELD


@dataclass(frozen=True)
class Claims:
    """Claims in one tracking store; a heartbeat standing still for `timeout_s` makes a claim expired. With
    `host_run` (the job's run) every claim is written on that run; without, each claim gets a run of its own."""

    store: TrackingStore
    timeout_s: float = 300.0
    host_run: str | None = None

    @property
    def heartbeat_s(self) -> float:
        return self.timeout_s / 5

    @property
    def poll_s(self) -> float:
        """The longest wait between two looks at the store while another job computes."""
        return min(5.0, self.timeout_s / 4)

    @contextmanager
    def hold(self, keys: Sequence[str], group: str, label: str) -> Iterator[Claim]:
        """Write a claim on `keys` (all of one `group`), heartbeat it, and release it when the block ends."""
        if not 0 < len(keys) <= MAX_KEYS:
            raise ValueError(f"a claim holds 1 to {MAX_KEYS} keys, not {len(keys)}")
        client = self.store.client
        now = time.time()
        # One write, so no one ever sees the keys without `choosing`: the bakery's doorway.
        tags = {_GROUP: group, _KEYS: ",".join(keys), _HEARTBEAT: f"{now:.3f}", _TICKET: CHOOSING, STATE_TAG: HELD,
                **holders.current_tags()}
        if self.host_run is not None:
            run_id = self.host_run
            client.log_batch(run_id, tags=run_tags(tags))
        else:
            run_id = client.create_run(self.store.experiment_id, start_time=int(now * 1000),
                                       tags={"stage": CLAIM_STAGE, **tags}, run_name=f"claim:{label}").info.run_id
        try:
            ticket = 1 + max((other.ticket or 0 for other in self.listed(group) if other.run_id != run_id), default=0)
            client.set_tag(run_id, _TICKET, str(ticket))
        except BaseException:
            self._end(run_id, RELEASED)
            raise
        claim = Claim(self, ClaimInfo(run_id, frozenset(keys), now, ticket, Holder.current()), group)
        beat = threading.Thread(target=claim._beat, name=f"claim-heartbeat-{claim.run_id}", daemon=True)
        beat.start()
        try:
            yield claim
        finally:
            claim._stop.set()
            beat.join()
            if not claim.lost.is_set():
                self._end(claim.run_id, RELEASED)

    def listed(self, group: str) -> list[ClaimInfo]:
        """The group's live claims. The group's own tag comes first: a store joins tag filters in the order
        written, and few runs carry one group while every held claim carries `claim_state=held`."""
        query = f"tags.{_GROUP} = '{group}' and tags.{STATE_TAG} = '{HELD}'"
        runs = self.store.client.search_runs([self.store.experiment_id], filter_string=query, max_results=1000)
        return [ClaimInfo.from_run(run) for run in runs]

    def reap(self, claim: ClaimInfo, why: str) -> None:
        """A killed worker's claim: the stage runs it left RUNNING become KILLED, so the UI says what happened, and
        the claim (with the run that carried it) is marked expired."""
        client = self.store.client
        query = f"tags.{CLAIM_ID_TAG} = '{claim.run_id}' and attributes.status = 'RUNNING'"
        for run in client.search_runs([self.store.experiment_id], filter_string=query, max_results=1000):
            log.warning("run %s (%s) was left running by a worker whose claim expired (%s); marking it KILLED",
                        run.info.run_id, run.info.run_name, why)
            client.log_batch(run.info.run_id, tags=run_tags({KILLED_BY: f"claim expired: {why}"}))
            client.set_terminated(run.info.run_id, "KILLED")
        log.warning("claim %s expired (%s); taking its keys over", claim.run_id, why)
        self._end(claim.run_id, EXPIRED, why)

    def _end(self, run_id: str, state: str, why: str = "") -> None:
        """Release a claim (or mark it expired): it leaves the group, so no lookup finds it again; a claim's own run
        ends with it, and an expired claim's job run is marked KILLED, its worker being gone."""
        client = self.store.client
        try:
            client.log_batch(run_id, tags=run_tags(ended_tags(state, why)))
            if state == EXPIRED or run_id != self.host_run:
                client.set_terminated(run_id, "KILLED" if state == EXPIRED else "FINISHED")
        except Exception as exc:  # another job reaped it first, or the store is down: an orphan expires anyway
            log.debug("claim %s not ended: %s", run_id, exc)
