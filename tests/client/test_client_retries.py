"""Retries against a real market: a money-moving call whose answer is lost on the way back is
sent again with the same Idempotency-Key, and the market moves the money once."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

from qubix_jupyter.client import AsyncMarketClient, MarketClient
from qubix_jupyter.client.sync import _LoopThread

from .conftest import Market


async def _message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One HTTP/1.1 message with a Content-Length body (what httpx and tornado send here)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head, await reader.readexactly(length)


class LosesFirstAnswer:
    """A TCP proxy to the market that lets the first request through and drops its answer,
    as a network failure after the market did the work would; later connections pass."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        first = not self.requests
        try:
            head, body = await _message(reader)
            self.requests.append(head)
            up_writer.write(head + body)
            await up_writer.drain()
            answer_head, answer_body = await _message(up_reader)  # the market did the work
            if not first:
                writer.write(answer_head + answer_body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            up_writer.close()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def _idempotency_key(head: bytes) -> str:
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "idempotency-key":
            return value.strip()
    raise AssertionError("no Idempotency-Key sent")


async def test_a_deposit_whose_answer_was_lost_is_retried_with_its_key_and_credited_once(
    market: Market,
):
    direct = AsyncMarketClient(market.url, seed="n" * 55)
    await direct.sign_in()
    proxy = LosesFirstAnswer(market.url)
    through = AsyncMarketClient(await proxy.start(), token=direct.token, retries=2)
    try:
        deposit = await through.deposit(300)
        assert deposit.amount == 300
        assert len(proxy.requests) == 2  # the lost one and its retry
        keys = {_idempotency_key(head) for head in proxy.requests}
        assert len(keys) == 1  # one logical call, one key
        assert (await direct.balance()).balance == 300  # credited once
        history = await direct.transactions(type="DEPOSIT")
        assert [t.amount for t in history.items] == [300]
    finally:
        await through.aclose()
        await direct.aclose()
        await proxy.stop()


async def test_the_blocking_client_works_where_an_event_loop_already_runs(market: Market):
    """As in a Jupyter kernel: this test's loop is running while the blocking client answers."""
    asyncio.get_running_loop()
    client = MarketClient(market.url)
    try:
        assert client.health().status == "ok"
        assert client.providers(limit=1).limit == 1
    finally:
        client.close()


async def test_the_blocking_client_retries_a_lost_answer_on_its_callers_thread(market: Market):
    """The blocking client's calls run on their caller's thread, its retries too: a deposit
    whose answer is lost is sent again with its key (from a worker thread here, as the proxy
    runs on this test's loop) and credited once."""
    direct = AsyncMarketClient(market.url, seed="r" * 55)
    await direct.sign_in()
    proxy = LosesFirstAnswer(market.url)
    through = MarketClient(await proxy.start(), token=direct.token, retries=2)
    try:
        deposit = await asyncio.to_thread(through.deposit, 250)
        assert deposit.amount == 250
        assert len(proxy.requests) == 2
        assert len({_idempotency_key(head) for head in proxy.requests}) == 1
        assert (await direct.balance()).balance == 250
    finally:
        await asyncio.to_thread(through.close)
        await direct.aclose()
        await proxy.stop()


def test_a_blocking_call_needs_no_event_loop_of_its_own(market: Market):
    """A blocking call answers on the thread that makes it, even the thread of the loop that
    carries the client's event subscriptions (a callback of theirs may call the market)."""
    client = MarketClient(market.url)
    loop = _LoopThread.shared().loop

    async def from_the_loop_thread() -> str:
        return client.health().status

    try:
        assert asyncio.run_coroutine_threadsafe(from_the_loop_thread(), loop).result(30) == "ok"
    finally:
        client.close()
