"""Reading a SQL store's own tables (the local SQLite file, `make server`'s PostgreSQL) for what the index keeps of
each run: its attributes, tags and latest metrics, without params.

MLflow's search builds a full ORM object for every tag, param and metric of every run it returns: a job run has
about a hundred params, and reading a suite's 4,598 job runs made a million ORM instances (about 40 s on 2 cores).
MLflow has no call that returns runs without their params, so on a SQL store the index reads the three tables it
needs with SQLAlchemy Core, as MLflow's `SqlRun.to_mlflow_entity` would present them (`tests/store/test_index.py`
compares both); a tracking server is read through its search.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

from pipeline.store.tracking import TrackingStore

SQL_SCHEMES = ("sqlite:", "postgresql", "mysql", "mssql")
_ID_CHUNK = 500  # run ids per IN (...) query, below SQLite's bound-parameter limit


def is_sql(store: TrackingStore) -> bool:
    return store.uri.startswith(SQL_SCHEMES)


def _engine(store: TrackingStore):
    import sqlalchemy

    return sqlalchemy.create_engine(store.uri)


def states(store: TrackingStore) -> dict[str, tuple[str, str]]:
    """Every run id of the experiment with its (status, lifecycle), in one query."""
    import sqlalchemy

    engine = _engine(store)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sqlalchemy.text("SELECT run_uuid, status, lifecycle_stage FROM runs WHERE "
                                                      "experiment_id = :experiment"),
                                      {"experiment": int(store.experiment_id)})
            return {run_id: (status, lifecycle) for run_id, status, lifecycle in rows}
    finally:
        engine.dispose()


def runs(store: TrackingStore, run_ids: Sequence[str] | None = None
         ) -> list[tuple[dict, dict[str, str], dict[str, float]]]:
    """(attributes, tags, latest metrics) of the experiment's runs with these ids (of every run without ids)."""
    import sqlalchemy
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlRun, SqlTag

    run_table, tag_table, metric_table = SqlRun.__table__, SqlTag.__table__, SqlLatestMetric.__table__
    engine = _engine(store)
    try:
        with engine.connect() as connection:
            listed = []
            for condition in _conditions(run_table, run_ids):
                chosen = sqlalchemy.select(run_table.c.run_uuid).where(
                    run_table.c.experiment_id == int(store.experiment_id), condition)
                attributes = {row.run_uuid: dict(row._mapping) for row in connection.execute(
                    sqlalchemy.select(run_table.c.run_uuid, run_table.c.status, run_table.c.lifecycle_stage,
                                      run_table.c.start_time, run_table.c.end_time, run_table.c.artifact_uri)
                    .where(run_table.c.run_uuid.in_(chosen)))}
                tags: dict[str, dict[str, str]] = {run_id: {} for run_id in attributes}
                for run_id, key, value in connection.execute(sqlalchemy.select(
                        tag_table.c.run_uuid, tag_table.c.key, tag_table.c.value).where(tag_table.c.run_uuid.in_(chosen))):
                    tags[run_id][key] = value
                metrics: dict[str, dict[str, float]] = {run_id: {} for run_id in attributes}
                for run_id, key, value, is_nan in connection.execute(sqlalchemy.select(
                        metric_table.c.run_uuid, metric_table.c.key, metric_table.c.value, metric_table.c.is_nan)
                        .where(metric_table.c.run_uuid.in_(chosen))):
                    metrics[run_id][key] = math.nan if is_nan else value
                listed += [(attributes[run_id], tags[run_id], metrics[run_id]) for run_id in attributes]
            return listed
    finally:
        engine.dispose()


def _conditions(run_table, run_ids: Sequence[str] | None) -> Iterator:
    import sqlalchemy

    if run_ids is None:
        yield sqlalchemy.true()
        return
    for start in range(0, len(run_ids), _ID_CHUNK):
        yield run_table.c.run_uuid.in_(list(run_ids[start:start + _ID_CHUNK]))
