"""The events WebSocket ``qubix/api/events`` through the real server, on both databases."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pytest_jupyter.jupyter_server import jp_ws_fetch  # noqa: F401 (a fixture)
from tornado.httpclient import HTTPClientError
from tornado.websocket import WebSocketClientConnection

from qubix_jupyter.db.models import Job, Provider
from qubix_jupyter.market.states import ProviderType
from qubix_jupyter.server_extension.app import QubixExtension
from qubix_jupyter.server_extension.events import EventHub, EventType, HeartbeatPolicy
from qubix_jupyter.server_extension.handlers import SERVICES
from qubix_jupyter.server_extension.websocket import EVENTS, EventsHandler

from .conftest import SEED_ALICE, SEED_BOB, Api, body_of, login

SEED_CAROL = "c" * 55


@pytest.fixture
def hub(jp_serverapp) -> EventHub:
    return jp_serverapp.web_app.settings[EVENTS]  # type: ignore[no-any-return]


@pytest.fixture
def ws_connect(jp_ws_fetch):  # noqa: F811 (the fixture, imported above)
    async def connect(
        token: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> WebSocketClientConnection:
        # jp_ws_fetch adds Jupyter's token when no Authorization is given: send an empty one.
        sent = {"Authorization": f"Bearer {token}" if token else ""}
        sent.update(headers or {})
        return await jp_ws_fetch("qubix", "api", "events", headers=sent, params=params)  # type: ignore[no-any-return]

    return connect


async def recv(ws: WebSocketClientConnection) -> dict[str, Any]:
    message = await asyncio.wait_for(ws.read_message(), 5.0)
    assert message is not None, f"closed: {ws.close_code} {ws.close_reason}"
    return json.loads(message)  # type: ignore[no-any-return]


async def subscribe(
    ws: WebSocketClientConnection, channel: str, since: int | None = None
) -> list[dict[str, Any]]:
    """Send a subscribe; the frames up to and including its SUBSCRIBED (or one error)."""
    message: dict[str, Any] = {"type": "subscribe", "channel": channel}
    if since is not None:
        message["sinceSeq"] = since
    await ws.write_message(json.dumps(message))
    frames = []
    while True:
        frame = await recv(ws)
        frames.append(frame)
        if frame["type"] in {"SUBSCRIBED", "error"}:
            return frames


async def no_frame(ws: WebSocketClientConnection, wait: float = 0.2) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.read_message(), wait)


async def test_refused_without_a_market_token(api: Api, ws_connect, jp_ws_fetch):  # noqa: F811
    for token in (None, "not-a-token"):
        with pytest.raises(HTTPClientError) as refused:
            await ws_connect(token)
        assert refused.value.code == 401
        assert body_of(refused.value.response)["error"]["code"] == "unauthorized"
    # Jupyter's own token (jp_ws_fetch's default header) is never a market token
    with pytest.raises(HTTPClientError) as refused:
        await jp_ws_fetch("qubix", "api", "events")
    assert refused.value.code == 401
    # a revoked token is refused too
    session = await login(api)
    assert (await api("POST", "auth/revoke", token=session["token"])).code == 200
    with pytest.raises(HTTPClientError) as refused:
        await ws_connect(session["token"])
    assert refused.value.code == 401


async def test_token_as_header_or_query_parameter(api: Api, ws_connect):
    token = (await login(api))["token"]
    ws = await ws_connect(token)
    assert (await subscribe(ws, "marketplace"))[-1]["type"] == "SUBSCRIBED"
    ws.close()
    ws = await ws_connect(params={"token": token})
    assert (await subscribe(ws, "wallet"))[-1]["type"] == "SUBSCRIBED"
    ws.close()


async def test_origins(api: Api, ws_connect, jp_http_port):
    token = (await login(api))["token"]
    with pytest.raises(HTTPClientError) as refused:
        await ws_connect(token, headers={"Origin": "https://evil.example"})
    assert refused.value.code == 403
    assert body_of(refused.value.response)["error"]["code"] == "forbidden"
    ws = await ws_connect(token, headers={"Origin": f"http://localhost:{jp_http_port}"})
    assert (await subscribe(ws, "marketplace"))[-1]["type"] == "SUBSCRIBED"
    ws.close()


@pytest.mark.parametrize("qubix_config", [{"allowed_origins": ["https://lab.example.org"]}])
async def test_configured_origin_is_allowed(api: Api, ws_connect):
    token = (await login(api))["token"]
    ws = await ws_connect(token, headers={"Origin": "https://lab.example.org"})
    assert (await subscribe(ws, "marketplace"))[-1]["type"] == "SUBSCRIBED"
    ws.close()
    with pytest.raises(HTTPClientError) as refused:
        await ws_connect(token, headers={"Origin": "https://other.example.org"})
    assert refused.value.code == 403


async def test_marketplace_event_in_the_design_envelope(api: Api, ws_connect, hub: EventHub):
    token = (await login(api))["token"]
    ws = await ws_connect(token)
    [subscribed] = await subscribe(ws, "marketplace")
    assert subscribed["type"] == "SUBSCRIBED"
    assert subscribed["channel"] == "marketplace"
    seq = hub.publish("marketplace", EventType.PROVIDER_REGISTERED, {"workerId": "w-1"})
    frame = await recv(ws)
    assert set(frame) == {"type", "channel", "seq", "ts", "data"}
    assert frame["type"] == "PROVIDER_REGISTERED"
    assert frame["channel"] == "marketplace"
    assert frame["seq"] == seq > subscribed["seq"]
    assert isinstance(frame["ts"], int)
    assert frame["data"] == {"workerId": "w-1"}
    ws.close()


def _handler_of(hub: EventHub) -> EventsHandler:
    [sub] = list(hub._connections)
    return sub._send.__self__  # type: ignore[union-attr,no-any-return]


async def test_frames_of_one_loop_pass_leave_in_one_write_in_order(
    api: Api, ws_connect, hub: EventHub, monkeypatch: pytest.MonkeyPatch
):
    """A registration's frames (and any others published in the same pass of the event loop)
    are held and written to each connection together, in publish order."""
    writes: list[int] = []
    write_held = EventsHandler._write_held

    def spy(self: EventsHandler) -> None:
        writes.append(len(self._held or ()))
        write_held(self)

    monkeypatch.setattr(EventsHandler, "_write_held", spy)
    token = (await login(api))["token"]
    ws = await ws_connect(token)
    await subscribe(ws, "marketplace")
    writes.clear()
    seqs = [
        hub.publish("marketplace", EventType.PROVIDER_REGISTERED, {"workerId": f"w-{n}"})
        for n in range(3)
    ]
    frames = [await recv(ws) for _ in seqs]
    assert [f["seq"] for f in frames] == seqs
    assert [f["data"]["workerId"] for f in frames] == ["w-0", "w-1", "w-2"]
    assert writes == [3]  # one write for the three
    ws.close()


async def test_a_frame_behind_a_write_in_flight_goes_behind_it(api: Api, ws_connect, hub: EventHub):
    """While the connection's stream is still writing, a frame is not held: it is written
    behind what is in flight (the hub waits for it), and the order holds."""
    token = (await login(api))["token"]
    ws = await ws_connect(token)
    await subscribe(ws, "marketplace")
    stream = _handler_of(hub).ws_connection.stream  # type: ignore[union-attr]
    stream.writing = lambda: True  # as if the socket were full
    try:
        first = hub.publish("marketplace", EventType.PROVIDER_REGISTERED, {"workerId": "a"})
        second = hub.publish("marketplace", EventType.PROVIDER_REGISTERED, {"workerId": "b"})
        assert _handler_of(hub)._held is None
    finally:
        del stream.writing
    assert [(await recv(ws))["seq"] for _ in range(2)] == [first, second]
    ws.close()


async def test_a_frame_larger_than_the_socket_takes_is_sent_whole_then_the_next(
    api: Api, ws_connect, hub: EventHub
):
    """A held write the socket takes only part of: the rest goes through the stream, and the
    frames after it follow it whole and in order."""
    token = (await login(api))["token"]
    ws = await ws_connect(token)
    await subscribe(ws, "marketplace")
    big = "x" * (6 * 2**20)  # more than a loopback socket buffer takes at once
    hub.publish("marketplace", EventType.PROVIDER_REGISTERED, {"workerId": "big", "blob": big})
    await asyncio.sleep(0)  # the held write goes out, in part
    after = hub.publish("marketplace", EventType.PROVIDER_REGISTERED, {"workerId": "after"})
    frame = await recv(ws)
    assert frame["data"]["blob"] == big
    assert (await recv(ws))["seq"] == after
    ws.close()


async def test_wallet_events_go_to_their_owner_only(api: Api, ws_connect, hub: EventHub):
    alice = await login(api, SEED_ALICE)
    bob = await login(api, SEED_BOB)
    ws_alice = await ws_connect(alice["token"])
    ws_bob = await ws_connect(bob["token"])
    await subscribe(ws_alice, "wallet")
    await subscribe(ws_bob, "wallet")
    hub.publish("wallet", EventType.BALANCE_CHANGED, {"balance": 7}, user_id=alice["user"]["id"])
    hub.publish("wallet", EventType.BALANCE_CHANGED, {"balance": 9}, user_id=bob["user"]["id"])
    frame = await recv(ws_alice)
    assert (frame["type"], frame["channel"], frame["data"]) == (
        "BALANCE_CHANGED",
        "wallet",
        {"balance": 7},
    )
    assert (await recv(ws_bob))["data"] == {"balance": 9}  # bob's first frame is his own
    await no_frame(ws_alice)
    await no_frame(ws_bob)
    ws_alice.close()
    ws_bob.close()


async def _provider_and_job(jp_serverapp, provider_owner: str, consumer: str) -> tuple[str, str]:
    """A provider of ``provider_owner`` and a job of ``consumer`` assigned to it."""
    services = jp_serverapp.web_app.settings[SERVICES]
    async with services.sessionmaker() as session, session.begin():
        provider = Provider(
            worker_id="worker-1",
            user_id=provider_owner,
            qubic_address="A" * 60,
            type=ProviderType.NATIVE,
            gpu_model="H200",
            gpu_vram=141.0,
            cpu_model="EPYC",
            cpu_cores=16,
            ram_total=128.0,
            price_per_hour=10,
        )
        session.add(provider)
        await session.flush()
        job = Job(
            user_id=consumer,
            provider_id=provider.id,
            model_type="python",
            compute_seconds=60,
            max_price=10,
            estimated_cost=1,
        )
        session.add(job)
        await session.flush()
        return provider.worker_id, job.id


async def test_private_channels_check_ownership(api: Api, ws_connect, hub, jp_serverapp):
    alice = await login(api, SEED_ALICE)  # provider owner
    bob = await login(api, SEED_BOB)  # consumer
    carol = await login(api, SEED_CAROL)  # neither
    worker_id, job_id = await _provider_and_job(
        jp_serverapp, alice["user"]["id"], bob["user"]["id"]
    )

    ws = await ws_connect(carol["token"])
    for channel in (f"job:{job_id}", f"provider:{worker_id}", "job:no-such-job", "provider:nope"):
        [error] = await subscribe(ws, channel)
        assert error["type"] == "error"
        assert error["status"] == 403
        assert error["channel"] == channel
        assert error["error"]["code"] == "channel_forbidden"
        assert set(error["error"]) == {"code", "message", "details"}
    # the connection stays usable
    assert (await subscribe(ws, "marketplace"))[-1]["type"] == "SUBSCRIBED"
    hub.publish(f"job:{job_id}", EventType.JOB_PROGRESS, {"jobId": job_id, "progress": 1})
    await no_frame(ws)
    ws.close()

    ws_bob = await ws_connect(bob["token"])
    assert (await subscribe(ws_bob, f"job:{job_id}"))[-1]["type"] == "SUBSCRIBED"
    [error] = await subscribe(ws_bob, f"provider:{worker_id}")
    assert error["error"]["code"] == "channel_forbidden"
    ws_alice = await ws_connect(alice["token"])
    assert (await subscribe(ws_alice, f"provider:{worker_id}"))[-1]["type"] == "SUBSCRIBED"
    assert (await subscribe(ws_alice, f"job:{job_id}"))[-1]["type"] == "SUBSCRIBED"
    seq = hub.publish(f"job:{job_id}", EventType.JOB_PROGRESS, {"jobId": job_id, "progress": 40})
    for ws_owner in (ws_bob, ws_alice):
        frame = await recv(ws_owner)
        assert (frame["type"], frame["seq"], frame["data"]["progress"]) == (
            "JOB_PROGRESS",
            seq,
            40,
        )
    ws_bob.close()
    ws_alice.close()


async def test_resume_with_since_seq_receives_exactly_the_missed_frames(
    api: Api, ws_connect, hub: EventHub
):
    token = (await login(api))["token"]
    ws = await ws_connect(token)
    await subscribe(ws, "marketplace")
    hub.publish("marketplace", EventType.PROVIDER_REGISTERED, {"workerId": "w-1"})
    position = (await recv(ws))["seq"]
    ws.close()
    await asyncio.sleep(0.05)

    missed = [
        hub.publish("marketplace", EventType.PROVIDER_STATUS_CHANGED, {"workerId": f"w-{i}"})
        for i in (2, 3)
    ]
    hub.publish("provider:elsewhere", EventType.GPU_METRICS_UPDATE, {"gpu": 1})

    ws = await ws_connect(token)
    frames = await subscribe(ws, "marketplace", since=position)
    assert [f["seq"] for f in frames[:-1]] == missed
    assert [f["data"]["workerId"] for f in frames[:-1]] == ["w-2", "w-3"]
    assert frames[-1]["type"] == "SUBSCRIBED"
    assert frames[-1]["data"] == {"since": position}
    live = hub.publish("marketplace", EventType.PROVIDER_REGISTERED, {"workerId": "w-4"})
    assert (await recv(ws))["seq"] == live
    ws.close()


async def test_bad_messages_get_an_error_frame_and_the_connection_stays(
    api: Api, ws_connect, hub: EventHub
):
    token = (await login(api))["token"]
    ws = await ws_connect(token)
    cases: list[tuple[str | bytes, int, str]] = [
        ("{not json", 400, "invalid_json"),
        ("NaN", 400, "invalid_json"),
        (b"\x00\x01", 400, "invalid_json"),
        ("[1, 2]", 422, "validation_failed"),
        ('{"type": "dance"}', 422, "validation_failed"),
        ('{"channel": "marketplace"}', 422, "validation_failed"),
        ('{"type": "subscribe", "channel": "moon"}', 422, "invalid_channel"),
        ('{"type": "subscribe", "channel": 7}', 422, "invalid_channel"),
        ('{"type": "subscribe", "channel": "marketplace", "sinceSeq": "x"}', 422, "invalid_event"),
        ('{"type": "unsubscribe", "channel": "job:"}', 422, "invalid_channel"),
    ]
    for message, status, code in cases:
        await ws.write_message(message, binary=isinstance(message, bytes))
        frame = await recv(ws)
        assert frame["type"] == "error", message
        assert (frame["status"], frame["error"]["code"]) == (status, code), message
    assert (await subscribe(ws, "marketplace"))[-1]["type"] == "SUBSCRIBED"
    seq = hub.publish("marketplace", EventType.PROVIDER_REGISTERED, {"workerId": "w-1"})
    assert (await recv(ws))["seq"] == seq
    ws.close()


async def test_unsubscribe_stops_the_channel(api: Api, ws_connect, hub: EventHub):
    token = (await login(api))["token"]
    ws = await ws_connect(token)
    await subscribe(ws, "marketplace")
    await ws.write_message(json.dumps({"type": "unsubscribe", "channel": "marketplace"}))
    [subscribed] = await subscribe(ws, "wallet")  # ordered after the unsubscribe
    assert subscribed["channel"] == "wallet"
    hub.publish("marketplace", EventType.PROVIDER_REGISTERED, {"workerId": "w-1"})
    await no_frame(ws)
    ws.close()
    await asyncio.sleep(0.05)
    assert hub.connections == 0  # the handler's on_close closed its subscription


async def test_server_stop_closes_connections_cleanly(api: Api, ws_connect, hub, jp_serverapp):
    token = (await login(api))["token"]
    ws = await ws_connect(token)
    await subscribe(ws, "marketplace")
    [extension] = jp_serverapp.extension_manager.extension_apps["qubix_jupyter"]
    await extension.stop_extension()
    assert await asyncio.wait_for(ws.read_message(), 5) is None
    assert (ws.close_code, ws.close_reason) == (1001, "going_away")
    assert hub.connections == 0
    ws.close()


async def test_events_are_documented_in_openapi(api: Api):
    document = body_of(await api("GET", "openapi.json"))
    operation = document["paths"]["/events"]["get"]
    assert "x-websocket" in operation
    assert {"101", "401", "403"} <= set(operation["responses"])
    assert "tokenQuery" in document["components"]["securitySchemes"]


@pytest.fixture
def fast_pings(monkeypatch: pytest.MonkeyPatch) -> HeartbeatPolicy:
    """Request it before the server fixtures: the handler pings every 0.2 s."""
    policy = HeartbeatPolicy(ping_interval=0.2, ping_timeout=0.2)
    monkeypatch.setattr(QubixExtension, "event_heartbeat", policy)
    return policy


async def test_a_peer_that_stops_answering_pings_is_closed(
    fast_pings: HeartbeatPolicy, api: Api, ws_connect, hub: EventHub
):
    token = (await login(api))["token"]
    alive = await ws_connect(token)
    half_open = await ws_connect(token)
    await subscribe(alive, "marketplace")
    await subscribe(half_open, "marketplace")
    half_open.protocol._send_pong = lambda data: None  # type: ignore[union-attr]

    message = await asyncio.wait_for(half_open.read_message(), 10 * fast_pings.dead_after)
    assert message is None
    assert half_open.close_reason == "ping timed out"
    # the client that answers its pings is still served
    await asyncio.sleep(2 * fast_pings.dead_after)
    seq = hub.publish("marketplace", EventType.PROVIDER_REGISTERED, {"workerId": "w-1"})
    assert (await recv(alive))["seq"] == seq
    assert hub.connections == 1
    alive.close()
    half_open.close()


async def test_a_revoked_token_ends_the_connection_at_its_next_subscribe(api: Api, ws_connect):
    token = (await login(api))["token"]
    ws = await ws_connect(token)
    await subscribe(ws, "marketplace")
    assert (await api("POST", "auth/revoke", token=token)).code == 200
    [error] = await subscribe(ws, "wallet")
    assert (error["status"], error["error"]["code"]) == (401, "unauthorized")
    assert await asyncio.wait_for(ws.read_message(), 5) is None
    assert (ws.close_code, ws.close_reason) == (4401, "unauthorized")
    ws.close()


@pytest.mark.parametrize("qubix_config", [{"token_ttl_seconds": 2}])
async def test_the_connection_closes_when_its_token_expires(api: Api, ws_connect):
    token = (await login(api))["token"]
    ws = await ws_connect(token)
    assert await asyncio.wait_for(ws.read_message(), 5) is None
    assert (ws.close_code, ws.close_reason) == (4401, "token_expired")
    ws.close()


@pytest.mark.parametrize("qubix_config", [{"rate_limit_per_minute": 3}])
async def test_subscribes_count_against_the_rate_limit(api: Api, ws_connect):
    token = (await login(api))["token"]
    ws = await ws_connect(token)  # 1
    await subscribe(ws, "marketplace")  # 2
    await subscribe(ws, "wallet")  # 3
    [error] = await subscribe(ws, "marketplace")
    assert (error["status"], error["error"]["code"]) == (429, "rate_limited")
    ws.close()
