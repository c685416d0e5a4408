"""Seed Property 5: what was written is read back equal after the engine is disposed and the
PostgreSQL server restarted."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from qubix_jupyter.db import repositories as repo
from qubix_jupyter.db.engine import make_engine, make_sessionmaker
from qubix_jupyter.db.ledger import Ledger
from qubix_jupyter.db.models import Job, Provider, ProviderMetric, Transaction, User
from qubix_jupyter.db.pg_cluster import PgCluster

text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=40,
)
addresses = st.text(alphabet=string.ascii_uppercase, min_size=60, max_size=60)
finite = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | text,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(string.ascii_letters, max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)

records = st.fixed_dictionaries(
    {
        "address": addresses,
        "username": st.none() | text,
        "deposit": st.integers(1, 2**62),
        "provider": st.fixed_dictionaries(
            {
                "worker_id": st.text(
                    string.ascii_letters + string.digits + "-_", min_size=1, max_size=64
                ),
                "name": st.none() | text,
                "gpu_model": text,
                "gpu_vram": finite,
                "gpu_count": st.integers(0, 16),
                "cpu_cores": st.integers(1, 512),
                "ram_total": finite,
                "location": st.none() | text,
                "price_per_hour": st.integers(0, 2**62),
            }
        ),
        "job": st.fixed_dictionaries(
            {
                "model_type": st.sampled_from(["python", "cell", "benchmark"]),
                "compute_seconds": st.integers(1, 10**6),
                "max_price": st.integers(0, 10**9),
                "input_data": json_values,
            }
        ),
        "metric": st.tuples(finite, finite, st.none() | finite),
    }
)


def _snapshot_rows(rows: list[object], columns: list[str]) -> list[tuple[object, ...]]:
    out = []
    for row in rows:
        values = []
        for c in columns:
            v = getattr(row, c)
            if isinstance(v, dt.datetime):  # compare instants, whatever zone the driver returns
                v = v.astimezone(dt.UTC)
            values.append(v)
        out.append(tuple(values))
    return sorted(out, key=repr)


async def _write(url: str, data: dict) -> str:
    engine = make_engine(url)
    sessionmaker = make_sessionmaker(engine)
    try:
        async with sessionmaker() as s, s.begin():
            user = await repo.create_user(s, data["address"], username=data["username"])
            provider = await repo.create_provider(s, user.id, **data["provider"])
            await repo.create_job(s, user.id, **data["job"])
            cpu, ram, gpu = data["metric"]
            s.add(ProviderMetric(provider_id=provider.id, cpu_percent=cpu, ram_percent=ram,
                                 gpu_percent=gpu))  # fmt: skip
        await Ledger(sessionmaker).deposit(user.id, data["deposit"], idempotency_key=user.id)
        return user.id
    finally:
        await engine.dispose()


async def _read(url: str, user_id: str) -> dict[str, object]:
    engine = make_engine(url)
    try:
        async with make_sessionmaker(engine)() as s:
            users = (await s.execute(select(User).where(User.id == user_id))).scalars().all()
            providers = (
                (await s.execute(select(Provider).where(Provider.user_id == user_id)))
                .scalars()
                .all()
            )
            jobs = (await s.execute(select(Job).where(Job.user_id == user_id))).scalars().all()
            metrics = (
                (
                    await s.execute(
                        select(ProviderMetric).where(
                            ProviderMetric.provider_id.in_([p.id for p in providers])
                        )
                    )
                )
                .scalars()
                .all()
            )
            entries = (
                (await s.execute(select(Transaction).where(Transaction.user_id == user_id)))
                .scalars()
                .all()
            )
        return {
            "users": _snapshot_rows(users, [c.key for c in User.__table__.columns]),
            "providers": _snapshot_rows(providers, [c.key for c in Provider.__table__.columns]),
            "jobs": _snapshot_rows(jobs, [c.key for c in Job.__table__.columns]),
            "metrics": _snapshot_rows(metrics, [c.key for c in ProviderMetric.__table__.columns]),
            "entries": _snapshot_rows(entries, [c.key for c in Transaction.__table__.columns]),
        }
    finally:
        await engine.dispose()


def test_database_persistence(pg_cluster: PgCluster) -> None:
    """**Feature: qubix-enterprise-upgrade, Property 5: For any data write operation, a subsequent
    read should return the same data even after server restart**"""
    examples = itertools.count()

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=records)
    def write_restart_read(data: dict) -> None:
        name = f"persistence_{next(examples)}"
        url = pg_cluster.create_database(name, template="qubix_template")
        try:
            with asyncio.Runner() as runner:
                user_id = runner.run(_write(url, data))
                before = runner.run(_read(url, user_id))
                pg_cluster.restart()
                after = runner.run(_read(url, user_id))
        finally:
            pg_cluster.drop_database(name)
        assert before == after
        assert before["users"][0][1] == data["address"]
        assert [r for r in before["entries"] if data["deposit"] in r]
        assert len(before["providers"]) == len(before["jobs"]) == len(before["metrics"]) == 1

    write_restart_read()
