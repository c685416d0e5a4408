"""SharedReads: lookups arriving together share one read, and none is answered from a read that
began before it was asked."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

import pytest

from qubix_jupyter.server_extension.batching import SharedReads


class Store:
    """A dictionary read slowly enough for callers to pile up, recording each read's keys."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.reads: list[set[str]] = []
        self.fail_next = False
        self.began = asyncio.Event()

    async def read(self, keys: Collection[str]) -> dict[str, int]:
        self.reads.append(set(keys))
        self.began.set()
        snapshot = dict(self.values)  # the state when the read began
        await asyncio.sleep(0.01)
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("database unreachable")
        return {k: snapshot[k] for k in keys if k in snapshot}


async def test_callers_arriving_together_share_one_read() -> None:
    store = Store()
    store.values = {"a": 1, "c": 3}
    reads = SharedReads(store.read, -1)
    answers = await asyncio.gather(*(reads.get(k) for k in ["a", "b", "c", "a"]))
    assert answers == [1, -1, 3, 1]
    assert store.reads == [{"a", "b", "c"}]


async def test_a_caller_during_a_read_waits_for_the_next_one() -> None:
    store = Store()
    store.values = {"a": 1}
    reads = SharedReads(store.read, -1)
    first = asyncio.create_task(reads.get("a"))
    await store.began.wait()  # its read has begun, with a = 1
    store.values["a"] = 2
    second, third = await asyncio.gather(reads.get("a"), reads.get("b"))
    assert await first == 1
    assert (second, third) == (2, -1)  # read after they asked: the new value
    assert store.reads == [{"a"}, {"a", "b"}]


async def test_a_failed_read_fails_its_callers_and_the_next_read_is_fresh() -> None:
    store = Store()
    store.values = {"a": 1}
    store.fail_next = True
    reads = SharedReads(store.read, -1)
    results = await asyncio.gather(reads.get("a"), reads.get("b"), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results), results
    assert await reads.get("a") == 1


async def test_a_caller_that_gives_up_does_not_disturb_the_others() -> None:
    store = Store()
    store.values = {"a": 1}
    reads = SharedReads(store.read, -1)
    impatient = asyncio.create_task(reads.get("a"))
    patient = asyncio.create_task(reads.get("a"))
    await asyncio.sleep(0)
    impatient.cancel()
    with pytest.raises(asyncio.CancelledError):
        await impatient
    assert await patient == 1
