"""Async engines and sessions for PostgreSQL (psycopg 3) and SQLite (aiosqlite)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

#: Drivers we ship; a bare ``postgresql://`` or ``sqlite://`` URL is given these.
_ASYNC_DRIVERS = {"postgresql": "postgresql+psycopg", "sqlite": "sqlite+aiosqlite"}
_SYNC_DRIVERS = {"postgresql": "postgresql+psycopg", "sqlite": "sqlite"}


def _with_driver(url: str | URL, drivers: dict[str, str]) -> URL:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend not in drivers:
        raise ValueError(f"unsupported database {backend!r}: use a postgresql:// or sqlite:/// URL")
    return parsed.set(drivername=drivers[backend])


def async_url(url: str | URL) -> URL:
    return _with_driver(url, _ASYNC_DRIVERS)


def sync_url(url: str | URL) -> URL:
    return _with_driver(url, _SYNC_DRIVERS)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # The driver's own transaction handling would issue a deferred BEGIN, which lets two
    # writers both read and then deadlock on the upgrade to a write lock. We take the write
    # lock up front (BEGIN IMMEDIATE, below) so SQLite is a plain single-writer queue.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def install_sqlite_hooks(engine: Any) -> None:
    """Foreign keys, WAL, a busy timeout and BEGIN IMMEDIATE for a (sync or async) SQLite engine."""
    sync_engine = getattr(engine, "sync_engine", engine)
    event.listen(sync_engine, "connect", _sqlite_pragmas)

    @event.listens_for(sync_engine, "begin")
    def _begin_immediate(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str | URL, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``url``; bare ``postgresql://``/``sqlite:///`` URLs get our drivers."""
    target = async_url(url)
    if target.get_backend_name() == "postgresql":
        kwargs.setdefault("pool_size", 20)
        kwargs.setdefault("max_overflow", 20)
        kwargs.setdefault("pool_pre_ping", True)
    engine = create_async_engine(target, **kwargs)
    if target.get_backend_name() == "sqlite":
        install_sqlite_hooks(engine)
    return engine


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
