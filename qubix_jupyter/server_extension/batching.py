"""Lookups that share their database reads when they arrive together.

:class:`SharedReads` answers ``get(key)`` from ``read(keys)``, one query for many keys: while one
read is in flight, the keys asked for meanwhile wait for the next read, which fetches all of them
at once. At a few requests a second that is one query per request, as a plain lookup would be;
at thousands (every provider's heartbeat, or a wave of providers coming back after a market
restart) it is one query per database round trip. No answer is ever read before its request
arrived, so sharing never makes an answer staler than its own query would have been.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class SharedReads(Generic[K, V]):
    def __init__(
        self, read: Callable[[Collection[K]], Awaitable[Mapping[K, V]]], missing: V
    ) -> None:
        #: Reads the values of these keys; a key it leaves out has the value ``missing``.
        self._read = read
        self._missing = missing
        #: key → the callers waiting for the next read
        self._asking: dict[K, list[asyncio.Future[V]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def get(self, key: K) -> V:
        waiter: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._asking.setdefault(key, []).append(waiter)
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_all())
        return await waiter

    async def _read_all(self) -> None:
        while self._asking:
            asking, self._asking = self._asking, {}
            try:
                found = await self._read(asking.keys())
            except Exception as exc:  # each caller gets it as it would from its own read
                for waiters in asking.values():
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_exception(exc)
                continue
            for key, waiters in asking.items():
                value = found.get(key, self._missing)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(value)
