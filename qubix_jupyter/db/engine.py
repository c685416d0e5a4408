"""Async engines and sessions for PostgreSQL (psycopg 3) and SQLite (aiosqlite)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

#: A pooled PostgreSQL connection is pinged before use only when it sat idle this long: one
#: back from a statement a moment ago is alive, and its ping would be a round trip per session.
PING_AFTER_IDLE_SECONDS = 5.0

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


def _driver(dbapi_connection: Any) -> Any:
    """The driver's own connection (weakly referable) under SQLAlchemy's async adapter."""
    return getattr(dbapi_connection, "driver_connection", dbapi_connection)


def ping_when_idle(engine: AsyncEngine, idle_seconds: float = PING_AFTER_IDLE_SECONDS) -> None:
    """Make the pool's pre-ping skip connections checked in less than ``idle_seconds`` ago.

    A connection that dies while pooled (the server restarted) is found by the ping of its next
    checkout once it has been idle that long; one that died within the last few seconds fails its
    first statement, which invalidates the pool as any lost connection does.
    """
    sync_engine = engine.sync_engine
    dialect = sync_engine.dialect
    checked_in: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
    ping = dialect.do_ping

    @event.listens_for(sync_engine, "checkin")
    def _checked_in(dbapi_connection: Any, _record: Any) -> None:
        if dbapi_connection is not None:
            checked_in[_driver(dbapi_connection)] = time.monotonic()

    def do_ping(dbapi_connection: Any) -> bool:
        since = checked_in.pop(_driver(dbapi_connection), None)
        if since is not None and time.monotonic() - since < idle_seconds:
            return True
        return ping(dbapi_connection)

    dialect.do_ping = do_ping  # type: ignore[method-assign]


def make_engine(url: str | URL, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``url``; bare ``postgresql://``/``sqlite:///`` URLs get our drivers."""
    target = async_url(url)
    if target.get_backend_name() == "postgresql":
        kwargs.setdefault("pool_size", 20)
        kwargs.setdefault("max_overflow", 20)
        kwargs.setdefault("pool_pre_ping", True)
    engine = create_async_engine(target, **kwargs)
    if kwargs.get("pool_pre_ping"):
        ping_when_idle(engine)
    if target.get_backend_name() == "sqlite":
        install_sqlite_hooks(engine)
    return engine


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def autocommit_sessions(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> async_sessionmaker[AsyncSession]:
    """Sessions on autocommit connections (PostgreSQL): for reads that lock nothing and for
    single-statement writes.

    Each statement then commits on its own, as a one-statement transaction would (and a read
    sees its own snapshot, as each statement of a READ COMMITTED transaction does), without the
    BEGIN and the COMMIT or ROLLBACK around it: two round trips fewer. ``session.begin()`` is
    still what the code says, so on other databases (``sessionmaker`` itself, returned as it
    is) the same code runs in a transaction.
    """
    engine = sessionmaker.kw["bind"]
    if engine.dialect.name != "postgresql":
        return sessionmaker
    return async_sessionmaker(autocommit_engine(engine), expire_on_commit=False)


def autocommit_engine(engine: AsyncEngine) -> AsyncEngine:
    """``engine`` with its connections in autocommit (for :func:`driver_connection`)."""
    return engine.execution_options(isolation_level="AUTOCOMMIT")


@contextlib.asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[Any]:
    """The psycopg connection under a pooled connection of ``engine`` (an
    :func:`autocommit_engine` on PostgreSQL), for the statements on a job's way.

    A statement run here skips the SQL layer: about half a millisecond of the market's CPU each,
    which is most of what a single statement costs. Each statement commits on its own.
    """
    async with engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        if driver is None or not getattr(driver, "autocommit", False):
            raise RuntimeError("driver statements run on an autocommit PostgreSQL connection")
        yield driver


@dataclasses.dataclass(slots=True)
class Then:
    """A statement sent right behind another in the same round trip (:func:`pipelined`); its
    first row is in :attr:`row` once both have run (None: no row)."""

    sql: str
    params: Sequence[Any] | dict[str, Any]
    row: Any = None


async def pipelined(driver: Any, *statements: tuple[str, Any]) -> list[Any]:
    """The first row of each statement (None where it gave none), all of them sent to
    PostgreSQL in one round trip (psycopg's pipeline mode) on ``driver`` (see
    :func:`driver_connection`).

    They run in order in one transaction, committed after the last: the statement behind a
    write sees it. The first to fail raises its error and none of them commits.
    """
    if len(statements) == 1:  # nothing to send behind it
        [(sql, params)] = statements
        cursors = [await driver.execute(sql, params)]
    else:
        async with driver.pipeline():
            cursors = [await driver.execute(sql, params) for sql, params in statements]
    return [await cursor.fetchone() if cursor.description else None for cursor in cursors]
