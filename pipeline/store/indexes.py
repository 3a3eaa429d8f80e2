"""An index for the cache's lookups, on the databases the project owns (the local SQLite store, `make server`'s
private PostgreSQL cluster).

Every lookup is an MLflow search on a tag's value (`tags.cache_key = '...'`, a claim group, a template set). MLflow
indexes its `tags` table on (key, run_uuid) and on run_uuid, never on value (`mlflow/store/tracking/dbmodels/
models.py`), so each search scans every tag of that name: linear in the store (168 ms a lookup on SQLite at
100,000 runs, 2.3 s at 1,000,000). An index on (key, value) makes it a seek. On PostgreSQL it is partial, over
the tags the lookups use: PostgreSQL cannot index arbitrarily long values (a claim's `claim_keys` can pass its row
limit), and its planner proves `key = 'cache_key'` implies the index's `key IN (...)`; SQLite's planner proves no
such thing (it would never use a partial index here) and indexes any length, so there it covers every tag. It is
created with IF NOT EXISTS on every connect, so a schema migration of MLflow's
that rebuilds the tags table (SQLite's batch migrations copy tables, indexes dropped) gets it back at the next
connect. A lab's own database gets the same statement from its admin (`statement()`, docs/lab.md).
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

INDEX = "clip_tables_tag_lookup"
# The tags lookups search by value: the cache key, the per-template embeddings' shared tag, a claim's group, the
# runs a claim left running, a job run's stage (the aggregate's job runs, the UI's links).
LOOKUP_TAGS = ("cache_key", "template_set", "claim_group", "claim_id", "stage")


def statement(dialect: str = "postgresql") -> str:
    """The index for a database of `dialect` (SQLAlchemy's name: postgresql, sqlite)."""
    full = f"CREATE INDEX IF NOT EXISTS {INDEX} ON tags (key, value)"
    if dialect == "sqlite":
        return full
    return f"{full} WHERE key IN ({', '.join(repr(tag) for tag in LOOKUP_TAGS)})"


def ensure(database_uri: str, connect_args: dict | None = None) -> bool:
    """Create the index on MLflow's tags table at `database_uri` (an SQLAlchemy URI; `connect_args` for its
    driver) if it is missing; False (and one warning) where it cannot: the lookups work without it, only slower."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(database_uri, connect_args=connect_args or {})
    try:
        if INDEX in {index["name"] for index in sqlalchemy.inspect(engine).get_indexes("tags")}:
            return True  # read only: parallel jobs connecting to one SQLite file take no write lock for it
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(statement(engine.dialect.name)))
        return True
    except sqlalchemy.exc.SQLAlchemyError as exc:
        log.warning("no lookup index on %s (%s); lookups will grow with the store", database_uri,
                    str(exc).splitlines()[0])
        return False
    finally:
        engine.dispose()
