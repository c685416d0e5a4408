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
from qubix_jupyter.db.schema import metadata
from qubix_jupyter.market.errors import SchemaOutOfDate

from .conftest import DatabaseURL


def _diff(url: str) -> list[object]:
    engine = create_engine(sync_url(url), poolclass=NullPool)
    if engine.dialect.name == "sqlite":
        install_sqlite_hooks(engine)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(context, metadata)
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
