"""Migrations own the schema: one head, up/down/up, and models equal to the migrated schema."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.pool import NullPool

from qubix_jupyter.db import migrate
from qubix_jupyter.db.engine import install_sqlite_hooks, make_engine, sync_url
from qubix_jupyter.db.schema import exists_on, metadata, metadata_for
from qubix_jupyter.market.errors import SchemaOutOfDate

from .conftest import DatabaseURL


def _diff(url: str) -> list[object]:
    engine = create_engine(sync_url(url), poolclass=NullPool)
    if engine.dialect.name == "sqlite":
        install_sqlite_hooks(engine)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(context, metadata_for(engine.dialect.name))
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = create_engine(sync_url(url), poolclass=NullPool)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_one_head_and_every_revision_has_a_downgrade():
    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    assert len(scripts.get_heads()) == 1
    for revision in scripts.walk_revisions():
        assert callable(getattr(revision.module, "downgrade", None)), revision.revision


def test_models_equal_the_migrated_schema(database_url: DatabaseURL):
    assert migrate.current_revision(database_url.url) == migrate.head_revision()
    assert _diff(database_url.url) == []


def test_dialect_only_indexes_exist_exactly_where_the_model_says(database_url: DatabaseURL):
    """Alembic compares neither an index's WHERE nor its INCLUDE: check the PostgreSQL-only
    indexes' from the catalog, and that SQLite has none of them."""
    engine = create_engine(sync_url(database_url.url), poolclass=NullPool)
    try:
        found = {
            index["name"]: index
            for table in metadata.tables
            for index in inspect(engine).get_indexes(table)
        }
        dialect = engine.dialect
        with engine.connect() as conn:
            for table in metadata.sorted_tables:
                for index in table.indexes:
                    if not exists_on(index, database_url.kind):
                        assert index.name not in found
                        continue
                    assert index.name in found
                    options = index.dialect_options["postgresql"]
                    if database_url.kind != "postgresql" or getattr(index, "_ddl_if", None) is None:
                        continue
                    definition = conn.execute(
                        text("SELECT indexdef FROM pg_indexes WHERE indexname = :name"),
                        {"name": index.name},
                    ).scalar_one()
                    if options["include"]:
                        assert f"INCLUDE ({', '.join(options['include'])})" in definition
                    if options["where"] is not None:
                        where = str(options["where"].compile(dialect=dialect))
                        assert definition.endswith(f"WHERE {where.split('.')[-1]}")
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(database_url: DatabaseURL):
    expected = set(metadata.tables)
    assert _tables(database_url.url) == expected
    migrate.downgrade(database_url.url, "base")
    assert _tables(database_url.url) == set()
    assert migrate.current_revision(database_url.url) is None
    migrate.upgrade(database_url.url)
    assert _tables(database_url.url) == expected
    assert _diff(database_url.url) == []


def test_each_step_down_and_up_again(database_url: DatabaseURL):
    scripts = ScriptDirectory.from_config(migrate.alembic_config())
    revisions = [r.revision for r in scripts.walk_revisions()]  # head first
    for revision in revisions:
        migrate.downgrade(database_url.url, "-1")
        assert migrate.current_revision(database_url.url) != revision
    for revision in reversed(revisions):
        migrate.upgrade(database_url.url, "+1")
        assert migrate.current_revision(database_url.url) == revision


async def test_an_old_schema_is_refused_with_the_command_to_run(database_url: DatabaseURL):
    migrate.downgrade(database_url.url, "base")
    engine = make_engine(database_url.url)
    try:
        with pytest.raises(SchemaOutOfDate, match="qubix db upgrade"):
            await migrate.ensure_current(engine)
        migrate.upgrade(database_url.url)
        await migrate.ensure_current(engine)
        async with engine.connect() as conn:
            count = (await conn.execute(text("SELECT count(*) FROM accounts"))).scalar_one()
        assert count == 2  # the platform and external accounts the first revision seeds
    finally:
        await engine.dispose()
