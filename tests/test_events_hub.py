"""The WebSocket event hub (``server_extension.events``) and its vocabulary (``market.events``).

Pure asyncio, no sockets: time is a :class:`FakeTime` whose clock the hub reads and whose timers
run when a test advances it, so every latency below is measured in the hub's own time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qubix_jupyter.market.events import (
    MARKETPLACE,
    Channel,
    ChannelForbidden,
    ChannelKind,
    EventType,
    InvalidChannel,
    InvalidEvent,
    TooManyChannels,
    job_channel,
    merge_marketplace_updates,
    parse_channel,
    provider_channel,
)
from qubix_jupyter.server_extension.events import (
    HUB_CLOSED,
    SEND_FAILED,
    SLOW_CONSUMER,
    CloseReason,
    EventHub,
    HeartbeatPolicy,
    Subscription,
    SubscriptionClosed,
)

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class _Handle:
    cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeTime:
    """A clock and a ``call_later`` for the hub; :meth:`advance` runs the timers that fall due."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self._timers: list[tuple[float, int, Callable[[], None], _Handle]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Handle:
        handle = _Handle()
        heapq.heappush(self._timers, (self.now + delay, next(self._order), callback, handle))
        return handle

    async def advance(self, seconds: float, *subs: Subscription) -> None:
        """Move time on by ``seconds``, running each due timer at its time, then settling."""
        target = self.now + seconds
        while self._timers and self._timers[0][0] <= target:
            due, _, callback, handle = heapq.heappop(self._timers)
            if handle.cancelled:
                continue
            self.now = max(self.now, due)
            callback()
            await settle(*subs)
        self.now = target
        await settle(*subs)


async def settle(*subs: Subscription) -> None:
    """Let the consumer tasks run until every given connection's queue is empty."""
    for _ in range(200):
        await asyncio.sleep(0)
        if all(sub.pending == 0 for sub in subs):
            break
    await asyncio.sleep(0)


def drain(sub: Subscription) -> list[dict[str, Any]]:
    frames = []
    while (frame := sub.get_nowait()) is not None:
        frames.append(json.loads(frame))
    return frames


def events(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Leave out the hub's SUBSCRIBED acknowledgements."""
    return [f for f in frames if f["type"] != EventType.SUBSCRIBED]


async def allow(user_id: str, channel: Channel) -> bool:
    return True


def make_hub(time: FakeTime | None = None, **kwargs: Any) -> EventHub:
    time = time or FakeTime()
    return EventHub(clock=time.clock, call_later=time.call_later, authorize=allow, **kwargs)


# ------------------------------------------------------------------ envelope, seq, encoding


async def test_envelope_has_the_design_fields_and_seq_increases_across_channels() -> None:
    time = FakeTime(1_800_000_000.5)
    hub = make_hub(time)
    sub = hub.connect("u1")
    for name in ("marketplace", "provider:w-1", "job:j-1", "wallet"):
        await sub.subscribe(name)
    head = hub.seq
    assert head == 1_800_000_000_500_000  # the first seq is the clock in microseconds

    seqs = [
        hub.publish("marketplace", EventType.PROVIDER_REGISTERED, {"workerId": "w-1"}),
        hub.publish("provider:w-1", "GPU_METRICS_UPDATE", {"gpuUtil": 50}),
        hub.publish("job:j-1", EventType.JOB_PROGRESS, {"progress": 10}),
        hub.publish("wallet", EventType.BALANCE_CHANGED, {"balance": 5}, user_id="u1"),
    ]
    assert seqs == [head + 1, head + 2, head + 3, head + 4]
    frames = events(drain(sub))
    assert [f["seq"] for f in frames] == seqs
    assert all(list(f) == ["type", "channel", "seq", "ts", "data"] for f in frames)
    assert frames[0] == {
        "type": "PROVIDER_REGISTERED",
        "channel": "marketplace",
        "seq": head + 1,
        "ts": 1_800_000_000_500,
        "data": {"workerId": "w-1"},
    }
    assert [f["channel"] for f in frames] == ["marketplace", "provider:w-1", "job:j-1", "wallet"]


async def test_a_broadcast_is_encoded_once_and_every_subscriber_gets_the_same_str() -> None:
    calls = []

    def dumps(obj: Any) -> str:
        calls.append(obj["type"])
        return json.dumps(obj)

    hub = make_hub(dumps=dumps)
    got: list[str] = []

    async def send(frame: str) -> None:
        got.append(frame)

    subs = [hub.connect(f"u{i}") for i in range(20)]
    pumped = [hub.connect(f"p{i}", send) for i in range(5)]
    for sub in subs + pumped:
        await sub.subscribe(MARKETPLACE)
        drain(sub) if sub in subs else None
    await settle(*pumped)
    calls.clear()
    got.clear()

    hub.publish(MARKETPLACE, EventType.PROVIDER_STATUS_CHANGED, {"workerId": "w", "status": "x"})
    await settle(*pumped)

    assert calls == ["PROVIDER_STATUS_CHANGED"]
    frames = [sub.get_nowait() for sub in subs] + got
    assert len(frames) == 25
    assert all(frame is frames[0] for frame in frames)
    hub.close()


async def test_the_next_process_starts_above_the_last_seq_so_old_positions_resync() -> None:
    time = FakeTime()
    old = make_hub(time)
    for i in range(1000):
        old.publish(MARKETPLACE, EventType.PROVIDER_REGISTERED, {"workerId": f"w{i}"})
    time.now += 0.002  # the old process issued fewer than one seq per microsecond
    new = make_hub(time)
    assert new.seq > old.seq
    sub = new.connect("u1")
    await sub.subscribe(MARKETPLACE, since_seq=old.seq)
    [resync, subscribed] = drain(sub)
    assert resync["type"] == "RESYNC"
    assert resync["data"] == {"reason": "expired", "since": old.seq}
    assert subscribed["type"] == "SUBSCRIBED"


# ------------------------------------------------------------------ channels and authorization


@pytest.mark.parametrize(
    ("name", "channel"),
    [
        ("marketplace", Channel(ChannelKind.MARKETPLACE)),
        ("wallet", Channel(ChannelKind.WALLET)),
        ("provider:gpu-box.local_0", provider_channel("gpu-box.local_0")),
        (
            "job:0b0e6f1c-9c55-4c1e-a4c3-4c9f2f0a7b1e",
            job_channel("0b0e6f1c-9c55-4c1e-a4c3-4c9f2f0a7b1e"),
        ),
        ("job:" + "a" * 128, job_channel("a" * 128)),
    ],
)
def test_valid_channel_names_parse_and_print_back(name: str, channel: Channel) -> None:
    assert parse_channel(name) == channel
    assert channel.name == name == str(channel)
    assert channel.private == (channel.kind in {ChannelKind.PROVIDER, ChannelKind.JOB})


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Marketplace",
        "market",
        "marketplace:x",
        "wallet:u2",  # a client never names someone's wallet
        "provider",
        "provider:",
        "job:",
        "job:a b",
        "job:../x",
        "job:é",
        "job:" + "a" * 129,
        "x" * 10_000,
        "subscribe:marketplace",
        None,
        42,
    ],
)
async def test_invalid_channel_names_are_a_typed_422(name: Any) -> None:
    with pytest.raises(InvalidChannel) as caught:
        parse_channel(name)
    assert caught.value.status == 422
    assert caught.value.to_body()["error"]["code"] == "invalid_channel"
    assert "é" not in caught.value.message
    hub = make_hub()
    sub = hub.connect("u1")
    with pytest.raises(InvalidChannel):
        await sub.subscribe(name)
    with pytest.raises(InvalidChannel):
        hub.publish(name, EventType.JOB_PROGRESS, {})
    assert sub.channels == []


async def test_private_channels_need_the_authorizer_to_say_yes() -> None:
    asked: list[tuple[str, Channel]] = []

    async def owns(user_id: str, channel: Channel) -> bool:
        asked.append((user_id, channel))
        return channel.id == "mine"

    hub = EventHub(authorize=owns)
    sub = hub.connect("u1")
    await sub.subscribe("job:mine")
    with pytest.raises(ChannelForbidden) as caught:
        await sub.subscribe("job:theirs")
    assert caught.value.status == 403
    assert caught.value.to_body()["error"]["code"] == "channel_forbidden"
    assert asked == [("u1", job_channel("mine")), ("u1", job_channel("theirs"))]
    assert sub.channels == ["job:mine"]

    # a per-subscribe authorizer overrides the hub's; marketplace and wallet ask nobody
    async def deny(user_id: str, channel: Channel) -> bool:
        return False

    with pytest.raises(ChannelForbidden):
        await sub.subscribe("provider:mine", authorize=deny)
    asked.clear()
    await sub.subscribe("marketplace", authorize=deny)
    await sub.subscribe("wallet", authorize=deny)
    assert asked == []

    hub.publish("job:theirs", EventType.JOB_PROGRESS, {"progress": 1})
    hub.publish("job:mine", EventType.JOB_PROGRESS, {"progress": 2})
    assert [f["data"] for f in events(drain(sub))] == [{"progress": 2}]


async def test_truthy_is_not_yes_and_no_authorizer_or_no_user_is_no() -> None:
    async def sloppy(user_id: str, channel: Channel) -> Any:
        return "yes"

    with pytest.raises(ChannelForbidden):
        await EventHub(authorize=sloppy).connect("u1").subscribe("job:x")
    with pytest.raises(ChannelForbidden):
        await EventHub().connect("u1").subscribe("provider:x")
    anonymous = make_hub().connect(None)
    for name in ("wallet", "job:x"):
        with pytest.raises(ChannelForbidden):
            await anonymous.subscribe(name)
    await anonymous.subscribe("marketplace")


async def test_wallet_events_reach_only_the_owners_connections() -> None:
    hub = make_hub()
    a1, a2, b = hub.connect("alice"), hub.connect("alice"), hub.connect("bob")
    for sub in (a1, a2, b):
        await sub.subscribe("wallet")
    start = hub.seq
    hub.publish("wallet", EventType.BALANCE_CHANGED, {"balance": 1}, user_id="alice")
    hub.publish("wallet", EventType.BALANCE_CHANGED, {"balance": 2}, user_id="bob")
    assert [f["data"] for f in events(drain(a1))] == [{"balance": 1}]
    assert [f["data"] for f in events(drain(a2))] == [{"balance": 1}]
    assert [f["data"] for f in events(drain(b))] == [{"balance": 2}]
    assert hub.subscribers("wallet", user_id="alice") == 2

    # resuming replays one's own wallet only
    again = hub.connect("bob")
    await again.subscribe("wallet", since_seq=start)
    assert [f["data"] for f in events(drain(again))] == [{"balance": 2}]

    with pytest.raises(InvalidEvent):
        hub.publish("wallet", EventType.BALANCE_CHANGED, {"balance": 3})
    with pytest.raises(InvalidEvent):
        hub.publish("marketplace", EventType.PROVIDER_REGISTERED, {}, user_id="alice")


async def test_publishing_refuses_hub_types_unknown_types_and_data_json_cannot_hold() -> None:
    hub = make_hub()
    head = hub.seq
    for kind in ("RESYNC", "SUBSCRIBED", "NOPE", None):
        with pytest.raises(InvalidEvent):
            hub.publish("marketplace", kind, {})  # type: ignore[arg-type]
    with pytest.raises(InvalidEvent):
        hub.publish("job:j", EventType.JOB_PROGRESS, {"x": object()})
    with pytest.raises(InvalidEvent):
        hub.publish("job:j", EventType.JOB_PROGRESS, {"x": math.nan})
    with pytest.raises(InvalidEvent):
        hub.publish("marketplace", EventType.MARKETPLACE_UPDATE, {"providers": [{"id": 1}]})
    assert hub.seq == head


async def test_unsubscribe_stops_delivery_including_frames_already_queued() -> None:
    hub = make_hub()
    sub = hub.connect("u1")
    await sub.subscribe("job:a")
    await sub.subscribe("job:b")
    drain(sub)
    hub.publish("job:a", EventType.JOB_PROGRESS, {"n": 1})
    hub.publish("job:b", EventType.JOB_PROGRESS, {"n": 2})
    assert sub.unsubscribe("job:a") is True
    assert sub.unsubscribe("job:a") is False
    hub.publish("job:a", EventType.JOB_PROGRESS, {"n": 3})
    hub.publish("job:b", EventType.JOB_PROGRESS, {"n": 4})
    assert [f["data"]["n"] for f in drain(sub)] == [2, 4]
    assert hub.subscribers("job:a") == 0
    assert sub.channels == ["job:b"]


async def test_subscriptions_per_connection_are_bounded_and_resubscribing_is_a_no_op() -> None:
    hub = make_hub(max_channels=2)
    sub = hub.connect("u1")
    await sub.subscribe("job:a")
    await sub.subscribe("job:b")
    assert len(drain(sub)) == 2
    assert await sub.subscribe("job:a") == hub.seq
    assert drain(sub) == []
    with pytest.raises(TooManyChannels) as caught:
        await sub.subscribe("job:c")
    assert caught.value.status == 429


async def test_closing_a_connection_stops_it_and_the_hub_closes_everyone() -> None:
    hub = make_hub()
    reasons: list[CloseReason] = []
    mine, other = hub.connect("u1"), hub.connect("u2", on_close=reasons.append)
    await mine.subscribe(MARKETPLACE)
    await other.subscribe(MARKETPLACE)
    mine.close()
    assert hub.subscribers(MARKETPLACE) == 1
    with pytest.raises(SubscriptionClosed):
        mine.get_nowait()
    with pytest.raises(SubscriptionClosed):
        await mine.subscribe("wallet")
    hub.close()
    assert reasons == [HUB_CLOSED]
    assert hub.connections == 0
    with pytest.raises(SubscriptionClosed):
        hub.connect("u3")
    assert hub.publish(MARKETPLACE, EventType.PROVIDER_REGISTERED, {}) is None


# ------------------------------------------------------------------ resume


async def test_resume_replays_the_channels_frames_after_since_then_live_ones() -> None:
    hub = make_hub()
    sub = hub.connect("u1")
    await sub.subscribe("job:a")
    first = events(drain(sub)) or [{"seq": hub.seq}]
    for n in range(5):
        hub.publish("job:a", EventType.JOB_PROGRESS, {"n": n})
        hub.publish("job:b", EventType.JOB_PROGRESS, {"n": -n})
    got = events(drain(sub))[:2]  # the client read two, then the socket died
    sub.close()
    assert first
    hub.publish("job:a", EventType.JOB_PROGRESS, {"n": 5})

    again = hub.connect("u1")
    head = await again.subscribe("job:a", since_seq=got[-1]["seq"])
    hub.publish("job:a", EventType.JOB_PROGRESS, {"n": 6})
    frames = drain(again)
    assert [f["data"]["n"] for f in events(frames)] == [2, 3, 4, 5, 6]
    assert [f["type"] for f in frames][-2] == "SUBSCRIBED"
    assert frames[-2]["seq"] == head
    assert frames[-2]["data"] == {"since": got[-1]["seq"]}


async def test_resume_from_beyond_the_buffer_or_the_future_gets_one_resync() -> None:
    hub = make_hub(buffer_size=3)
    start = hub.seq
    for n in range(5):
        hub.publish("job:a", EventType.JOB_PROGRESS, {"n": n})
    cases: list[tuple[Callable[[], int], str]] = [
        (lambda: start, "expired"),
        (lambda: start + 1, "expired"),
        (lambda: hub.seq + 1, "unknown_seq"),
    ]
    for position, reason in cases:
        since = position()
        sub = hub.connect("u1")
        await sub.subscribe("job:a", since_seq=since)
        hub.publish("job:a", EventType.JOB_PROGRESS, {"n": "live"})
        frames = drain(sub)
        assert [f["type"] for f in frames] == ["RESYNC", "SUBSCRIBED", "JOB_PROGRESS"]
        assert frames[0]["data"] == {"reason": reason, "since": since}
        assert frames[0]["seq"] == frames[1]["seq"] == frames[2]["seq"] - 1
    # still in the buffer: a replay, no RESYNC
    sub = hub.connect("u1")
    await sub.subscribe("job:a", since_seq=hub.seq - 2)
    assert [f["type"] for f in drain(sub)] == ["JOB_PROGRESS", "JOB_PROGRESS", "SUBSCRIBED"]


async def test_a_replay_larger_than_the_queue_is_a_resync_not_a_disconnect() -> None:
    hub = make_hub(max_queue=10)
    start = hub.seq
    for n in range(20):
        hub.publish("job:a", EventType.JOB_PROGRESS, {"n": n})
    sub = hub.connect("u1")
    await sub.subscribe("job:a", since_seq=start)
    frames = drain(sub)
    assert [f["type"] for f in frames] == ["RESYNC", "SUBSCRIBED"]
    assert frames[0]["data"]["reason"] == "too_far_behind"
    assert not sub.closed
    # a replay that fits is sent, even into a queue that is nearly full
    sub = hub.connect("u1", max_queue=10)
    await sub.subscribe("job:a", since_seq=hub.seq - 8)
    assert sub.pending == 9


CLIENTS = (
    ("u1", ("marketplace", "provider:a", "wallet")),
    ("u2", ("job:j1", "wallet", "marketplace")),
    ("u1", ("provider:a", "job:j1")),
)
TARGETS = (
    ("marketplace", EventType.PROVIDER_REGISTERED, None),
    ("provider:a", EventType.GPU_METRICS_UPDATE, None),
    ("job:j1", EventType.JOB_PROGRESS, None),
    ("wallet", EventType.BALANCE_CHANGED, "u1"),
    ("wallet", EventType.BALANCE_CHANGED, "u2"),
)
OPS = st.one_of(
    st.tuples(st.just("publish"), st.integers(0, len(TARGETS) - 1)),
    st.tuples(st.just("consume"), st.integers(0, len(CLIENTS) - 1), st.integers(1, 6)),
    st.tuples(st.just("disconnect"), st.integers(0, len(CLIENTS) - 1)),
    st.tuples(st.just("resume"), st.integers(0, len(CLIENTS) - 1)),
    st.tuples(st.just("yield"), st.integers(1, 4)),
)


@dataclass
class Client:
    user: str
    channels: tuple[str, ...]
    conn: Subscription | None = None
    streams: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def position(self, channel: str) -> int | None:
        stream = self.streams.get(channel)
        return stream[-1]["seq"] if stream else None

    def consume(self, limit: int) -> None:
        if self.conn is None:
            return
        for _ in range(limit):
            frame = self.conn.get_nowait()
            if frame is None:
                return
            envelope = json.loads(frame)
            self.streams.setdefault(envelope["channel"], []).append(envelope)


@dataclass(frozen=True)
class Published:
    seq: int
    channel: str
    user: str | None
    type: str
    data: dict[str, Any]


@PROPERTY
@given(
    ops=st.lists(OPS, min_size=20, max_size=150),
    buffer_size=st.integers(1, 12),
    auth_delays=st.lists(st.integers(0, 3), min_size=1, max_size=8),
)
async def test_resume_misses_nothing_and_repeats_nothing_under_concurrent_publishing(
    ops: list[tuple[Any, ...]], buffer_size: int, auth_delays: list[int]
) -> None:
    """Random interleavings of publish / read / disconnect / resume (whose authorization awaits
    while publishes run): each client's stream on each channel is exactly the channel's published
    frames after its first subscribe, in order, except across a RESYNC the hub had to send."""
    delays = itertools.cycle(auth_delays)

    async def slow_allow(user_id: str, channel: Channel) -> bool:
        for _ in range(next(delays)):
            await asyncio.sleep(0)
        return True

    time = FakeTime()
    hub = EventHub(
        buffer_size=buffer_size,
        clock=time.clock,
        call_later=time.call_later,
        authorize=slow_allow,
        max_queue=10_000,
    )
    first_seq = hub.seq
    clients = [Client(user, channels) for user, channels in CLIENTS]
    published: list[Published] = []
    tasks: list[asyncio.Task[None]] = []

    async def resume(client: Client) -> None:
        conn = client.conn = hub.connect(client.user)
        try:
            for name in client.channels:
                await conn.subscribe(name, since_seq=client.position(name))
        except SubscriptionClosed:
            pass

    def start_resume(client: Client) -> None:
        if client.conn is None:
            tasks.append(asyncio.ensure_future(resume(client)))

    for client in clients:
        start_resume(client)
    for op in ops:
        if op[0] == "publish":
            name, kind, user = TARGETS[op[1]]
            data = {"n": len(published)}
            seq = hub.publish(name, kind, data, user_id=user)
            assert seq is not None
            published.append(Published(seq, name, user, kind.value, data))
        elif op[0] == "consume":
            clients[op[1]].consume(op[2])
        elif op[0] == "disconnect":
            client = clients[op[1]]
            if client.conn is not None:
                client.conn.close()
                client.conn = None
        elif op[0] == "resume":
            start_resume(clients[op[1]])
        else:
            for _ in range(op[1]):
                await asyncio.sleep(0)

    # the end: everyone (re)connects, every subscribe completes, every frame is read
    for client in clients:
        start_resume(client)
    await asyncio.gather(*tasks)
    for client in clients:
        client.consume(10**9)
    hub.close()

    seqs = [p.seq for p in published]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    by_seq = {p.seq: p for p in published}

    def floor_at(head: int) -> int:
        """The highest seq that had left the buffer when the hub's head was ``head``."""
        issued = [s for s in seqs if s <= head]
        return issued[-buffer_size - 1] if len(issued) > buffer_size else first_seq

    for client in clients:
        assert set(client.streams) <= set(client.channels)
        for name in client.channels:
            owner = client.user if name == "wallet" else None
            mine = [p.seq for p in published if p.channel == name and p.user == owner]
            stream = client.streams.get(name, [])
            assert stream, (name, "the final subscribe is always acknowledged")
            assert stream[0]["type"] == "SUBSCRIBED"
            assert stream[0]["data"] == {"since": None}
            prev = stream[0]["seq"]
            for env in stream[1:]:
                kind, seq = env["type"], env["seq"]
                if kind == "SUBSCRIBED":
                    assert env["data"]["since"] is not None
                    assert seq >= prev
                    assert not [s for s in mine if prev < s <= seq], "missed before SUBSCRIBED"
                elif kind == "RESYNC":
                    assert env["data"]["since"] is not None
                    assert env["data"]["reason"] == "expired"
                    assert env["data"]["since"] < floor_at(seq), "RESYNC though buffered"
                    assert seq >= prev
                else:
                    assert seq > prev, "duplicate or out of order"
                    assert not [s for s in mine if prev < s < seq], "missed a frame"
                    p = by_seq[seq]
                    assert (p.channel, p.user, p.type, p.data) == (
                        name,
                        owner,
                        kind,
                        env["data"],
                    )
                prev = seq
            assert not [s for s in mine if s > prev], "missed the tail"


# ------------------------------------------------------------------ coalescing


def apply(state: dict[str, Any], data: dict[str, Any]) -> None:
    for provider in data.get("providers", []):
        state[provider["workerId"]] = provider
    for worker_id in data.get("removed", []):
        state.pop(worker_id, None)


async def test_a_burst_of_1000_provider_changes_is_a_bounded_number_of_frames() -> None:
    time = FakeTime()
    hub = make_hub(time, coalesce_interval=0.25)
    sub = hub.connect(None)
    await sub.subscribe(MARKETPLACE)
    drain(sub)
    model: dict[str, Any] = {}
    # 1,000 changes of 50 providers at one instant, then 1,000 spread over one second
    for i in range(1000):
        data = {"providers": [{"workerId": f"w{i % 50}", "version": i}]}
        apply(model, data)
        hub.publish(MARKETPLACE, EventType.MARKETPLACE_UPDATE, data)
    await time.advance(0.3, sub)
    burst = drain(sub)
    assert len(burst) == 2  # the first at once, the other 999 merged at the interval's end
    for i in range(1000, 2000):
        data: dict[str, Any] = {"providers": [{"workerId": f"w{i % 70}", "version": i}]}
        if i % 7 == 0:
            data = {"removed": [f"w{i % 70}"]}
        apply(model, data)
        hub.publish(MARKETPLACE, EventType.MARKETPLACE_UPDATE, data)
        await time.advance(0.001)
    await time.advance(1.0, sub)
    spread = drain(sub)
    assert len(spread) <= 1 + math.ceil(1.0 / 0.25) + 1
    state: dict[str, Any] = {}
    for frame in burst + spread:
        assert frame["type"] == "MARKETPLACE_UPDATE"
        apply(state, frame["data"])
    assert state == model
    assert [f["seq"] for f in burst + spread] == sorted(f["seq"] for f in burst + spread)


async def test_other_types_are_never_merged_and_flush_pending_updates_first() -> None:
    time = FakeTime()
    hub = make_hub(time)
    sub = hub.connect("u1")
    await sub.subscribe(MARKETPLACE)
    await sub.subscribe("provider:w1")
    drain(sub)
    online = {"providers": [{"workerId": "w1", "status": "online"}]}
    hub.publish(MARKETPLACE, EventType.MARKETPLACE_UPDATE, {"providers": []})  # opens a window
    assert hub.publish(MARKETPLACE, EventType.MARKETPLACE_UPDATE, online) is None
    for i in range(300):
        hub.publish("provider:w1", EventType.GPU_METRICS_UPDATE, {"i": i})
    hub.publish(MARKETPLACE, EventType.PROVIDER_STATUS_CHANGED, {"workerId": "w1", "s": "off"})
    await time.advance(1.0, sub)
    frames = drain(sub)
    assert [f["data"]["i"] for f in frames if f["type"] == "GPU_METRICS_UPDATE"] == list(range(300))
    market = [f for f in frames if f["channel"] == "marketplace"]
    # the pending "online" goes out before the later status change, not after it
    assert [f["type"] for f in market] == [
        "MARKETPLACE_UPDATE",
        "MARKETPLACE_UPDATE",
        "PROVIDER_STATUS_CHANGED",
    ]
    assert market[1]["data"] == online


async def test_a_merged_update_json_cannot_hold_is_refused_at_publish() -> None:
    time = FakeTime()
    hub = make_hub(time)
    sub = hub.connect(None)
    await sub.subscribe(MARKETPLACE)
    hub.publish(MARKETPLACE, "MARKETPLACE_UPDATE", {"providers": [{"workerId": "a"}]})
    with pytest.raises(InvalidEvent):
        hub.publish(MARKETPLACE, "MARKETPLACE_UPDATE", {"providers": [{"workerId": "b", "x": {1}}]})
    hub.publish(MARKETPLACE, "MARKETPLACE_UPDATE", {"providers": [{"workerId": "c"}]})
    hub.publish(MARKETPLACE, EventType.PROVIDER_REGISTERED, {"workerId": "d"})  # flushes first
    frames = events(drain(sub))
    assert [f["type"] for f in frames] == [
        "MARKETPLACE_UPDATE",
        "MARKETPLACE_UPDATE",
        "PROVIDER_REGISTERED",
    ]
    assert frames[1]["data"] == {"providers": [{"workerId": "c"}]}


def test_coalescing_without_a_loop_or_timer_fails_loudly_and_keeps_no_window() -> None:
    hub = EventHub()
    update = {"providers": [{"workerId": "a"}]}
    head = hub.seq
    with pytest.raises(RuntimeError):
        hub.publish(MARKETPLACE, "MARKETPLACE_UPDATE", update)
    assert hub.seq == head
    assert hub.publish(MARKETPLACE, EventType.PROVIDER_REGISTERED, {}) == head + 1
    # with a timer it works outside a loop too
    time = FakeTime()
    hub = make_hub(time)
    assert hub.publish(MARKETPLACE, "MARKETPLACE_UPDATE", update) is not None
    assert hub.publish(MARKETPLACE, "MARKETPLACE_UPDATE", update) is None
    assert hub.flush() == 1


async def test_coalesce_interval_zero_sends_each_update() -> None:
    hub = make_hub(coalesce_interval=0)
    sub = hub.connect(None)
    await sub.subscribe(MARKETPLACE)
    for i in range(10):
        assert hub.publish(MARKETPLACE, "MARKETPLACE_UPDATE", {"providers": [], "i": i})
    assert len(events(drain(sub))) == 10


async def test_coalescing_runs_on_the_real_loop_timer_by_default() -> None:
    hub = EventHub(coalesce_interval=0.01)
    sub = hub.connect(None)
    await sub.subscribe(MARKETPLACE)
    for i in range(3):
        hub.publish(MARKETPLACE, "MARKETPLACE_UPDATE", {"providers": [{"workerId": "w", "i": i}]})
    frames = [json.loads(await asyncio.wait_for(sub.get(), 5)) for _ in range(3)]
    assert [f["type"] for f in frames] == ["SUBSCRIBED", "MARKETPLACE_UPDATE", "MARKETPLACE_UPDATE"]
    assert frames[2]["data"] == {"providers": [{"workerId": "w", "i": 2}]}
    hub.close()


UPDATES = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {
                "providers": st.lists(
                    st.fixed_dictionaries(
                        {"workerId": st.sampled_from("abcde"), "v": st.integers(0, 9)}
                    ),
                    max_size=3,
                )
            }
        ),
        st.fixed_dictionaries({"removed": st.lists(st.sampled_from("abcde"), max_size=2)}),
        st.fixed_dictionaries({"total": st.integers(0, 9)}),
    ),
    max_size=12,
)


@PROPERTY
@given(before=UPDATES, updates=UPDATES)
def test_applying_the_merged_update_is_applying_each_in_turn(
    before: list[dict[str, Any]], updates: list[dict[str, Any]]
) -> None:
    one_by_one: dict[str, Any] = {}
    for data in before + updates:
        apply(one_by_one, data)
    merged: dict[str, Any] = {}
    for data in before:
        apply(merged, data)
    result = merge_marketplace_updates(updates)
    apply(merged, result)
    assert merged == one_by_one
    totals = [u["total"] for u in updates if "total" in u]
    assert result.get("total") == (totals[-1] if totals else None)


# ------------------------------------------------------------------ slow consumers


async def test_a_slow_consumer_is_disconnected_while_the_others_keep_receiving() -> None:
    hub = make_hub(max_queue=4)
    reasons: list[CloseReason] = []
    fast = [hub.connect(f"f{i}") for i in range(3)]
    slow = hub.connect("slow", on_close=reasons.append)
    blocked = asyncio.get_running_loop().create_future()

    async def never_done(frame: str) -> None:
        await blocked

    stuck = hub.connect("stuck", never_done, on_close=reasons.append)
    for sub in [*fast, slow, stuck]:
        await sub.subscribe(MARKETPLACE)
    received: list[list[int]] = [[] for _ in fast]
    sender = None
    for n in range(50):
        hub.publish(MARKETPLACE, EventType.PROVIDER_REGISTERED, {"n": n})
        sender = sender or stuck._task  # the task waiting on the stuck write
        for i, sub in enumerate(fast):
            received[i] += [f["data"]["n"] for f in events(drain(sub))]
        await asyncio.sleep(0)
    assert received == [list(range(50))] * 3
    assert reasons == [SLOW_CONSUMER, SLOW_CONSUMER]
    for sub in (slow, stuck):
        assert sub.close_reason == SLOW_CONSUMER
        assert sub.pending == 0
        with pytest.raises(SubscriptionClosed):
            await sub.get()
    assert hub.subscribers(MARKETPLACE) == 3
    assert hub.connections == 3
    await asyncio.sleep(0)
    assert sender is not None
    assert sender.cancelled()  # the stuck write is abandoned, not left waiting
    assert stuck._task is None


async def test_a_failing_send_closes_only_that_connection() -> None:
    hub = make_hub()
    reasons: list[CloseReason] = []
    got: list[str] = []

    async def broken(frame: str) -> None:
        raise ConnectionResetError("gone")

    async def fine(frame: str) -> None:
        got.append(frame)

    bad = hub.connect("u1", broken, on_close=reasons.append)
    good = hub.connect("u2", fine)
    await bad.subscribe(MARKETPLACE)
    await good.subscribe(MARKETPLACE)
    await settle(bad, good)
    hub.publish(MARKETPLACE, EventType.PROVIDER_REGISTERED, {})
    await settle(good)
    assert reasons == [SEND_FAILED]
    assert bad.closed
    assert not good.closed
    assert [json.loads(f)["type"] for f in got] == ["SUBSCRIBED", "PROVIDER_REGISTERED"]
    good.close()


# ------------------------------------------------------------------ seed Property 3

PROVIDER_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("register"), st.integers(0, 5)),
        st.tuples(
            st.just("status"), st.integers(0, 5), st.sampled_from(["online", "offline", "busy"])
        ),
        st.tuples(st.just("market"), st.integers(0, 5)),
        st.tuples(st.just("wait"), st.floats(0, 1.0)),
    ),
    min_size=1,
    max_size=60,
)


@PROPERTY
@given(
    queued=st.integers(1, 8),
    pumped=st.integers(0, 8),
    steps=PROVIDER_STEPS,
    interval=st.sampled_from([0.0, 0.05, 0.25, 1.0]),
)
async def test_property_3_marketplace_clients_get_provider_changes_within_2_seconds(
    queued: int, pumped: int, steps: list[tuple[Any, ...]], interval: float
) -> None:
    """**Feature: qubix-enterprise-upgrade, Property 3: For any provider registration or status change, all connected marketplace clients should receive the update within 2 seconds**

    At hub level: N connected marketplace clients (read as queues by their own tasks, or fed by
    the hub's send task), random registrations, status changes and MARKETPLACE_UPDATEs; each
    client gets every registration and status change, and for every MARKETPLACE_UPDATE a frame
    with that provider's state or a newer one, no later than 2 s (hub clock) after the publish.
    """  # noqa: E501
    time = FakeTime()
    hub = make_hub(time, coalesce_interval=interval)
    logs: list[list[tuple[float, dict[str, Any]]]] = [[] for _ in range(queued + pumped)]

    def sender(log: list[tuple[float, dict[str, Any]]]) -> Callable[[str], Any]:
        async def send(frame: str) -> None:
            log.append((time.now, json.loads(frame)))

        return send

    async def reader(sub: Subscription, log: list[tuple[float, dict[str, Any]]]) -> None:
        async for frame in sub:
            log.append((time.now, json.loads(frame)))

    subs = [hub.connect(f"c{i}") for i in range(queued)]
    subs += [hub.connect(f"p{i}", sender(logs[queued + i])) for i in range(pumped)]
    readers = [asyncio.ensure_future(reader(sub, logs[i])) for i, sub in enumerate(subs[:queued])]
    for sub in subs:
        await sub.subscribe(MARKETPLACE)
    await settle(*subs)

    direct: list[tuple[float, int]] = []  # (publish time, seq)
    market: list[tuple[float, str, int]] = []  # (publish time, workerId, version)
    version = itertools.count()
    for step in steps:
        if step[0] == "wait":
            await time.advance(step[1], *subs)
            continue
        worker_id = f"w{step[1]}"
        if step[0] == "register":
            seq = hub.publish(MARKETPLACE, EventType.PROVIDER_REGISTERED, {"workerId": worker_id})
        elif step[0] == "status":
            data = {"workerId": worker_id, "status": step[2]}
            seq = hub.publish(MARKETPLACE, EventType.PROVIDER_STATUS_CHANGED, data)
        else:
            v = next(version)
            market.append((time.now, worker_id, v))
            hub.publish(
                MARKETPLACE,
                EventType.MARKETPLACE_UPDATE,
                {"providers": [{"workerId": worker_id, "version": v}]},
            )
            continue
        assert seq is not None
        direct.append((time.now, seq))
        await settle(*subs)
    await time.advance(2.0, *subs)
    for sub in subs:
        sub.close()
    await asyncio.gather(*readers)

    for log in logs:
        got = {env["seq"]: at for at, env in log}
        assert len(got) == len(log), "a frame came twice"
        for published_at, seq in direct:
            assert seq in got
            assert published_at <= got[seq] <= published_at + 2.0
        updates = [(at, env) for at, env in log if env["type"] == "MARKETPLACE_UPDATE"]
        for published_at, worker_id, v in market:
            assert any(
                published_at <= at <= published_at + 2.0
                and any(
                    p["workerId"] == worker_id and p["version"] >= v
                    for p in env["data"].get("providers", [])
                )
                for at, env in updates
            ), (worker_id, v)


# ------------------------------------------------------------------ heartbeat


def test_heartbeat_policy_gives_the_handler_valid_tornado_settings() -> None:
    policy = HeartbeatPolicy()
    assert policy.ping_timeout <= policy.ping_interval
    assert policy.dead_after == policy.ping_interval + policy.ping_timeout
    assert policy.tornado_settings() == {
        "websocket_ping_interval": policy.ping_interval,
        "websocket_ping_timeout": policy.ping_timeout,
        "websocket_max_message_size": policy.max_message_size,
    }
    for bad in ({"ping_timeout": 30.0}, {"ping_interval": 0.0}, {"ping_timeout": 0.0}):
        with pytest.raises(ValueError, match="ping_timeout"):
            HeartbeatPolicy(**bad)


# ------------------------------------------------------------------ the benchmark still runs


def test_the_fanout_benchmark_prints_one_json_line_of_figures() -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "ws_fanout.py"
    out = subprocess.run(
        [sys.executable, str(script), "--subscribers", "200", "--rounds", "2"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    [line] = out.splitlines()
    result = json.loads(line)
    assert result["subscribers"] == 200
    for side in ("hub", "baseline"):
        assert result[side]["deliveries"] == 200 * 4
        assert {"p50_ms", "p99_ms", "bytes_per_subscriber"} <= set(result[side])
    assert result["hub"]["encodings_per_broadcast"] == 1


async def test_an_idle_connection_holds_no_task_and_a_frame_to_it_is_written_at_once() -> None:
    hub = make_hub()
    written: list[str] = []

    def write(frame: str) -> asyncio.Future[None]:
        written.append(frame)
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)  # in the socket buffer already
        return done

    sub = hub.connect("u1", write)
    await sub.subscribe(MARKETPLACE)
    before = len(written)
    assert sub._task is None
    hub.publish(MARKETPLACE, EventType.PROVIDER_REGISTERED, {"n": 1})
    assert len(written) == before + 1  # within publish, no task woken
    assert json.loads(written[-1])["data"] == {"n": 1}
    assert sub._task is None


async def test_frames_behind_a_pending_write_follow_it_in_order() -> None:
    hub = make_hub()
    loop = asyncio.get_running_loop()
    written: list[int] = []
    pending: list[asyncio.Future[None]] = []

    def write(frame: str) -> asyncio.Future[None]:
        data = json.loads(frame)
        if data["type"] == EventType.PROVIDER_REGISTERED.value:
            written.append(data["data"]["n"])
        future = loop.create_future()
        pending.append(future)  # the socket buffer is full until the test says so
        return future

    async def let_writes_finish() -> None:
        while sub._task is not None or not subscribing.done():
            for future in pending:
                if not future.done():
                    future.set_result(None)
            await asyncio.sleep(0)

    sub = hub.connect("u1", write)
    subscribing = asyncio.create_task(sub.subscribe(MARKETPLACE))
    await let_writes_finish()
    for n in range(3):
        hub.publish(MARKETPLACE, EventType.PROVIDER_REGISTERED, {"n": n})
    assert written == [0]  # the others wait for the first write
    assert sub.pending == 2
    await let_writes_finish()
    assert written == [0, 1, 2]
    assert sub.close_reason is None


async def test_a_write_that_fails_at_once_closes_only_that_connection() -> None:
    hub = make_hub()
    reasons: list[CloseReason] = []

    def broken(frame: str) -> asyncio.Future[None]:
        if json.loads(frame)["type"] == EventType.PROVIDER_REGISTERED.value:
            raise ConnectionResetError("gone")
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    bad = hub.connect("u1", broken, on_close=reasons.append)
    good = hub.connect("u2")
    await bad.subscribe(MARKETPLACE)
    await good.subscribe(MARKETPLACE)
    drain(good)
    hub.publish(MARKETPLACE, EventType.PROVIDER_REGISTERED, {"n": 1})
    assert [f["data"] for f in events(drain(good))] == [{"n": 1}]
    await asyncio.sleep(0)
    assert reasons == [SEND_FAILED]
    assert hub.subscribers(MARKETPLACE) == 1
