"""``GET scheduler`` for providers' workers, the scheduler's worker-token check against the
market's own tokens, and ``qubix provide``'s launcher end to end: a real market, a real embedded
scheduler and a real worker process, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from qubix_jupyter.dask_provider.gpu import HardwareReport
from qubix_jupyter.dask_provider.launcher import ProvideConfig, ProviderLauncher
from qubix_jupyter.dask_provider.scheduler import SchedulerCallbacks, start_scheduler
from qubix_jupyter.server_extension.handlers import SERVICES
from qubix_jupyter.server_extension.scheduler_endpoints import worker_validator
from qubix_jupyter.settlement.keys import KeyPair

from .conftest import SEED_ALICE, SEED_BOB, Api, body_of, login

ALICE = KeyPair.from_seed(SEED_ALICE).identity


def cpu_offer(worker_id: str) -> dict[str, Any]:
    return {
        "type": "native",
        "gpu": {"type": "native", "count": 0},
        "workerId": worker_id,
        "qubicAddress": ALICE,
        "pricePerHour": 5,
    }


async def register(api: Api, worker_id: str) -> str:
    token = (await login(api, SEED_ALICE))["token"]
    answer = await api(
        "POST", "providers/quick-register", json_body=cpu_offer(worker_id), token=token
    )
    assert answer.code == 200, answer.body
    return str(body_of(answer)["workerToken"])


async def test_scheduler_address_needs_a_worker_token_and_a_scheduler(api: Api, jp_serverapp):
    worker_token = await register(api, "w-sched")
    user_token = (await login(api, SEED_BOB))["token"]
    assert (await api("GET", "scheduler")).code == 401
    assert (await api("GET", "scheduler", token=user_token)).code == 401
    none_yet = await api("GET", "scheduler", token=worker_token)
    assert none_yet.code == 503
    assert body_of(none_yet)["error"]["code"] == "scheduler_unavailable"
    jp_serverapp.web_app.settings[SERVICES].scheduler.address = "tls://sched.example:8786"
    answer = await api("GET", "scheduler", token=worker_token)
    assert answer.code == 200, answer.body
    assert body_of(answer) == {"address": "tls://sched.example:8786", "workerId": "w-sched"}


@pytest.mark.parametrize("qubix_config", [{"scheduler_address": "tcp://10.0.0.5:8786"}])
async def test_configured_external_scheduler_is_announced(api: Api):
    worker_token = await register(api, "w-ext")
    answer = await api("GET", "scheduler", token=worker_token)
    assert body_of(answer)["address"] == "tcp://10.0.0.5:8786"


async def test_scheduler_admits_only_the_workers_own_live_token(api: Api, jp_serverapp):
    valid = worker_validator(jp_serverapp.web_app.settings[SERVICES].auth)
    first = await register(api, "w-check")
    assert await valid("w-check", first) is True
    assert await valid("w-other", first) is False  # another worker's name
    assert await valid("w-check", "qxw_made-up") is False
    assert await valid("w-check", "not-a-worker-token") is False
    second = await register(api, "w-check")  # registering again rotates the token
    assert await valid("w-check", first) is False
    assert await valid("w-check", second) is True


def _cpu_only(only: Any = None) -> HardwareReport:
    return HardwareReport(source="none", gpus=(), notes=("no GPU in this test",))


async def test_provide_registers_and_joins_the_scheduler(
    api: Api, jp_serverapp, jp_http_port: int, jp_base_url: str
):
    services = jp_serverapp.web_app.settings[SERVICES]
    online: list[str] = []
    offline: list[str] = []
    changed = asyncio.Event()

    def joined(name: str, address: str, resources: dict[str, float]) -> None:
        online.append(name)
        changed.set()

    def left(name: str, address: str) -> None:
        offline.append(name)
        changed.set()

    market = await start_scheduler(
        worker_validator(services.auth), SchedulerCallbacks(joined, left)
    )
    services.scheduler.address = market.worker_address
    launcher = ProviderLauncher(
        ProvideConfig(
            market_url=f"http://127.0.0.1:{jp_http_port}{jp_base_url}",
            seed=SEED_ALICE,
            price_per_hour=7,
            name="test box",
            heartbeat_interval_s=1,
        ),
        detect=_cpu_only,
    )
    try:
        devices = await asyncio.to_thread(launcher.start)
        assert len(devices) == 1
        worker_id = devices[0].worker_id
        assert devices[0].gpu is None
        async with asyncio.timeout(90):
            while worker_id not in online:
                changed.clear()
                await changed.wait()
        assert launcher.status()["running"] is True
        assert launcher.scheduler_address == market.worker_address
        listed = body_of(await api("GET", f"providers/{worker_id}"))
        assert listed["pricePerHour"] == 7
        assert listed["name"] == "test box"
        await asyncio.to_thread(launcher.stop)
        async with asyncio.timeout(60):
            while worker_id not in offline:
                changed.clear()
                await changed.wait()
        assert launcher.status()["running"] is False
        # Registering again (a restart of the same machine) keeps the same provider.
        again = ProviderLauncher(launcher.config, detect=_cpu_only)
        try:
            assert [d.worker_id for d in await asyncio.to_thread(again.register)] == [worker_id]
        finally:
            again.close()
    finally:
        await asyncio.to_thread(launcher.stop, 5)
        await market.close()


async def test_an_external_scheduler_checks_workers_with_the_market(
    api: Api, jp_serverapp, jp_http_port: int, jp_base_url: str
):
    from qubix_jupyter.dask_provider.scheduler import market_validator

    jp_serverapp.web_app.settings[SERVICES].scheduler.address = "tls://sched.example:8786"
    valid = market_validator(f"http://127.0.0.1:{jp_http_port}{jp_base_url}")
    token = await register(api, "w-remote")
    assert await valid("w-remote", token) is True
    assert await valid("w-other", token) is False
    assert await valid("w-remote", "qxw_forged") is False
    down = market_validator("http://127.0.0.1:9", timeout_s=2)  # nothing listens there
    assert await down("w-remote", token) is False
