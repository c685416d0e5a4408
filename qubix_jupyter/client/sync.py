"""The blocking client for scripts and notebook cells.

A Jupyter kernel already runs an event loop on its main thread, so blocking on a coroutine there
is impossible. :class:`MarketClient` runs each call of its :class:`~.aio.AsyncMarketClient` on
the caller's own thread instead, with no event loop (:func:`~.aio.run_blocking`): the call's
requests go through a synchronous HTTP client and its waits sleep the thread. The event
subscriptions, which live on, run on one private event loop in a daemon thread (shared by every
blocking client of the process). The same code works in a plain script, in a cell and in a
thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, ParamSpec, TypeVar

import httpx

from .aio import AsyncMarketClient, run_blocking
from .events import AsyncSubscription, ConnectionState, Event

P = ParamSpec("P")
R = TypeVar("R")


class _LoopThread:
    """One event loop in a daemon thread, started on first use."""

    _lock = threading.Lock()
    _shared: _LoopThread | None = None

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._serve, name="qubix-client", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @classmethod
    def shared(cls) -> _LoopThread:
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def run(self, coro: Coroutine[Any, Any, R], timeout: float | None = None) -> R:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("a blocking QUBIX call from inside its own loop; use the async API")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no answer in {timeout} s") from None


def _blocking(method: Callable[..., Coroutine[Any, Any, R]]) -> Callable[..., R]:
    @functools.wraps(method)
    def call(self: MarketClient, *args: Any, **kwargs: Any) -> R:
        return run_blocking(method(self.aio, *args, **kwargs), self._http())

    return call


class MarketClient:
    """The market, one blocking call at a time; :attr:`aio` is the async client underneath.

    ``MarketClient(url, token, seed_file=…)`` — see :class:`AsyncMarketClient`; every method of
    that class is here with the same arguments, answering instead of awaiting.
    """

    def __init__(self, url: str | None = None, token: str | None = None, **options: Any) -> None:
        self._loop = _LoopThread.shared()
        self.aio = AsyncMarketClient(url, token, **options)
        self._blocking_http: httpx.Client | None = None
        self._http_lock = threading.Lock()

    def _http(self) -> httpx.Client:
        """The synchronous HTTP client of the calls (one pool, shared by the caller threads)."""
        with self._http_lock:
            if self._blocking_http is None:
                self._blocking_http = httpx.Client(timeout=self.aio.timeout, follow_redirects=False)
            return self._blocking_http

    def _run(self, coro: Coroutine[Any, Any, R], timeout: float | None = None) -> R:
        return self._loop.run(coro, timeout)

    @property
    def url(self) -> str:
        return self.aio.url

    @property
    def token(self) -> str | None:
        return self.aio.token

    @property
    def identity(self) -> str | None:
        return self.aio.identity

    def close(self) -> None:
        self._run(self.aio.aclose())
        with self._http_lock:
            http, self._blocking_http = self._blocking_http, None
        if http is not None:
            http.close()

    def __enter__(self) -> MarketClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    request = _blocking(AsyncMarketClient.request)
    health = _blocking(AsyncMarketClient.health)
    sign_in = _blocking(AsyncMarketClient.sign_in)
    sign_out = _blocking(AsyncMarketClient.sign_out)
    me = _blocking(AsyncMarketClient.me)
    balance = _blocking(AsyncMarketClient.balance)
    providers = _blocking(AsyncMarketClient.providers)
    provider = _blocking(AsyncMarketClient.provider)
    quick_register = _blocking(AsyncMarketClient.quick_register)
    check_new = _blocking(AsyncMarketClient.check_new)
    update_provider = _blocking(AsyncMarketClient.update_provider)
    unlist_provider = _blocking(AsyncMarketClient.unlist_provider)
    heartbeat = _blocking(AsyncMarketClient.heartbeat)
    metrics_history = _blocking(AsyncMarketClient.metrics_history)
    pending_jobs = _blocking(AsyncMarketClient.pending_jobs)
    report_progress = _blocking(AsyncMarketClient.report_progress)
    complete_job = _blocking(AsyncMarketClient.complete_job)
    create_job = _blocking(AsyncMarketClient.create_job)
    jobs = _blocking(AsyncMarketClient.jobs)
    job = _blocking(AsyncMarketClient.job)
    cancel_job = _blocking(AsyncMarketClient.cancel_job)
    job_result = _blocking(AsyncMarketClient.job_result)
    deposit_address = _blocking(AsyncMarketClient.deposit_address)
    deposit = _blocking(AsyncMarketClient.deposit)
    withdraw = _blocking(AsyncMarketClient.withdraw)
    withdrawals = _blocking(AsyncMarketClient.withdrawals)
    transactions = _blocking(AsyncMarketClient.transactions)
    earnings = _blocking(AsyncMarketClient.earnings)

    def events(self, *channels: str, **options: Any) -> Subscription:
        """A live :class:`Subscription` to ``channels``; callbacks run on the client's thread."""

        async def start() -> AsyncSubscription:
            return self.aio.events(*channels, **options)

        return Subscription(self, self._run(start()))


class Subscription:
    """The blocking view of an :class:`AsyncSubscription`: iterate it, or ``get(timeout)``."""

    def __init__(self, client: MarketClient, inner: AsyncSubscription) -> None:
        self._client = client
        self.aio = inner

    @property
    def state(self) -> ConnectionState:
        return self.aio.state

    @property
    def positions(self) -> dict[str, int]:
        return dict(self.aio.positions)

    @property
    def reconnects(self) -> int:
        return self.aio.reconnects

    def _call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        async def call() -> R:
            return fn(*args, **kwargs)

        return self._client._run(call())

    def subscribe(self, channel: str, since_seq: int | None = None) -> None:
        self._call(self.aio.subscribe, channel, since_seq)

    def unsubscribe(self, channel: str) -> None:
        self._call(self.aio.unsubscribe, channel)

    def on_event(self, callback: Callable[[Event], Any]) -> None:
        self.aio.on_event(callback)

    def on_state(self, callback: Callable[[ConnectionState], Any]) -> None:
        self.aio.on_state(callback)

    def get(self, timeout: float | None = None) -> Event:
        """The next event; TimeoutError after ``timeout`` s, ConnectionError once closed."""
        return self._client._run(self.aio.get(), timeout)

    def wait_state(self, state: ConnectionState, timeout: float | None = None) -> None:
        self._client._run(self.aio.wait_state(state), timeout)

    def wait_subscribed(self, channel: str, timeout: float | None = None) -> None:
        self._client._run(self.aio.wait_subscribed(channel), timeout)

    def __iter__(self) -> Iterator[Event]:
        while True:
            try:
                yield self.get()
            except ConnectionError:
                return

    def close(self) -> None:
        self._client._run(self.aio.close())

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
