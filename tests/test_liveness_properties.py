"""Provider liveness rules, and seed Property 9 through the heartbeat buffer and the liveness
monitor on a real database (SQLite and PostgreSQL) under a simulated clock.

The simulation runs the market's two periodic tasks as they are scheduled: a flush every
``flush_interval`` and a liveness check every ``heartbeat_interval`` of the simulated clock, with
heartbeats from a few providers arriving in between at generated times with generated statuses.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, insert, select

from qubix_jupyter.db.engine import make_engine, make_sessionmaker
from qubix_jupyter.db.models import Provider, ProviderMetric, User
from qubix_jupyter.market.liveness import (
    METRICS_FRESHNESS,
    InvalidLivenessPolicy,
    LivenessPolicy,
    ProviderStatus,
    flags_after,
    status_of,
)
from qubix_jupyter.market.states import ProviderType
from qubix_jupyter.server_extension.events import EventHub
from qubix_jupyter.server_extension.liveness import HeartbeatBuffer, Usage

from .conftest import DatabaseURL

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as runner:
        yield runner


@pytest.fixture
def sessionmaker(database_url: DatabaseURL, runner: asyncio.Runner) -> Iterator[Any]:
    """One engine for every example of a test, on the runner's loop."""

    async def make() -> Any:
        return make_engine(database_url.url)

    engine = runner.run(make())
    yield make_sessionmaker(engine)
    runner.run(engine.dispose())


# ---------------------------------------------------------------------- the pure rules


def test_status_table() -> None:
    assert status_of(False, True) is status_of(False, False) is ProviderStatus.OFFLINE
    assert status_of(True, True) is ProviderStatus.ONLINE
    assert status_of(True, False) is ProviderStatus.BUSY
    assert flags_after(ProviderStatus.ONLINE, False) == (True, True)
    assert flags_after(ProviderStatus.BUSY, True) == (True, False)
    assert flags_after(ProviderStatus.OFFLINE, False) == (False, False)
    assert flags_after(ProviderStatus.OFFLINE, True) == (False, True)


def test_policies_that_could_leave_metrics_older_than_60_s_are_refused() -> None:
    LivenessPolicy()  # the defaults: (3 + 1) × 5 + 10 + 1 = 31 s
    LivenessPolicy(heartbeat_interval=10.0, metrics_sample_seconds=10.0, flush_interval=10.0)
    with pytest.raises(InvalidLivenessPolicy, match="60"):
        LivenessPolicy(heartbeat_interval=15.0)
    with pytest.raises(InvalidLivenessPolicy, match="60"):
        LivenessPolicy(metrics_sample_seconds=50.0)
    for bad in ({"heartbeat_interval": 0.0}, {"flush_interval": -1.0}, {"missed_heartbeats": 0}):
        with pytest.raises(InvalidLivenessPolicy):
            LivenessPolicy(**bad)  # type: ignore[arg-type]


def test_offline_after_three_missed_heartbeats() -> None:
    policy = LivenessPolicy(heartbeat_interval=5.0)
    seen = START
    assert not policy.is_stale(seen, seen + dt.timedelta(seconds=15))
    assert policy.is_stale(seen, seen + dt.timedelta(seconds=15.001))
    assert policy.is_stale(None, seen)


# ---------------------------------------------------------------------- Property 9


policies = st.builds(
    LivenessPolicy,
    heartbeat_interval=st.sampled_from([1.0, 2.0, 5.0, 10.0]),
    metrics_sample_seconds=st.sampled_from([0.5, 1.0, 3.0, 10.0]),
    flush_interval=st.sampled_from([0.25, 0.5, 1.0, 2.0]),
)
#: (seconds after the previous one, provider index, reported status)
heartbeat_streams = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=12.0, allow_nan=False),
        st.integers(min_value=0, max_value=2),
        st.sampled_from(list(ProviderStatus)),
    ),
    max_size=15,
)


def usage(cpu_percent: float) -> Usage:
    return Usage(cpu_percent=cpu_percent, ram_percent=50.0, ram_used_gb=8.0, ram_total_gb=16.0)


async def _new_providers(sessionmaker: Any, count: int) -> list[tuple[str, str]]:
    user = str(uuid.uuid4())
    providers = [(str(uuid.uuid4()), f"w-{uuid.uuid4().hex[:12]}") for _ in range(count)]
    async with sessionmaker() as session, session.begin():
        await session.execute(insert(User), [{"id": user, "qubic_address": user[:36]}])
        await session.execute(
            insert(Provider),
            [
                {
                    "id": provider_id,
                    "worker_id": worker_id,
                    "user_id": user,
                    "qubic_address": "Q" * 60,
                    "type": ProviderType.NATIVE,
                    "gpu_model": "RTX 4090",
                    "gpu_vram": 24.0,
                    "cpu_model": "x86-64",
                    "cpu_cores": 8,
                    "ram_total": 16.0,
                    "price_per_hour": 10,
                }
                for provider_id, worker_id in providers
            ],
        )
    return providers


async def _check_freshness(
    sessionmaker: Any, policy: LivenessPolicy, ids: list[str], now: dt.datetime
) -> None:
    async with sessionmaker() as session:
        rows = await session.execute(
            select(Provider.id, Provider.is_online, func.max(ProviderMetric.timestamp))
            .outerjoin(ProviderMetric, ProviderMetric.provider_id == Provider.id)
            .where(Provider.id.in_(ids))
            .group_by(Provider.id, Provider.is_online)
        )
        for provider_id, online, newest in rows:
            if not online:
                continue
            assert newest is not None, f"{provider_id} is online without metrics"
            if newest.tzinfo is None:
                newest = newest.replace(tzinfo=dt.UTC)
            age = now - newest
            assert age <= policy.worst_metrics_age <= METRICS_FRESHNESS, (provider_id, age)


async def _simulate(
    sessionmaker: Any, policy: LivenessPolicy, stream: list[tuple[float, int, ProviderStatus]]
) -> None:
    providers = await _new_providers(sessionmaker, 3)
    ids = [p for p, _ in providers]
    clock = FakeClock()
    hub = EventHub(coalesce_interval=0)
    buffer = HeartbeatBuffer(
        sessionmaker, hub, policy, retention=dt.timedelta(hours=1), clock=clock
    )
    flush_every = dt.timedelta(seconds=policy.flush_interval)
    check_every = dt.timedelta(seconds=policy.monitor_interval)
    # The periodic tasks as a timeline: (when, order at a tie, which).
    ticks: list[tuple[dt.datetime, int, str]] = [
        (START + flush_every, 0, "flush"),
        (START + check_every, 1, "check"),
    ]

    async def run_until(moment: dt.datetime) -> None:
        while ticks[0][0] <= moment:
            when, order, kind = heapq.heappop(ticks)
            clock.now = when
            if kind == "flush":
                await buffer.flush()
                heapq.heappush(ticks, (when + flush_every, order, kind))
            else:
                # Just before a check is when the metrics of those still online are oldest.
                await _check_freshness(sessionmaker, policy, ids, clock.now)
                await buffer.check_liveness()
                heapq.heappush(ticks, (when + check_every, order, kind))
        clock.now = moment

    moment = START
    for n, (after, index, status) in enumerate(stream):
        moment += dt.timedelta(seconds=after)
        await run_until(moment)
        provider_id, worker_id = providers[index]
        buffer.record(provider_id, worker_id, status, usage(n % 100))
    # Silence: every provider is offline once the monitor has seen it miss its heartbeats.
    await run_until(moment + policy.offline_after + check_every + flush_every)
    async with sessionmaker() as session:
        online = (
            await session.scalars(
                select(Provider.worker_id).where(Provider.id.in_(ids), Provider.is_online)
            )
        ).all()
    assert online == []
    hub.close()


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(policy=policies, stream=heartbeat_streams)
def test_metrics_freshness(
    sessionmaker: Any,
    runner: asyncio.Runner,
    policy: LivenessPolicy,
    stream: list[tuple[float, int, ProviderStatus]],
) -> None:
    """**Feature: qubix-enterprise-upgrade, Property 9: For any online provider, GPU metrics
    should be no older than 60 seconds**"""

    runner.run(_simulate(sessionmaker, policy, stream))


def test_stop_writes_what_is_buffered(database_url: DatabaseURL, runner: asyncio.Runner) -> None:
    async def example() -> None:
        engine = make_engine(database_url.url)
        sessionmaker = make_sessionmaker(engine)
        [(provider_id, worker_id)] = await _new_providers(sessionmaker, 1)
        clock = FakeClock()
        hub = EventHub(coalesce_interval=0)
        buffer = HeartbeatBuffer(
            sessionmaker, hub, LivenessPolicy(), retention=dt.timedelta(hours=1), clock=clock
        )
        buffer.start()
        buffer.record(provider_id, worker_id, ProviderStatus.BUSY, usage(7))
        await buffer.stop()  # long before the first periodic flush
        async with sessionmaker() as session:
            provider = await session.get(Provider, provider_id)
            assert provider is not None
            assert (provider.is_online, provider.is_available) == (True, False)
            samples = (
                await session.scalars(
                    select(ProviderMetric.cpu_percent).where(
                        ProviderMetric.provider_id == provider_id
                    )
                )
            ).all()
            assert samples == [7.0]
        hub.close()
        await engine.dispose()

    runner.run(example())


def test_retention_deletes_old_samples(database_url: DatabaseURL, runner: asyncio.Runner) -> None:
    async def example() -> None:
        engine = make_engine(database_url.url)
        sessionmaker = make_sessionmaker(engine)
        [(provider_id, worker_id)] = await _new_providers(sessionmaker, 1)
        clock = FakeClock()
        hub = EventHub(coalesce_interval=0)
        policy = LivenessPolicy(heartbeat_interval=1.0, metrics_sample_seconds=1.0)
        buffer = HeartbeatBuffer(
            sessionmaker, hub, policy, retention=dt.timedelta(hours=1), clock=clock
        )
        for minute in range(0, 120, 10):
            clock.now = START + dt.timedelta(minutes=minute)
            buffer.record(provider_id, worker_id, ProviderStatus.ONLINE, usage(minute / 10))
            await buffer.flush()
        assert await buffer.prune() == 5  # minutes 0..40 are more than an hour before 110
        async with sessionmaker() as session:
            kept = (
                await session.scalars(
                    select(ProviderMetric.cpu_percent)
                    .where(ProviderMetric.provider_id == provider_id)
                    .order_by(ProviderMetric.timestamp)
                )
            ).all()
        assert kept == [5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]
        hub.close()
        await engine.dispose()

    runner.run(example())
