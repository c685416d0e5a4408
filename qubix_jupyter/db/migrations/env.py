"""Alembic environment: runs migrations on a synchronous connection (psycopg 3 / sqlite3)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from qubix_jupyter.db.engine import install_sqlite_hooks
from qubix_jupyter.db.schema import metadata

config = context.config


def run_migrations() -> None:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: pass --database-url or set QUBIX_DATABASE_URL")
    engine = create_engine(url, poolclass=NullPool)
    if engine.dialect.name == "sqlite":
        install_sqlite_hooks(engine)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=engine.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported")
run_migrations()
