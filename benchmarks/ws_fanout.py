"""In-process fan-out of one MARKETPLACE_UPDATE to 10,000 subscribers of the event hub.

No sockets: each subscriber is a queue-based :class:`~qubix_jupyter.server_extension.events.
Subscription` read by its own task (the shape a WebSocket handler's writer has). Each round
publishes one MARKETPLACE_UPDATE and waits until every reader has it. Measured in the same run:

* ``hub``: delivery latency (publish call → each reader has the frame) p50/p99 over all
  deliveries of all rounds, the time of the ``publish`` call itself, the JSON encodings per
  broadcast, and memory per subscriber (tracemalloc: connection, its queue, its channel entry);
* ``baseline``: the floor for the same work — encode once, ``put_nowait`` the same ``str`` into
  10,000 plain ``asyncio.Queue`` s, each read by its own task — and the memory of one
  ``asyncio.Queue``.

Coalescing is off (``coalesce_interval=0``): this measures fan-out, not the merge window.
Prints one JSON line.

    python benchmarks/ws_fanout.py [--subscribers 10000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from qubix_jupyter.market.events import MARKETPLACE, EventType
from qubix_jupyter.server_extension.events import EventHub, Subscription

PAYLOAD = {
    "providers": [
        {
            "workerId": "gpu-box-01",
            "gpuModel": "NVIDIA GeForce RTX 4090",
            "vram": 24,
            "pricePerHour": 40,
            "status": "online",
            "tflops": 82.6,
            "location": "eu-west",
        }
    ]
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def memory_per_item(make: Callable[[int], Any], n: int) -> float:
    """Bytes tracemalloc sees allocated, per item, by building ``n`` items (kept alive)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = make(n)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del kept
    gc.collect()
    return (after - before) / n


async def hub_memory(n: int) -> float:
    hub = EventHub(coalesce_interval=0)

    async def build() -> list[Subscription]:
        subs = [hub.connect(f"user-{i}") for i in range(n)]
        for sub in subs:
            await sub.subscribe(MARKETPLACE)
            sub.get_nowait()  # the SUBSCRIBED acknowledgement
        return subs

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    subs = await build()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    hub.close()
    del subs
    gc.collect()
    return (after - before) / n


async def run_hub(n: int, rounds: int) -> dict[str, Any]:
    encodings = 0

    def dumps(obj: Any) -> str:
        nonlocal encodings
        encodings += 1
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)

    hub = EventHub(coalesce_interval=0, dumps=dumps)
    subs = [hub.connect(f"user-{i}") for i in range(n)]
    for sub in subs:
        await sub.subscribe(MARKETPLACE)
        sub.get_nowait()
    latencies: list[float] = []
    publish_calls: list[float] = []
    state: dict[str, Any] = {"t0": 0.0, "left": 0, "done": None}

    async def reader(sub: Subscription) -> None:
        async for _frame in sub:
            latencies.append(time.perf_counter() - state["t0"])
            state["left"] -= 1
            if state["left"] == 0:
                state["done"].set_result(None)

    tasks = [asyncio.ensure_future(reader(sub)) for sub in subs]
    await asyncio.sleep(0)
    frame_bytes = 0
    for i in range(rounds + 1):  # the first round warms up and is not counted
        state["left"] = n
        state["done"] = asyncio.get_running_loop().create_future()
        encodings = 0
        state["t0"] = t0 = time.perf_counter()
        hub.publish(MARKETPLACE, EventType.MARKETPLACE_UPDATE, PAYLOAD)
        called = time.perf_counter() - t0
        await state["done"]
        assert encodings == 1, encodings
        if i == 0:
            latencies.clear()
        else:
            publish_calls.append(called)
        frame_bytes = len(hub._buffer[-1][2].encode())
    hub.close()
    await asyncio.gather(*tasks)
    return {"latencies": latencies, "publish_calls": publish_calls, "frame_bytes": frame_bytes}


async def run_baseline(n: int, rounds: int) -> dict[str, Any]:
    queues: list[asyncio.Queue[str]] = [asyncio.Queue() for _ in range(n)]
    latencies: list[float] = []
    publish_calls: list[float] = []
    state: dict[str, Any] = {"t0": 0.0, "left": 0, "done": None, "stop": False}

    async def reader(queue: asyncio.Queue[str]) -> None:
        while True:
            frame = await queue.get()
            if not frame:
                return
            latencies.append(time.perf_counter() - state["t0"])
            state["left"] -= 1
            if state["left"] == 0:
                state["done"].set_result(None)

    tasks = [asyncio.ensure_future(reader(q)) for q in queues]
    await asyncio.sleep(0)
    for i in range(rounds + 1):
        state["left"] = n
        state["done"] = asyncio.get_running_loop().create_future()
        state["t0"] = t0 = time.perf_counter()
        envelope = {
            "type": "MARKETPLACE_UPDATE",
            "channel": "marketplace",
            "seq": i + 1,
            "ts": int(time.time() * 1000),
            "data": PAYLOAD,
        }
        frame = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False)
        for queue in queues:
            queue.put_nowait(frame)
        called = time.perf_counter() - t0
        await state["done"]
        if i == 0:
            latencies.clear()
        else:
            publish_calls.append(called)
    for queue in queues:
        queue.put_nowait("")
    await asyncio.gather(*tasks)
    return {"latencies": latencies, "publish_calls": publish_calls}


def summary(runs: list[dict[str, Any]], bytes_per_subscriber: float) -> dict[str, Any]:
    latencies = [x for run in runs for x in run["latencies"]]
    calls = [x for run in runs for x in run["publish_calls"]]
    return {
        "p50_ms": round(percentile(latencies, 0.50) * 1e3, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1e3, 3),
        "publish_call_ms": round(statistics.median(calls) * 1e3, 3),
        "deliveries": len(latencies),
        "bytes_per_subscriber": round(bytes_per_subscriber),
    }


async def main(n: int, rounds: int) -> dict[str, Any]:
    baseline_bytes = memory_per_item(lambda k: [asyncio.Queue() for _ in range(k)], n)
    hub_bytes = await hub_memory(n)
    # alternate the two so neither always runs on a warmer interpreter; pool both runs
    baseline_runs, hub_runs = [], []
    for _ in range(2):
        baseline_runs.append(await run_baseline(n, rounds))
        hub_runs.append(await run_hub(n, rounds))
    hub = summary(hub_runs, hub_bytes)
    hub["encodings_per_broadcast"] = 1  # asserted every round
    hub["frame_bytes"] = hub_runs[0]["frame_bytes"]
    baseline = summary(baseline_runs, baseline_bytes)
    return {
        "benchmark": "ws_fanout",
        "subscribers": n,
        "rounds": 2 * rounds,
        "hub": hub,
        "baseline": baseline,
        "p50_ratio": round(hub["p50_ms"] / baseline["p50_ms"], 2),
        "p99_ratio": round(hub["p99_ms"] / baseline["p99_ms"], 2),
        "publish_call_ratio": round(hub["publish_call_ms"] / baseline["publish_call_ms"], 2),
        "memory_ratio": round(hub_bytes / baseline_bytes, 2),
        "python": platform.python_version(),
        "note": "latency: publish call until each reader task has the frame, all deliveries",
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    result = asyncio.run(main(args.subscribers, args.rounds))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
