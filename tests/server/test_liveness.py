"""Provider heartbeats, liveness and metrics history through the real server, on SQLite and
PostgreSQL: the worker-token checks, one flush for many heartbeats, a silent provider taken
offline and broadcast, and seed Property 3 end to end over several WebSocket clients."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pytest
from pytest_jupyter.jupyter_server import jp_ws_fetch  # noqa: F401 (a fixture)
from sqlalchemy import event, select
from tornado.websocket import WebSocketClientConnection

from qubix_jupyter.db.models import Job, Provider, ProviderMetric
from qubix_jupyter.market.states import JobStatus
from qubix_jupyter.server_extension.handlers import SERVICES
from qubix_jupyter.server_extension.services import Services
from qubix_jupyter.settlement.keys import KeyPair

from .conftest import SEED_ALICE, SEED_BOB, Api, body_of, login
from .test_marketplace_api import offer, register

ALICE = KeyPair.from_seed(SEED_ALICE).identity
BOB = KeyPair.from_seed(SEED_BOB).identity
#: Seed Property 3: every connected client has the update within this.
DELIVERY = 2.0


@pytest.fixture
def services(jp_serverapp) -> Services:
    return jp_serverapp.web_app.settings[SERVICES]  # type: ignore[no-any-return]


@pytest.fixture
def ws_connect(jp_ws_fetch):  # noqa: F811 (the fixture, imported above)
    async def connect(token: str) -> WebSocketClientConnection:
        return await jp_ws_fetch(  # type: ignore[no-any-return]
            "qubix", "api", "events", headers={"Authorization": f"Bearer {token}"}
        )

    return connect


async def subscribe(ws: WebSocketClientConnection, channel: str) -> None:
    await ws.write_message(json.dumps({"type": "subscribe", "channel": channel}))
    while True:
        frame = json.loads(await asyncio.wait_for(ws.read_message(), 5.0))  # type: ignore[arg-type]
        assert frame["type"] != "error", frame
        if frame["type"] == "SUBSCRIBED":
            return


async def next_event(
    ws: WebSocketClientConnection,
    kind: str,
    within: float = 5.0,
    where: Callable[[dict[str, Any]], bool] = lambda frame: True,
    **data: Any,
) -> dict[str, Any]:
    """The next frame of type ``kind`` whose data has these values and that satisfies ``where``
    (frames before it are skipped)."""

    async def wait() -> dict[str, Any]:
        while True:
            message = await ws.read_message()
            assert message is not None, f"closed: {ws.close_code} {ws.close_reason}"
            frame = json.loads(message)
            if (
                frame["type"] == kind
                and all(frame["data"].get(k) == v for k, v in data.items())
                and where(frame)
            ):
                return frame  # type: ignore[no-any-return]

    return await asyncio.wait_for(wait(), within)


async def frames_until(
    ws: WebSocketClientConnection, *wanted: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """Frames, in arrival order, until each predicate has matched one (in any order)."""
    seen: list[dict[str, Any]] = []
    missing = list(wanted)

    async def wait() -> None:
        while missing:
            message = await ws.read_message()
            assert message is not None, f"closed: {ws.close_code} {ws.close_reason}"
            frame = json.loads(message)
            seen.append(frame)
            for predicate in missing:
                if predicate(frame):
                    missing.remove(predicate)
                    break

    await asyncio.wait_for(wait(), 5.0)
    return seen


def status_frame(channel: str, status: str) -> Callable[[dict[str, Any]], bool]:
    return lambda f: (
        f["type"] == "PROVIDER_STATUS_CHANGED"
        and f["channel"] == channel
        and f["data"]["status"] == status
    )


def listing_frame(status: str) -> Callable[[dict[str, Any]], bool]:
    return lambda f: (
        f["type"] == "MARKETPLACE_UPDATE"
        and any(
            p["workerId"] == "w-1" and p["status"] == status for p in f["data"].get("providers", [])
        )
    )


def usage(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "cpuPercent": 12.5,
        "ramPercent": 40.0,
        "ramUsedGb": 6.4,
        "ramTotalGb": 16.0,
        "gpuPercent": 80.0,
        "gpuTemp": 65.0,
        "gpuMemUsedMb": 12000.0,
        "gpuMemTotalMb": 24000.0,
        "timestamp": "2026-01-01T12:00:00Z",
    }
    body.update(changes)
    return body


async def beat(
    api: Api, worker_id: str, worker_token: str | None, status: str = "online", **body: Any
) -> Any:
    sent = {"workerId": worker_id, "usage": usage(), "status": status, **body}
    return await api("POST", f"providers/{worker_id}/heartbeat", json_body=sent, token=worker_token)


async def provider_row(services: Services, worker_id: str) -> Provider:
    async with services.sessionmaker() as session:
        return (
            await session.scalars(select(Provider).where(Provider.worker_id == worker_id))
        ).one()


async def samples(services: Services, provider_id: str) -> list[ProviderMetric]:
    async with services.sessionmaker() as session:
        return list(
            (
                await session.scalars(
                    select(ProviderMetric)
                    .where(ProviderMetric.provider_id == provider_id)
                    .order_by(ProviderMetric.timestamp)
                )
            ).all()
        )


# Flushes only when a test asks (the periodic one would come after the test is over).
MANUAL_FLUSH = {"heartbeat_flush_interval": 30.0, "metrics_sample_seconds": 5.0}


# ---------------------------------------------------------------------- the heartbeat


@pytest.mark.parametrize("qubix_config", [MANUAL_FLUSH])
async def test_heartbeat_answers_the_jobs_assigned_to_the_provider(api: Api, services: Services):
    alice = await login(api)
    registered = await register(api, alice["token"], offer("w-1", ALICE))
    token = registered["workerToken"]
    answer = await beat(api, "w-1", token)
    assert answer.code == 200, answer.body
    assert body_of(answer) == {"success": True, "pendingJobs": []}

    provider_id = registered["provider"]["id"]
    async with services.sessionmaker() as session, session.begin():
        for status in (JobStatus.ASSIGNED, JobStatus.PENDING, JobStatus.RUNNING):
            session.add(
                Job(
                    user_id=alice["user"]["id"],
                    provider_id=provider_id,
                    model_type=f"python-{status.value.lower()}",
                    compute_seconds=1800,
                    max_price=10,
                    estimated_cost=5,
                    status=status,
                )
            )
    answer = await beat(api, "w-1", token, status="busy", currentJob=None)
    [job] = body_of(answer)["pendingJobs"]
    assert set(job) == {"id", "modelType", "computeNeeded", "createdAt"}
    assert (job["modelType"], job["computeNeeded"]) == ("python-assigned", 0.5)


def _assigned(user_id: str, provider_id: str, name: str) -> Job:
    return Job(
        user_id=user_id,
        provider_id=provider_id,
        model_type=name,
        compute_seconds=3600,
        max_price=10,
        estimated_cost=10,
        status=JobStatus.ASSIGNED,
    )


@pytest.mark.parametrize("qubix_config", [MANUAL_FLUSH])
async def test_heartbeats_arriving_together_share_one_read_of_their_jobs(
    api: Api, services: Services
):
    alice = await login(api)
    ids = []
    for n in range(6):
        registered = await register(api, alice["token"], offer(f"w-{n}", ALICE))
        ids.append(registered["provider"]["id"])
    async with services.sessionmaker() as session, session.begin():
        session.add_all(
            [
                _assigned(alice["user"]["id"], ids[0], "first-of-0"),
                _assigned(alice["user"]["id"], ids[3], "only-of-3"),
                _assigned(alice["user"]["id"], ids[0], "second-of-0"),
            ]
        )
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM jobs" in statement:
            statements.append(statement)

    engine = services.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        answers = await asyncio.gather(*(services.liveness.assigned_jobs(i) for i in ids))
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert [[j.model_type for j in jobs] for jobs in answers] == [
        ["first-of-0", "second-of-0"],
        [],
        [],
        ["only-of-3"],
        [],
        [],
    ]
    assert len(statements) == 1, statements


@pytest.mark.parametrize("qubix_config", [MANUAL_FLUSH])
async def test_worker_tokens_looked_up_together_share_one_query(api: Api, services: Services):
    alice = await login(api)
    registered = [await register(api, alice["token"], offer(f"w-{n}", ALICE)) for n in range(5)]
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM worker_tokens" in statement or "JOIN worker_tokens" in statement:
            statements.append(statement)

    engine = services.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:  # registering forgot any cached lookup: these are all cold, as after a restart
        owners = await asyncio.gather(
            *(services.auth.authenticate_worker(f"Bearer {r['workerToken']}") for r in registered)
        )
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert [o.worker_id for o in owners] == [f"w-{n}" for n in range(5)]
    assert [o.provider_id for o in owners] == [r["provider"]["id"] for r in registered]
    assert len(statements) == 1, statements


@pytest.mark.parametrize("qubix_config", [MANUAL_FLUSH])
async def test_a_heartbeat_never_gets_an_answer_read_before_it_arrived(
    api: Api, services: Services
):
    alice = await login(api)
    provider_id = (await register(api, alice["token"], offer("w-1", ALICE)))["provider"]["id"]
    earlier = asyncio.create_task(services.liveness.assigned_jobs(provider_id))
    await asyncio.sleep(0)  # its read may have begun
    async with services.sessionmaker() as session, session.begin():
        session.add(_assigned(alice["user"]["id"], provider_id, "assigned-meanwhile"))
    later = await services.liveness.assigned_jobs(provider_id)
    assert [j.model_type for j in later] == ["assigned-meanwhile"]
    await earlier


@pytest.mark.parametrize("qubix_config", [MANUAL_FLUSH])
async def test_worker_routes_keep_the_markets_rules_without_jupyters_stack(
    api: Api, jp_auth_header: dict[str, str]
):
    alice = await login(api)
    token = (await register(api, alice["token"], offer("w-1", ALICE)))["workerToken"]
    answer = await beat(api, "w-1", token)
    assert answer.code == 200, answer.body
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["Content-Security-Policy"] == "default-src 'none'"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    # A browser page from another origin is refused, as on every market route.
    foreign = await api(
        "POST",
        "providers/w-1/heartbeat",
        json_body={"usage": usage(), "status": "online"},
        token=token,
        headers={"Origin": "https://evil.example"},
    )
    assert foreign.code == 403, foreign.body
    assert body_of(foreign)["error"]["code"] == "forbidden"
    assert foreign.headers["Content-Type"] == "application/json"
    assert "Access-Control-Allow-Origin" not in foreign.headers
    # Jupyter's own token is not a worker token; a malformed body is a 400/422, never a 500.
    jupyter = await api(
        "POST", "providers/w-1/heartbeat", json_body={}, headers=dict(jp_auth_header)
    )
    assert jupyter.code == 401, jupyter.body
    garbage = await api("POST", "providers/w-1/heartbeat", body="{not json", token=token)
    assert garbage.code == 400, garbage.body
    assert body_of(garbage)["error"]["code"] == "invalid_json"


@pytest.mark.parametrize("qubix_config", [MANUAL_FLUSH])
async def test_heartbeat_refusals(api: Api):
    alice = await login(api, SEED_ALICE)
    bob = await login(api, SEED_BOB)
    first = (await register(api, alice["token"], offer("w-a", ALICE)))["workerToken"]
    bobs = (await register(api, bob["token"], offer("w-b", BOB)))["workerToken"]

    def refused(response: Any, status: int, code: str) -> None:
        assert response.code == status, response.body
        assert body_of(response)["error"]["code"] == code

    refused(await beat(api, "w-a", None), 401, "unauthorized")
    refused(await beat(api, "w-a", alice["token"]), 401, "unauthorized")  # a user token
    refused(await beat(api, "w-a", "qxw_not-a-token"), 401, "unauthorized")
    # Registering again issues a new worker token and revokes the first.
    second = (await register(api, alice["token"], offer("w-a", ALICE)))["workerToken"]
    refused(await beat(api, "w-a", first), 401, "unauthorized")
    assert (await beat(api, "w-a", second)).code == 200

    refused(await beat(api, "w-b", second), 403, "forbidden")  # bob's provider
    refused(await beat(api, "w-nobody", second), 404, "unknown_provider")
    assert (await beat(api, "w-b", bobs)).code == 200

    for bad in (
        {"usage": usage(cpuPercent=101)},
        {"usage": usage(timestamp="yesterday")},
        {"usage": {"cpuPercent": 1}},
        {"status": "asleep"},
        {"workerId": "w-b"},  # not the path's
        {"currentJob": "x" * 37},
        {"surprise": 1},
    ):
        body = {"workerId": "w-a", "usage": usage(), "status": "online", **bad}
        response = await api("POST", "providers/w-a/heartbeat", json_body=body, token=second)
        refused(response, 422, "validation_failed")


@pytest.mark.parametrize("qubix_config", [MANUAL_FLUSH])
async def test_many_heartbeats_are_written_by_one_flush(api: Api, services: Services):
    alice = await login(api)
    registered = await register(api, alice["token"], offer("w-1", ALICE))
    token, provider_id = registered["workerToken"], registered["provider"]["id"]
    for n in range(20):
        status = "busy" if n == 19 else "online"
        response = await beat(api, "w-1", token, status, usage=usage(cpuPercent=float(n)))
        assert response.code == 200

    # Nothing written per heartbeat: the row is as registration left it.
    row = await provider_row(services, "w-1")
    assert (row.is_online, row.last_heartbeat) == (False, None)
    assert await samples(services, provider_id) == []

    report = await services.liveness.flush()
    assert (report.heartbeats, report.samples, report.status_changes) == (1, 1, 1)
    row = await provider_row(services, "w-1")
    assert (row.is_online, row.is_available) == (True, False)  # the last one said busy
    assert row.last_heartbeat is not None
    [sample] = await samples(services, provider_id)
    assert sample.cpu_percent == 19.0  # the latest heartbeat's usage
    assert (sample.gpu_percent, sample.gpu_temp, sample.gpu_mem_used) == (80.0, 65.0, 12000.0)

    # Within metrics_sample_seconds the next flush updates the row but adds no sample.
    await beat(api, "w-1", token, "online")
    report = await services.liveness.flush()
    assert (report.heartbeats, report.samples, report.status_changes) == (1, 0, 1)
    assert len(await samples(services, provider_id)) == 1
    assert (await services.liveness.flush()).heartbeats == 0  # nothing buffered


# ---------------------------------------------------------------------- liveness, broadcast


FAST = {"heartbeat_interval": 0.2, "heartbeat_flush_interval": 0.1, "metrics_sample_seconds": 1.0}


@pytest.mark.parametrize("qubix_config", [FAST])
async def test_a_silent_provider_goes_offline_and_clients_are_told(
    api: Api, services: Services, ws_connect
):
    alice = await login(api)
    registered = await register(api, alice["token"], offer("w-1", ALICE))
    token = registered["workerToken"]
    ws = await ws_connect(alice["token"])
    await subscribe(ws, "marketplace")
    await subscribe(ws, "provider:w-1")

    assert (await beat(api, "w-1", token)).code == 200
    frames = await frames_until(
        ws,
        status_frame("marketplace", "online"),
        status_frame("provider:w-1", "online"),
        listing_frame("online"),
        lambda f: f["type"] == "GPU_METRICS_UPDATE",
    )
    online = next(f for f in frames if status_frame("marketplace", "online")(f))
    assert online["data"]["previousStatus"] == "offline"
    assert online["data"]["isOnline"] is True
    metrics = next(f for f in frames if f["type"] == "GPU_METRICS_UPDATE")
    assert metrics["channel"] == "provider:w-1"
    assert metrics["data"]["usage"]["gpuPercent"] == 80.0
    assert metrics["data"]["status"] == "online"

    # No more heartbeats: offline after 3 × 0.2 s, on both channels, and in the listing.
    frames = await frames_until(
        ws,
        status_frame("marketplace", "offline"),
        status_frame("provider:w-1", "offline"),
        listing_frame("offline"),
    )
    offline = next(f for f in frames if status_frame("provider:w-1", "offline")(f))
    assert offline["data"] | {"lastHeartbeat": None} == {
        "workerId": "w-1",
        "status": "offline",
        "previousStatus": "online",
        "isOnline": False,
        "isAvailable": True,
        "lastHeartbeat": None,
    }
    assert offline["data"]["lastHeartbeat"] is not None
    assert (await provider_row(services, "w-1")).is_online is False
    ws.close()


@pytest.mark.parametrize("qubix_config", [{"heartbeat_flush_interval": 0.5}])
async def test_registration_and_status_changes_reach_every_client(
    api: Api, services: Services, ws_connect
):
    """**Feature: qubix-enterprise-upgrade, Property 3: For any provider registration or status
    change, all connected marketplace clients should receive the update within 2 seconds**"""
    viewers = [await login(api, seed) for seed in ("c" * 55, "d" * 55, "e" * 55, "f" * 55)]
    clients = [await ws_connect(v["token"]) for v in viewers]
    for ws in clients:
        await subscribe(ws, "marketplace")
    alice = await login(api)

    registered = await register(api, alice["token"], offer("w-new", ALICE))
    for ws in clients:
        frame = await next_event(ws, "PROVIDER_REGISTERED", DELIVERY, workerId="w-new")
        assert frame["data"]["gpuModel"] == "RTX 4090"
        assert "userId" not in frame["data"]  # the public offer, not the owner's view

    assert (await beat(api, "w-new", registered["workerToken"])).code == 200
    for ws in clients:
        await next_event(ws, "PROVIDER_STATUS_CHANGED", DELIVERY, workerId="w-new", status="online")

    patched = await api(
        "PATCH", "providers/w-new", json_body={"isAvailable": False}, token=alice["token"]
    )
    assert patched.code == 200, patched.body
    for ws in clients:
        await next_event(ws, "PROVIDER_STATUS_CHANGED", DELIVERY, workerId="w-new", status="busy")

    repriced = await api(
        "PATCH", "providers/w-new", json_body={"pricePerHour": 55}, token=alice["token"]
    )
    assert repriced.code == 200
    for ws in clients:
        await next_event(
            ws,
            "MARKETPLACE_UPDATE",
            DELIVERY,
            where=lambda f: any(
                (p["workerId"], p["pricePerHour"]) == ("w-new", 55)
                for p in f["data"].get("providers", [])
            ),
        )

    assert (await api("DELETE", "providers/w-new", token=alice["token"])).code == 200
    for ws in clients:
        await next_event(
            ws,
            "MARKETPLACE_UPDATE",
            DELIVERY,
            where=lambda f: "w-new" in f["data"].get("removed", []),
        )
    for ws in clients:
        ws.close()


# ---------------------------------------------------------------------- metrics history


@pytest.mark.parametrize("qubix_config", [MANUAL_FLUSH])
async def test_metrics_history_is_the_owners(api: Api, services: Services, jp_fetch):
    alice = await login(api, SEED_ALICE)
    bob = await login(api, SEED_BOB)
    registered = await register(api, alice["token"], offer("w-1", ALICE))
    provider_id = registered["provider"]["id"]
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    async with services.sessionmaker() as session, session.begin():
        for minute in range(5):
            session.add(
                ProviderMetric(
                    provider_id=provider_id,
                    cpu_percent=float(minute),
                    ram_percent=10.0,
                    timestamp=base + dt.timedelta(minutes=minute),
                )
            )

    def cpus(response: Any) -> list[float]:
        assert response.code == 200, response.body
        body = body_of(response)
        assert body["workerId"] == "w-1"
        return [m["cpuPercent"] for m in body["metrics"]]

    async def history(token: str | None, worker_id: str = "w-1", **params: Any) -> Any:
        return await jp_fetch(
            "qubix",
            "api",
            "providers",
            worker_id,
            "metrics",
            params=params,
            headers={"Authorization": f"Bearer {token}" if token else ""},
            raise_error=False,
        )

    mine = alice["token"]
    assert cpus(await history(mine)) == [0, 1, 2, 3, 4]
    assert cpus(await history(mine, limit=2)) == [3, 4]
    window = {"since": "2026-01-01T00:01:00Z", "until": "2026-01-01T00:03:00Z"}
    assert cpus(await history(mine, **window)) == [1, 2, 3]
    [first] = body_of(await history(mine, limit=1))["metrics"]
    assert set(first) == {"cpuPercent", "ramPercent", "gpuPercent", "gpuTemp", "gpuMemUsed",
                          "timestamp"}  # fmt: skip

    for response, status in (
        (await history(None), 401),
        (await history(bob["token"]), 403),
        (await history(mine, "w-nobody"), 404),
        (await history(mine, limit=0), 422),
        (await history(mine, since="soon"), 422),
        (await history(mine, bogus=1), 422),
    ):
        assert response.code == status, (status, response.body)
