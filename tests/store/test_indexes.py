"""The lookup index on a store the project owns: made on connect, used by a cache lookup's query, and back after a
schema migration that rebuilds MLflow's tags table."""
import sqlite3

import sqlalchemy
from alembic.migration import MigrationContext
from alembic.operations import Operations

from pipeline.store import indexes, tracking


def tag_indexes(database: str) -> set[str]:
    engine = sqlalchemy.create_engine(f"sqlite:///{database}")
    try:
        return {index["name"] for index in sqlalchemy.inspect(engine).get_indexes("tags")}
    finally:
        engine.dispose()


def test_a_local_store_gets_the_index_and_a_lookup_seeks_with_it(tmp_path):
    tracking.connect(f"sqlite:///{tmp_path}/mlflow.db", "test", str(tmp_path / "artifacts"))
    assert indexes.INDEX in tag_indexes(f"{tmp_path}/mlflow.db")
    with sqlite3.connect(tmp_path / "mlflow.db") as connection:
        plan = connection.execute("EXPLAIN QUERY PLAN SELECT run_uuid FROM tags WHERE key = 'cache_key' AND "
                                  "value = 'abc'").fetchall()
    assert any(indexes.INDEX in str(row) for row in plan), plan


def test_the_index_survives_a_migration_and_comes_back_after_a_table_rebuild(tmp_path):
    """MLflow's SQLite migrations alter tables in alembic's batch mode, which copies a table with its reflected
    indexes; a rebuild by hand that loses them is repaired by the next connect."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracking.connect(uri, "test", str(tmp_path / "artifacts"))
    engine = sqlalchemy.create_engine(uri)
    with engine.begin() as connection:
        with Operations(MigrationContext.configure(connection)).batch_alter_table("tags", recreate="always"):
            pass
    assert indexes.INDEX in tag_indexes(f"{tmp_path}/mlflow.db")
    with engine.begin() as connection:
        for step in ("CREATE TABLE tags_copy AS SELECT * FROM tags", "DROP TABLE tags",
                     "ALTER TABLE tags_copy RENAME TO tags"):
            connection.exec_driver_sql(step)
    engine.dispose()
    assert indexes.INDEX not in tag_indexes(f"{tmp_path}/mlflow.db")
    tracking.connect(uri, "test")
    assert indexes.INDEX in tag_indexes(f"{tmp_path}/mlflow.db")


def test_a_database_it_cannot_index_costs_a_warning_not_the_command(tmp_path, caplog):
    assert not indexes.ensure(f"sqlite:///{tmp_path}/no-store-here.db")  # no tags table
    assert "lookups will grow with the store" in caplog.text


def test_the_statement_for_a_labs_own_database_indexes_only_short_lookup_tags():
    assert indexes.statement("sqlite") == "CREATE INDEX IF NOT EXISTS clip_tables_tag_lookup ON tags (key, value)"
    text = indexes.statement()
    assert text.startswith("CREATE INDEX IF NOT EXISTS clip_tables_tag_lookup ON tags (key, value) WHERE key IN (")
    assert "'cache_key'" in text and "claim_keys" not in text


def test_the_docs_give_a_lab_admin_the_same_statement():
    from pathlib import Path

    text = " ".join((Path(__file__).resolve().parents[2] / "docs" / "lab.md").read_text().split())
    assert indexes.statement() in text
