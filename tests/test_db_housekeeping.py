"""The pool's ping of idle connections, and the idempotency table's sweep."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from qubix_jupyter.db import engine as engine_module
from qubix_jupyter.db.auth_models import IdempotentRequest
from qubix_jupyter.db.engine import PING_AFTER_IDLE_SECONDS, make_engine, make_sessionmaker
from qubix_jupyter.db.idempotency_store import SWEEP_EVERY, IdempotencyStore
from qubix_jupyter.db.pg_cluster import PgCluster

from .conftest import TEMPLATE_DB, DatabaseURL


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> Any:
    name = "housekeeping_ping"
    url = pg_cluster.create_database(name, template=TEMPLATE_DB)
    yield url
    pg_cluster.drop_database(name)


async def test_an_idle_connection_is_pinged_and_a_fresh_one_is_not(
    pg_cluster: PgCluster, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(engine_module, "time", clock)
    engine = make_engine(pg_url, pool_size=1, max_overflow=0)

    async def backend() -> int:
        async with engine.connect() as conn:
            return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())

    def kill(pid: int) -> None:
        with pg_cluster.admin() as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

    try:
        first = await backend()
        # Idle past the limit: the ping finds the connection dead and the pool replaces it.
        kill(first)
        clock.now += PING_AFTER_IDLE_SECONDS + 1
        second = await backend()
        assert second != first
        # Back a moment ago: no ping, so a connection that died meanwhile fails its statement
        # (and the pool is invalidated, so the next checkout is a fresh connection).
        kill(second)
        clock.now += 0.5
        with pytest.raises(DBAPIError):
            await backend()
        assert await backend() not in (first, second)
    finally:
        await engine.dispose()


async def test_old_answers_are_swept_at_most_once_a_minute(database_url: DatabaseURL) -> None:
    engine = make_engine(database_url.url)
    sessionmaker = make_sessionmaker(engine)
    store = IdempotencyStore(sessionmaker, retention=dt.timedelta(days=1))
    start = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)

    async def keys() -> set[str]:
        async with sessionmaker() as session:
            return set(await session.scalars(select(IdempotentRequest.key)))

    async def add_old(key: str, at: dt.datetime) -> None:
        async with sessionmaker() as session, session.begin():
            old = at - dt.timedelta(days=2)
            session.add(IdempotentRequest(scope="s", key=key, request_hash="h", created_at=old))

    try:
        assert await store.claim("s", "a", "h", now=start) is None
        await add_old("old-1", start)
        # Within the minute the claim does not sweep: the old answer stays a little longer.
        assert await store.claim("s", "b", "h", now=start + dt.timedelta(seconds=30)) is None
        assert await keys() == {"a", "b", "old-1"}
        # A minute on, the next claim sweeps it (and keeps what is younger than a day).
        later = start + SWEEP_EVERY
        assert await store.claim("s", "c", "h", now=later) is None
        assert await keys() == {"a", "b", "c"}
        await add_old("old-2", later)
        assert await store.claim("s", "d", "h", now=later + dt.timedelta(seconds=1)) is None
        assert "old-2" in await keys()
    finally:
        await engine.dispose()
