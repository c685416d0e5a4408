"""Heartbeats never undo the market's assignment, on SQLite and PostgreSQL: the provider row's
``current_job_id`` is the market's alone, and a worker's reported status cannot make a provider
that holds a job available; the job's end frees it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from qubix_jupyter.db.models import Provider
from qubix_jupyter.market.liveness import ProviderStatus, flags_after
from qubix_jupyter.server_extension.handlers import SERVICES

from ..conftest import DatabaseURL
from .conftest import Api, body_of
from .test_jobs_api import COMPLETE, Market
from .test_liveness import MANUAL_FLUSH, beat


@pytest.fixture
async def market(
    api: Api, jp_serverapp: Any, database_url: DatabaseURL, jp_fetch: Callable[..., Any]
) -> Market:
    services = jp_serverapp.web_app.settings[SERVICES]
    return await Market(api, services, database_url, jp_fetch).setup()


async def provider_row(market: Market, worker_id: str) -> Provider:
    async with market.services.sessionmaker() as session:
        return (
            await session.scalars(select(Provider).where(Provider.worker_id == worker_id))
        ).one()


def test_a_provider_holding_a_job_stays_unavailable_whatever_it_reports() -> None:
    for status in ProviderStatus:
        online, available = flags_after(status, False, holds_job=True)
        assert online is (status is not ProviderStatus.OFFLINE)
        assert available is False
    assert flags_after(ProviderStatus.ONLINE, False, holds_job=False) == (True, True)


@pytest.mark.parametrize("qubix_config", [MANUAL_FLUSH])
async def test_a_heartbeat_during_an_assigned_job_keeps_the_assignment(market: Market) -> None:
    job = body_of(await market.create())["job"]
    assert job["status"] == "ASSIGNED"
    # The worker has not picked the job up yet: it reports itself idle and without a job.
    answer = await beat(market.api, "bob-1", market.worker_token, "online", currentJob=None)
    assert answer.code == 200, answer.body
    assert [j["id"] for j in body_of(answer)["pendingJobs"]] == [job["id"]]
    assert (await market.services.liveness.flush()).heartbeats == 1

    row = await provider_row(market, "bob-1")
    assert row.last_heartbeat is not None
    assert (row.is_online, row.is_available, row.current_job_id) == (True, False, job["id"])
    # So the provider is not given a second job.
    second = body_of(await market.create())["job"]
    assert second["status"] == "PENDING"

    # Offline and back online mid-job: the assignment still stands.
    await beat(market.api, "bob-1", market.worker_token, "offline", currentJob=None)
    await market.services.liveness.flush()
    row = await provider_row(market, "bob-1")
    assert (row.is_online, row.current_job_id) == (False, job["id"])
    await beat(market.api, "bob-1", market.worker_token, "online", currentJob="someone-else")
    await market.services.liveness.flush()
    row = await provider_row(market, "bob-1")
    assert (row.is_online, row.is_available, row.current_job_id) == (True, False, job["id"])

    # The job's end frees the provider, and the waiting job takes it.
    done = await market.worker("POST", f"jobs/{job['id']}/complete", COMPLETE)
    assert done.code == 200, done.body
    assert (await market.job_row(job["id"])).status.value == "COMPLETED"
    await market.services.jobs.sweep()
    assert (await market.job_row(second["id"])).status.value == "ASSIGNED"
    row = await provider_row(market, "bob-1")
    assert (row.is_available, row.current_job_id) == (False, second["id"])
    await market.audit_ok()


@pytest.mark.parametrize("qubix_config", [MANUAL_FLUSH])
async def test_a_busy_report_without_a_job_still_takes_the_provider_off(market: Market) -> None:
    await beat(market.api, "bob-1", market.worker_token, "busy")
    await market.services.liveness.flush()
    row = await provider_row(market, "bob-1")
    assert (row.is_online, row.is_available, row.current_job_id) == (True, False, None)
    assert body_of(await market.create())["job"]["status"] == "PENDING"
    await beat(market.api, "bob-1", market.worker_token, "online")
    await market.services.liveness.flush()
    await market.services.jobs.sweep()
    row = await provider_row(market, "bob-1")
    assert row.current_job_id is not None
