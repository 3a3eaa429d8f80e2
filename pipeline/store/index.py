"""A local index of a tracking store's runs: what a plan and a table need of each (stage, status, cache key, tags,
metrics), kept in a SQLite file of the user's cache and brought up to date incrementally, so a sweep's thousands
of look-ups and a table over a lab's whole store cost one refresh and local queries instead of MLflow searches
that return every run with all its params (about 2.5 ms a run).

MLflow's API has no "changed since". A SQL store (`store.sql`) lists every run's id, status and lifecycle in one
query: the index reads the runs it lacks or holds in another state, from the store's tables without their params,
and forgets the runs the store no longer has. A tracking server is asked for the runs started since the newest the
index has seen (less `OVERLAP_MS`, as workers' clocks stamp start times), the runs still running at the last
refresh and the runs restored since (by id), and its deleted runs; a run purged from a server (`mlflow gc`) is
forgotten at the refresh after the one that saw it deleted. On both, runs quarantined since (a corrupt artifact,
`artifacts.mark_corrupt`) are read again when the experiment's quarantine count changes.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from pipeline import user_cache
from pipeline.store import sql
from pipeline.store.artifacts import QUARANTINED, Location
from pipeline.store.tracking import JOB_STAGE, TrackingStore, search_all

if TYPE_CHECKING:
    from mlflow.entities import Run

OVERLAP_MS = 2 * 60 * 1000  # runs started this long before the newest seen are read again (workers' clocks differ)
TERMINAL = ("FINISHED", "FAILED", "KILLED")
_ID_CHUNK = 100  # run ids per `attributes.run_id IN (...)` search
_VERSION = 2  # of the file's schema: another version is another file, built afresh
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, stage TEXT, status TEXT, lifecycle TEXT,
    start_time INTEGER, end_time INTEGER, cache_key TEXT, servable INTEGER, tags TEXT, metrics TEXT,
    artifact_uri TEXT);
CREATE INDEX IF NOT EXISTS runs_key ON runs (cache_key);
CREATE INDEX IF NOT EXISTS runs_stage ON runs (stage, status);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT);
"""
_MARKS = ", ".join("?" * 11)  # the columns of `runs`
_START, _STATUS = 4, 2  # their positions


@dataclass(frozen=True)
class IndexedRun:
    run_id: str
    stage: str
    status: str
    start_time: int
    end_time: int | None
    tags: Mapping[str, str]
    metrics: Mapping[str, float]
    artifact_uri: str | None = None  # None for a run this process wrote and added before the store listed it

    @property
    def location(self) -> Location:
        """Where its files are, to read them back without fetching the run."""
        if self.artifact_uri is None:
            raise ValueError(f"run {self.run_id} was indexed without its artifact location")
        return Location(self.run_id, self.artifact_uri, self.tags)

    @property
    def duration_s(self) -> float | None:
        return (self.end_time - self.start_time) / 1000 if self.end_time else None


@dataclass(frozen=True)
class StoreIndex:
    store: TrackingStore
    path: Path

    @classmethod
    def of(cls, store: TrackingStore, folder: Path | None = None) -> "StoreIndex":
        """The index of `store`'s experiment, in `folder` (by default the user's cache)."""
        name = hashlib.sha256(f"{store.uri}\n{store.experiment_id}".encode()).hexdigest()[:24]
        folder = folder or user_cache() / "index"
        folder.mkdir(parents=True, exist_ok=True)
        for older in folder.glob(f"{name}.sqlite"):  # the first version's file
            older.unlink(missing_ok=True)
        return cls(store, folder / f"{name}.v{_VERSION}.sqlite")

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=60)
        connection.executescript(_SCHEMA)
        return connection

    # -- keeping it up to date ---------------------------------------------------------------------------
    def refresh(self, full: bool = False) -> int:
        """Bring the index up to date with the store; returns how many runs were read. The store is read first and
        the index written after, in one short transaction, so a refresh over a large store never holds the index
        file's write lock while it reads (another process adding its runs waits milliseconds, not the read)."""
        with closing(self._connect()) as db:
            meta = dict(db.execute("SELECT name, value FROM meta"))
            known = {run_id: (status, lifecycle, artifact_uri) for run_id, status, lifecycle, artifact_uri in
                     db.execute("SELECT run_id, status, lifecycle, artifact_uri FROM runs")}
        watermark = 0 if full else int(meta.get("watermark", 0))
        if sql.is_sql(self.store):
            fetched, gone, deleted = self._changed_in_tables(known, full)
        else:
            fetched, gone, deleted = self._changed_on_server(known, watermark, [] if full else json.loads(
                meta.get("pending", "[]")))
        quarantined = self._quarantine_count()
        if quarantined != meta.get("quarantined"):
            fetched += map(_row, search_all(self.store, "tags.cache_corrupt LIKE '%'", view="ALL"))
        newest = max([watermark, *(row[_START] or 0 for row in fetched)])
        still = [row[0] for row in fetched if row[_STATUS] not in TERMINAL]
        with closing(self._connect()) as db, db:
            db.executemany("DELETE FROM runs WHERE run_id = ?", [(run_id,) for run_id in gone])
            db.executemany("UPDATE runs SET lifecycle = 'deleted' WHERE run_id = ?", [(run_id,) for run_id in deleted])
            db.executemany(f"INSERT OR REPLACE INTO runs VALUES ({_MARKS})", fetched)
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                           [("watermark", str(newest)), ("pending", json.dumps(still)),
                            ("quarantined", quarantined or ""), ("refreshed", str(int(time.time())))])
        return len(fetched)

    def _changed_in_tables(self, known: Mapping[str, tuple], full: bool) -> tuple[list[tuple], list[str], list[str]]:
        """A SQL store lists every run's id, status and lifecycle in one query: the runs the index lacks, holds in
        another state or holds without their artifact location (added by the process that wrote them) are read,
        the runs the store no longer has are forgotten (no clock is trusted)."""
        listed = sql.states(self.store)
        gone = [run_id for run_id in known if run_id not in listed]
        changed = [run_id for run_id, state in listed.items()
                   if full or run_id not in known or known[run_id][:2] != state or known[run_id][2] is None]
        if len(changed) > len(listed) // 2:  # most of the store (a first build): one pass over its tables
            wanted = set(changed)
            return [_row_of(*read) for read in sql.runs(self.store) if read[0]["run_uuid"] in wanted], gone, []
        return self._by_id(changed), gone, []

    def _changed_on_server(self, known: Mapping[str, tuple], watermark: int, pending: Sequence[str]
                           ) -> tuple[list[tuple], list[str], list[str]]:
        """A server is asked for the runs started since the newest seen (less `OVERLAP_MS`), its deleted runs, and
        by id the runs still running at the last refresh and those the index holds deleted that no longer are
        (restored)."""
        since = watermark - OVERLAP_MS if watermark else 0
        fetched = list(map(_row, search_all(self.store, f"attributes.start_time >= {since}" if since else "",
                                            view="ALL")))
        deleted = [run.info.run_id for run in search_all(self.store, "", view="DELETED_ONLY")]
        now_deleted = set(deleted)
        restored = [run_id for run_id, (_, lifecycle, _) in known.items()
                    if lifecycle == "deleted" and run_id not in now_deleted]
        fetched += self._by_id(pending)
        back = self._by_id(restored)
        found = {row[0] for row in back}
        return fetched + back, [run_id for run_id in restored if run_id not in found], deleted  # gone: purged

    def _by_id(self, run_ids: Sequence[str]) -> list[tuple]:
        if sql.is_sql(self.store):
            return [_row_of(*read) for read in sql.runs(self.store, run_ids=run_ids)] if run_ids else []
        found: list[tuple] = []
        for start in range(0, len(run_ids), _ID_CHUNK):
            listed = ", ".join(f"'{run_id}'" for run_id in run_ids[start:start + _ID_CHUNK])
            found += map(_row, search_all(self.store, f"attributes.run_id IN ({listed})", view="ALL"))
        return found

    def _quarantine_count(self) -> str | None:
        return self.store.client.get_experiment(self.store.experiment_id).tags.get(QUARANTINED)

    def add(self, runs: Iterable[IndexedRun]) -> None:
        """Runs this process just wrote (served jobs' runs): in the index now, not at the next refresh."""
        rows = [_row_of({"run_uuid": run.run_id, "status": run.status, "lifecycle_stage": "active",
                         "start_time": run.start_time, "end_time": run.end_time, "artifact_uri": run.artifact_uri},
                        {"stage": run.stage, **run.tags}, run.metrics) for run in runs]
        with closing(self._connect()) as db, db:
            db.executemany(f"INSERT OR REPLACE INTO runs VALUES ({_MARKS})", rows)

    def fetched(self, run_ids: Sequence[str]) -> dict[str, IndexedRun]:
        """The runs with these ids; those the index lacks or holds unfinished (runs another process was still
        writing when the index last read them) are read from the store first (and kept). Runs this process added
        come as it added them, without their artifact location until the next refresh."""
        found = self.runs(run_ids)
        stale = [run_id for run_id in run_ids if run_id not in found or found[run_id].status not in TERMINAL]
        if stale:
            read = self._by_id(stale)
            with closing(self._connect()) as db, db:
                db.executemany(f"INSERT OR REPLACE INTO runs VALUES ({_MARKS})", read)
            found.update(self.runs(stale))
        return found

    # -- asking it ---------------------------------------------------------------------------------------
    def servable(self, keys: Iterable[str]) -> dict[str, IndexedRun]:
        """The newest run that would be served for each key (FINISHED, active, not quarantined, cache on)."""
        found: dict[str, IndexedRun] = {}
        wanted = list(dict.fromkeys(keys))
        with closing(self._connect()) as db:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                marks = ", ".join("?" * len(chunk))
                for row in db.execute(f"SELECT * FROM runs WHERE cache_key IN ({marks}) AND servable = 1 AND "
                                      f"lifecycle = 'active' ORDER BY start_time DESC, run_id", chunk):
                    run = _indexed(row)
                    found.setdefault(run.tags["cache_key"], run)
        return found

    def select(self, stage: str, status: str = "FINISHED") -> list[IndexedRun]:
        """The active runs of one stage in one status, newest first (ties by run id, as MLflow's search orders)."""
        with closing(self._connect()) as db:
            rows = db.execute("SELECT * FROM runs WHERE stage = ? AND status = ? AND lifecycle = 'active' "
                              "ORDER BY start_time DESC, run_id", (stage, status)).fetchall()
        return [_indexed(row) for row in rows]

    def job_runs(self) -> list[IndexedRun]:
        """Every FINISHED job run, newest first: what tables are built from."""
        return self.select(JOB_STAGE)

    def runs(self, run_ids: Sequence[str]) -> dict[str, IndexedRun]:
        with closing(self._connect()) as db:
            found = {}
            for start in range(0, len(run_ids), 500):
                chunk = list(run_ids[start:start + 500])
                marks = ", ".join("?" * len(chunk))
                found.update((row[0], _indexed(row)) for row in
                             db.execute(f"SELECT * FROM runs WHERE run_id IN ({marks})", chunk))
        return found


def _row(run: Run) -> tuple:
    info = run.info
    attributes = {"run_uuid": info.run_id, "status": info.status, "lifecycle_stage": info.lifecycle_stage,
                  "start_time": info.start_time, "end_time": info.end_time, "artifact_uri": info.artifact_uri}
    return _row_of(attributes, dict(run.data.tags), dict(run.data.metrics))


def _row_of(attributes: Mapping, tags: Mapping[str, str], metrics: Mapping[str, float]) -> tuple:
    """The index's row of a run (the columns of `_SCHEMA`, in order)."""
    servable = (attributes["status"] == "FINISHED" and attributes["lifecycle_stage"] == "active"
                and tags.get("cache_store") == "true" and "cache_key" in tags)
    return (attributes["run_uuid"], tags.get("stage", ""), attributes["status"], attributes["lifecycle_stage"],
            attributes["start_time"], attributes["end_time"], tags.get("cache_key"), int(servable),
            json.dumps(dict(tags)), json.dumps(dict(metrics)), attributes["artifact_uri"])


def _indexed(row: tuple) -> IndexedRun:
    run_id, stage, status, _, start, end, _, _, tags, metrics, artifact_uri = row
    return IndexedRun(run_id, stage, status, start, end, json.loads(tags), json.loads(metrics), artifact_uri)
