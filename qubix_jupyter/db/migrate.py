"""Schema migrations: alembic owns the schema, these helpers drive it from code and the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from ..market.errors import SchemaOutOfDate
from .engine import install_sqlite_hooks, sync_url

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def alembic_config(url: str | URL | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # ConfigParser interpolation would eat the '%' of URL-encoded passwords.
        cfg.set_main_option(
            "sqlalchemy.url", sync_url(url).render_as_string(hide_password=False).replace("%", "%%")
        )
    return cfg


def head_revision() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"migrations must have exactly one head, found {heads}")
    return heads[0]


@contextmanager
def _sync_connection(url: str | URL) -> Iterator[Connection]:
    target = sync_url(url)
    engine = create_engine(target, poolclass=NullPool)
    if target.get_backend_name() == "sqlite":
        install_sqlite_hooks(engine)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def upgrade(url: str | URL, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | URL, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def current_revision(url: str | URL) -> str | None:
    with _sync_connection(url) as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _check_connection(conn: Connection) -> None:
    current = MigrationContext.configure(conn).get_current_revision()
    head = head_revision()
    if current != head:
        state = "has no QUBIX schema" if current is None else f"is at schema revision {current}"
        raise SchemaOutOfDate(
            f"the database {state}, this version of QUBIX needs {head}: "
            "run `qubix db upgrade --database-url <url>` (back the database up first)",
            current=current,
            required=head,
        )


async def ensure_current(engine: AsyncEngine) -> None:
    """Refuse to run on a schema other than the one this code was written for."""
    async with engine.connect() as conn:
        await conn.run_sync(_check_connection)
