"""The events subscription against a real ``qubix serve``: nothing missed across a dropped
socket (resume with sinceSeq), and a reconnect within 5 s of a real server restart (RESYNC)."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from pathlib import Path

import pytest

from qubix_jupyter.client import AsyncMarketClient, Backoff, ConnectionState, Event, MarketClient

from .conftest import GPU, Market, sqlite_copy

pytestmark = pytest.mark.timeout(300)


class Slowest(random.Random):
    """Always the longest wait the backoff allows, so frames are published while disconnected."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def _registered(sub, count: int) -> list[Event]:
    got: list[Event] = []
    async with asyncio.timeout(30):
        while len(got) < count:
            event = await sub.get()
            if event.type == "PROVIDER_REGISTERED":
                got.append(event)
    return got


async def test_a_dropped_socket_resumes_without_missing_or_repeating_a_frame(market: Market):
    client = AsyncMarketClient(market.url, seed="g" * 55)
    await client.sign_in()
    states: list[ConnectionState] = []
    sub = client.events(
        "marketplace", backoff=Backoff(first=1.0, cap=1.0), rng=Slowest(), on_state=states.append
    )
    try:
        async with asyncio.timeout(30):
            await sub.wait_subscribed("marketplace")
        workers = [f"r-{uuid.uuid4().hex[:10]}" for _ in range(6)]
        await client.quick_register(workers[0], GPU, 10)
        await _registered(sub, 1)

        sub.drop()  # as a network failure would; the next try comes 1 s later
        async with asyncio.timeout(10):
            await sub.wait_state(ConnectionState.RECONNECTING)
        for worker in workers[1:5]:  # published while the client is away
            await client.quick_register(worker, GPU, 10)
        async with asyncio.timeout(10):
            await sub.wait_state(ConnectionState.OPEN)
            await sub.wait_subscribed("marketplace")
        await client.quick_register(workers[5], GPU, 10)

        got = await _registered(sub, 5)
        assert [e.data["workerId"] for e in got] == workers[1:]
        seqs = [e.seq for e in got]
        assert seqs == sorted(set(seqs))  # in order, each once
        assert not [e for e in list(sub._buffer) if e.resync]
        assert sub.reconnects == 1
        assert states[:3] == [
            ConnectionState.OPEN,
            ConnectionState.RECONNECTING,
            ConnectionState.OPEN,
        ]
    finally:
        await sub.close()
        await client.aclose()
    assert sub.state is ConnectionState.CLOSED


def test_the_client_is_back_within_5_s_of_a_server_restart_and_resumes(
    tmp_path: Path, sqlite_template: Path
):
    """Seed Property 10 on a real restart: stop ``qubix serve``, start it again on the same port
    and database; the subscription reopens within 5 s of the market answering again, resumes
    from its last ``seq`` (replayed, or told to RESYNC when the new process cannot replay) and
    receives the new process's frames, none of the old ones twice."""
    server = Market(tmp_path, sqlite_copy(tmp_path, sqlite_template))
    server.start()
    client = MarketClient(server.url, seed="h" * 55)
    try:
        client.sign_in()
        sub = client.events("marketplace")
        sub.wait_subscribed("marketplace", timeout=30)
        client.quick_register("before-restart", GPU, 10)
        event = sub.get(timeout=30)
        assert (event.type, event.data["workerId"]) == ("PROVIDER_REGISTERED", "before-restart")

        server.stop()
        sub.wait_state(ConnectionState.RECONNECTING, timeout=30)
        before = sub.positions["marketplace"]
        server.start()
        sub.wait_state(ConnectionState.OPEN, timeout=5.0)  # Property 10
        sub.wait_subscribed("marketplace", timeout=30)
        assert sub.reconnects == 1

        client.quick_register("after-restart", GPU, 10)
        seen: list[Event] = []
        while not any(e.type == "PROVIDER_REGISTERED" for e in seen):
            seen.append(sub.get(timeout=30))
        registered = [e for e in seen if e.type == "PROVIDER_REGISTERED"]
        assert [e.data["workerId"] for e in registered] == ["after-restart"]
        seqs = [e.seq for e in seen if not e.resync]
        assert seqs == sorted(set(seqs))  # in order, none twice (replayed or queued before)
        assert all(e.seq is not None and e.seq > before for e in registered)
        sub.close()
        assert sub.state is ConnectionState.CLOSED
    finally:
        client.close()
        server.stop()


async def test_a_forbidden_channel_is_an_error_event_and_the_others_keep_flowing(market: Market):
    owner = AsyncMarketClient(market.url, seed="i" * 55)
    other = AsyncMarketClient(market.url, seed="j" * 55)
    await owner.sign_in()
    await other.sign_in()
    worker = f"p-{uuid.uuid4().hex[:10]}"
    await owner.quick_register(worker, GPU, 10)
    sub = other.events(f"provider:{worker}", "wallet")
    try:
        async with asyncio.timeout(30):
            await sub.wait_subscribed("wallet")
            event = await sub.get()
        assert event.type == "error"
        assert event.error is not None
        assert (event.error.status, event.error.code) == (403, "channel_forbidden")
        assert f"provider:{worker}" not in sub.channels  # not asked again on reconnect
        await other.deposit(5)
        async with asyncio.timeout(30):
            event = await sub.get()
        assert (event.type, event.channel) == ("BALANCE_CHANGED", "wallet")
    finally:
        await sub.close()
        await owner.aclose()
        await other.aclose()


def test_a_subscription_signs_in_again_when_its_token_expires(
    tmp_path: Path, sqlite_template: Path
):
    """The market closes the socket with 4401 token_expired; the client holds the wallet, so it
    signs in again, reconnects and resumes; the frames keep coming."""
    config = tmp_path / "jupyter_config_dir"
    config.mkdir()
    (config / "jupyter_server_config.json").write_text(
        json.dumps({"QubixExtension": {"token_ttl_seconds": 3}})
    )
    server = Market(tmp_path, sqlite_copy(tmp_path, sqlite_template))
    server.start()
    client = MarketClient(server.url, seed="q" * 55)
    try:
        client.sign_in()
        first_token = client.token
        sub = client.events("marketplace")
        sub.wait_subscribed("marketplace", timeout=30)
        sub.wait_state(ConnectionState.RECONNECTING, timeout=30)  # the token ran out
        sub.wait_state(ConnectionState.OPEN, timeout=30)
        assert client.token != first_token
        sub.wait_subscribed("marketplace", timeout=30)
        client.quick_register("after-renewal", GPU, 10)
        event = sub.get(timeout=30)
        while event.type != "PROVIDER_REGISTERED":
            event = sub.get(timeout=30)
        assert event.data["workerId"] == "after-renewal"
        sub.close()
    finally:
        client.close()
        server.stop()
