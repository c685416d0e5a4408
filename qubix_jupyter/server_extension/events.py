"""The WebSocket event hub of DESIGN.md §6, independent of the transport.

The tornado handler of ``/qubix/api/events`` (or anything else that moves text frames) plugs in:

.. code-block:: python

    hub = EventHub()                                    # one per market process
    sub = hub.connect(user_id, send=ws.write_message,   # or no ``send``: read ``sub`` as a queue
                      on_close=lambda r: ws.close(r.code, r.reason))
    await sub.subscribe("job:j-1", authorize=owns, since_seq=last_seen)
    hub.publish("job:j-1", EventType.JOB_PROGRESS, {"jobId": "j-1", "progress": 40})
    sub.close()                                         # from the handler's ``on_close``

Frames. Every frame is the JSON text of ``{"type", "channel", "seq", "ts", "data"}``: ``ts`` is
milliseconds since the Unix epoch (``clock`` at send), ``channel`` is the name the client
subscribed to (``wallet`` for everyone's own wallet). A broadcast is encoded once; all its
subscribers are handed the same ``str``.

Sequence numbers are **global**: one counter for the hub, increasing by one per published frame
whatever its channel, so a channel's frames have increasing (not consecutive) ``seq``. The first
``seq`` is the clock in microseconds when the hub starts, so numbers keep increasing across a
restart of the market and a client resuming from an older process gets a RESYNC, not another
process's frames.

Positions and resume. Every successful :meth:`Subscription.subscribe` ends with one
``SUBSCRIBED`` frame whose ``seq`` is the hub's head at that moment; it comes after the replayed
frames and before any live one, so within a channel ``seq`` never decreases in arrival order. The
client's position on a channel is the ``seq`` of the last frame it received there (of any type).
Reconnecting, it subscribes with ``since_seq=<position>`` and receives, in order, exactly the
channel's frames with ``seq > position`` — the buffered ones, then live ones; a publish that runs
while the subscribe awaits its authorization is either replayed or delivered live, never both,
never neither. When the hub cannot do that — frames after ``position`` have left the ring buffer
(``buffer_size`` frames over all channels), ``position`` is ahead of the hub (another process), or
the replay would not fit the connection's queue — the client gets one ``RESYNC`` frame instead
(``data``: ``reason``, ``since``) and must refetch the channel's state over REST; live frames
follow it. A subscribe without ``since_seq`` starts live.

Restarts. A stopping market hands its hub's :meth:`EventHub.state` (head, floor and buffered
frames) to the next process, which starts with ``EventHub(resume=state)``: its first ``seq`` is
past both the old head and the clock, its floor and buffer are the old ones, so a client that
had everything up to the old head (or anything still buffered) resumes without RESYNC and is
replayed exactly what it missed, from before and after the restart. No seq is ever issued
twice: the gap between the old head and the new first seq holds no frames.

Coalescing. ``MARKETPLACE_UPDATE`` frames are merged per channel: the first in a quiet channel is
sent at once; those published in the ``coalesce_interval`` after a send are merged
(:func:`~qubix_jupyter.market.events.merge_marketplace_updates`: latest state per ``workerId``
wins) and sent as one frame when the interval ends. Publishing any other type on that channel
first sends what is pending, so frames keep publish order. Every other type is sent at once, one
frame per publish, and never dropped.

Slow consumers. Each connection has a bounded queue (``max_queue`` frames). A connection whose
queue is full when a frame arrives is closed with :data:`SLOW_CONSUMER` (its queue freed, its
``on_close`` called) instead of slowing the hub down; the client reconnects and resumes.

Everything runs on one asyncio loop: call :meth:`EventHub.publish` from that loop's thread (from
another thread use ``loop.call_soon_threadsafe(hub.publish, …)``).

What the WebSocket handler does (checked against tornado 6.6 over a loopback socket):

* ``open``: authenticate (bearer token → user id) first, then ``self.sub = hub.connect(user_id,
  send=self.write_message, on_close=lambda r: self.close(r.code, r.reason))``. ``write_message``
  returns a future that resolves once the frame is in the socket buffer, so a stalled socket
  stalls only this connection's queue, which then overflows (SLOW_CONSUMER); a closed one
  raises, which ends it with SEND_FAILED. (The market's handler sends pre-framed bytes the same
  way: ``EventsHandler._send_frame``.)
* ``async on_message``: ``{"type": "subscribe", "channel": c, "sinceSeq": n?}`` →
  ``await self.sub.subscribe(c, authorize=owns, since_seq=n)``; ``{"type": "unsubscribe",
  "channel": c}`` → ``self.sub.unsubscribe(c)``. A :class:`QubixError` (InvalidChannel 422,
  ChannelForbidden 403, TooManyChannels 429, InvalidEvent 422 for a bad ``sinceSeq``) is
  answered with one frame carrying ``exc.to_body()`` (e.g. ``{"type": "ERROR", "channel": c,
  "error": {…}}``) and the socket stays open. tornado runs a coroutine ``on_message`` to the end
  before the next message, so one connection's subscribes happen in order. ``owns(user_id,
  channel)`` looks up whether ``channel.id`` is the user's provider (``provider``) or job
  (consumer or its provider, ``job``).
* ``on_close``: ``self.sub.close()``.
* Heartbeat: ``ping_interval``, ``ping_timeout`` and ``max_message_size`` properties that return
  :class:`HeartbeatPolicy`'s values (Jupyter server owns the tornado settings, so override the
  properties rather than set ``websocket_ping_*``); ``qubix serve`` may pass
  :meth:`HeartbeatPolicy.tornado_settings` to its application instead. A peer that stops
  answering pings (or stops reading) is closed within ``dead_after`` seconds.
* At server shutdown: ``hub.close()`` (every connection gets 1001 going_away).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..market.events import (
    COALESCED_TYPES,
    Channel,
    ChannelForbidden,
    ChannelKind,
    EventType,
    InvalidChannel,
    InvalidEvent,
    MarketplaceMerge,
    TooManyChannels,
    check_marketplace_update,
    event_type,
    parse_channel,
)

__all__ = [
    "CLIENT_CLOSED",
    "HUB_CLOSED",
    "SEND_FAILED",
    "SLOW_CONSUMER",
    "Authorizer",
    "ChannelForbidden",
    "CloseReason",
    "EventHub",
    "EventType",
    "HeartbeatPolicy",
    "HubState",
    "InvalidChannel",
    "InvalidEvent",
    "Subscription",
    "SubscriptionClosed",
    "TooManyChannels",
]

log = logging.getLogger(__name__)

#: ``await authorize(user_id, channel)`` → may this user subscribe to this private channel?
Authorizer = Callable[[str, Channel], Awaitable[bool]]
#: Writes one frame; returns None or a done future when the frame is taken, else an awaitable
#: that resolves once it is written (the hub queues the next frames behind it).
Send = Callable[[str], Awaitable[Any] | None]
#: (channel name, user id for ``wallet`` else None): where a frame goes.
_Key = tuple[str, str | None]


@dataclass(frozen=True, slots=True)
class CloseReason:
    """Why the hub ended a connection: a WebSocket close code and a short reason."""

    code: int
    reason: str


#: The connection's queue overflowed; 1013 "try again later": reconnect and resume.
SLOW_CONSUMER = CloseReason(1013, "slow_consumer")
#: ``send`` raised (the socket is gone).
SEND_FAILED = CloseReason(1011, "send_failed")
#: The hub shut down (server stopping).
HUB_CLOSED = CloseReason(1001, "going_away")
#: The owner closed it with :meth:`Subscription.close`.
CLIENT_CLOSED = CloseReason(1000, "closed")


class SubscriptionClosed(Exception):
    """Reading from, or subscribing on, a connection that is closed."""

    def __init__(self, reason: CloseReason) -> None:
        super().__init__(f"subscription closed: {reason.reason} ({reason.code})")
        self.reason = reason


#: A buffered frame as a stopping hub hands it on: (seq, channel name, wallet owner or None, text).
SavedFrame = tuple[int, str, str | None, str]


@dataclass(frozen=True, slots=True)
class HubState:
    """What a hub hands the next process of the market: its head, its floor (the highest seq no
    longer buffered) and its buffered frames in seq order, all above the floor, none above the
    head. A state that breaks those rules is refused (ValueError)."""

    head: int
    floor: int
    frames: tuple[SavedFrame, ...] = ()

    def __post_init__(self) -> None:
        previous = self.floor
        for seq, *_ in self.frames:
            if not previous < seq <= self.head:
                raise ValueError("saved frames must increase, above the floor, up to the head")
            previous = seq
        if self.floor > self.head:
            raise ValueError("the floor of a hub state cannot be above its head")


@dataclass(frozen=True, slots=True)
class HeartbeatPolicy:
    """When the server pings and how long it waits for the pong before closing the socket.

    A half-open connection (peer vanished, no FIN) is closed at most
    ``ping_interval + ping_timeout`` seconds after the peer's last pong. tornado requires
    ``ping_timeout <= ping_interval`` (it warns and clamps otherwise).

    The handler either overrides its ``ping_interval``/``ping_timeout`` properties with these
    values (per handler: Jupyter server owns the tornado application settings) or merges
    :meth:`tornado_settings` into the application's settings (``qubix serve``).
    """

    ping_interval: float = 20.0
    ping_timeout: float = 10.0
    #: largest client → server message (subscribe requests are tiny)
    max_message_size: int = 64 * 1024

    def __post_init__(self) -> None:
        if not 0 < self.ping_timeout <= self.ping_interval:
            raise ValueError("need 0 < ping_timeout <= ping_interval")
        if self.max_message_size <= 0:
            raise ValueError("max_message_size must be positive")

    @property
    def dead_after(self) -> float:
        """Seconds after which a silent peer's connection is surely closed."""
        return self.ping_interval + self.ping_timeout

    def tornado_settings(self) -> dict[str, float | int]:
        return {
            "websocket_ping_interval": self.ping_interval,
            "websocket_ping_timeout": self.ping_timeout,
            "websocket_max_message_size": self.max_message_size,
        }


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class _Coalescing:
    """A channel that sent a MARKETPLACE_UPDATE less than ``coalesce_interval`` ago."""

    __slots__ = ("channel", "handle", "merge")

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.merge: MarketplaceMerge | None = None
        self.handle: Any = None


class Subscription:
    """One client connection to the hub: its channels and its bounded queue of frames.

    With ``send`` every frame goes to ``send(frame)`` in order: at once while nothing is being
    written, else from a task that waits for the write in flight and drains the queue (see
    :meth:`_push`); without it, read the frames yourself with :meth:`get`, :meth:`get_nowait` or
    ``async for``.
    """

    __slots__ = (
        "_channels",
        "_hub",
        "_on_close",
        "_queue",
        "_send",
        "_task",
        "_waiter",
        "close_reason",
        "max_queue",
        "user_id",
    )

    def __init__(
        self,
        hub: EventHub,
        user_id: str | None,
        send: Send | None,
        on_close: Callable[[CloseReason], Any] | None,
        max_queue: int,
    ) -> None:
        self._hub = hub
        self.user_id = user_id
        self.max_queue = max_queue
        self._send = send
        self._on_close = on_close
        self._queue: deque[tuple[_Key, str]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._channels: dict[_Key, Channel] = {}
        self._task: asyncio.Task[None] | None = None
        #: set once closed: why
        self.close_reason: CloseReason | None = None

    # ------------------------------------------------------------------ subscribing

    @property
    def closed(self) -> bool:
        return self.close_reason is not None

    @property
    def channels(self) -> list[str]:
        return [c.name for c in self._channels.values()]

    def _key(self, channel: Channel) -> _Key:
        return (channel.name, self.user_id if channel.kind is ChannelKind.WALLET else None)

    async def subscribe(
        self,
        channel: str | Channel,
        *,
        authorize: Authorizer | None = None,
        since_seq: int | None = None,
    ) -> int:
        """Start receiving ``channel``'s frames; return the hub's head ``seq`` (the position).

        ``marketplace`` is open to every connection and ``wallet`` to every signed-in one (it is
        always the connection's own). ``provider:…``/``job:…`` need ``await authorize(user_id,
        channel)`` (this one, else the hub's) to return True, else :class:`ChannelForbidden`.
        With ``since_seq`` the channel's buffered frames after it are queued first (or one
        RESYNC). Subscribing to a channel already subscribed changes nothing and returns the
        head. Raises :class:`InvalidChannel`, :class:`ChannelForbidden`,
        :class:`TooManyChannels`, :class:`SubscriptionClosed`.
        """
        parsed = parse_channel(channel)
        if since_seq is not None and (
            isinstance(since_seq, bool) or not isinstance(since_seq, int)
        ):
            raise InvalidEvent("since_seq must be an integer")
        self._check_can_add(parsed)
        if parsed.kind is ChannelKind.WALLET and self.user_id is None:
            raise ChannelForbidden("sign in to subscribe to your wallet", channel=parsed.name)
        if parsed.private:
            check = authorize or self._hub.authorize
            if self.user_id is None or check is None:
                raise ChannelForbidden("this channel needs a signed-in owner", channel=parsed.name)
            allowed = await check(self.user_id, parsed)
            if allowed is not True:
                raise ChannelForbidden(
                    f"not allowed to subscribe to {parsed.kind.value} channel",
                    channel=parsed.name,
                )
        # Nothing below awaits: no publish can run between the replay and the registration.
        self._check_can_add(parsed)
        key = self._key(parsed)
        hub = self._hub
        if key in self._channels:
            return hub.seq
        self._channels[key] = parsed
        hub._subscribers.setdefault(key, {})[self] = None
        if since_seq is not None:
            hub._replay(self, key, parsed, since_seq)
        if not self.closed:
            hub._push_one(
                self, key, hub._control(EventType.SUBSCRIBED, parsed, {"since": since_seq})
            )
        if self.closed:  # the replay or its acknowledgement overflowed the queue
            raise SubscriptionClosed(self.close_reason)  # type: ignore[arg-type]
        return hub.seq

    def _check_can_add(self, channel: Channel) -> None:
        if self.closed:
            raise SubscriptionClosed(self.close_reason)  # type: ignore[arg-type]
        if (
            self._key(channel) not in self._channels
            and len(self._channels) >= self._hub.max_channels
        ):
            raise TooManyChannels(
                "too many subscriptions on one connection", max=self._hub.max_channels
            )

    def unsubscribe(self, channel: str | Channel) -> bool:
        """Stop the channel's frames, also those already queued; False if not subscribed."""
        key = self._key(parse_channel(channel))
        if self._channels.pop(key, None) is None:
            return False
        self._hub._forget(self, key)
        if any(k == key for k, _ in self._queue):
            self._queue = deque(item for item in self._queue if item[0] != key)
        return True

    def close(self) -> None:
        """Close it from the owner's side (the socket closed): no ``on_close`` call."""
        self._end(CLIENT_CLOSED, notify=False)

    def _end(self, reason: CloseReason, *, notify: bool = True) -> None:
        if self.close_reason is not None:
            return
        self.close_reason = reason
        for key in self._channels:
            self._hub._forget(self, key)
        self._channels.clear()
        self._queue.clear()
        self._hub._connections.pop(self, None)
        self._wake()
        task = self._task
        if task is not None and not task.done():
            try:
                current = asyncio.current_task()
            except RuntimeError:  # closed from outside the loop (shutdown)
                current = None
            if task is not current:
                task.cancel()
        if notify and self._on_close is not None:
            try:
                self._on_close(reason)
            except Exception:
                log.exception("on_close callback of a closed event connection failed")

    # ------------------------------------------------------------------ the queue

    def _push(self, key: _Key, frame: str) -> bool:
        """Queue (or send) a frame; False (and nothing queued) when the queue is full.

        With ``send``, a frame that finds nothing queued and nothing being written is sent at
        once, without a task: most frames to a healthy connection. Only while a write is
        pending do frames queue, and a task drains them in order, then ends; an idle connection
        holds no task.
        """
        if len(self._queue) >= self.max_queue:
            return False
        send = self._send
        if send is None:
            self._queue.append((key, frame))
            if self._waiter is not None:
                self._wake()
            return True
        if self._task is None and not self._queue:
            loop = asyncio.get_running_loop()
            try:
                written = send(frame)
            except Exception:
                log.debug("sending an event frame failed; closing the connection", exc_info=True)
                # Not now: the hub is iterating over the channel's subscribers.
                loop.call_soon(self._end, SEND_FAILED)
                return True
            if written is None:  # taken: nothing to wait for
                return True
            if asyncio.isfuture(written) and written.done():
                if written.cancelled() or written.exception() is not None:
                    loop.call_soon(self._end, SEND_FAILED)
                return True
            self._task = loop.create_task(self._pump(written))
            return True
        self._queue.append((key, frame))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._pump(None))
        return True

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    @property
    def pending(self) -> int:
        """Frames queued, not yet read or sent."""
        return len(self._queue)

    def get_nowait(self) -> str | None:
        """The next frame, or None when none is queued; SubscriptionClosed once closed."""
        if self.close_reason is not None:
            raise SubscriptionClosed(self.close_reason)
        return self._queue.popleft()[1] if self._queue else None

    async def get(self) -> str:
        """Wait for the next frame; SubscriptionClosed once closed."""
        while True:
            if self.close_reason is not None:
                raise SubscriptionClosed(self.close_reason)
            if self._queue:
                return self._queue.popleft()[1]
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                if self._waiter is waiter:
                    self._waiter = None

    def __aiter__(self) -> AsyncIterator[str]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[str]:
        while True:
            try:
                frame = await self.get()
            except SubscriptionClosed:
                return
            yield frame

    async def _pump(self, written: Awaitable[Any] | None) -> None:
        """Wait for the write in flight, then send what queued meanwhile, in order, and end."""
        send = self._send
        assert send is not None
        try:
            if written is not None:
                await written
            while self._queue and self.close_reason is None:
                written = send(self._queue.popleft()[1])
                if written is not None:
                    await written
        except asyncio.CancelledError:
            raise
        except Exception:
            log.debug("sending an event frame failed; closing the connection", exc_info=True)
            self._end(SEND_FAILED)
        finally:
            if self._task is asyncio.current_task():
                self._task = None


class EventHub:
    """Channels, a ring buffer of recent frames, and the connections subscribed to them.

    ``buffer_size``: frames kept for resume, over all channels. ``coalesce_interval``: seconds
    over which MARKETPLACE_UPDATEs of a channel are merged (0 sends each at once). ``clock``:
    wall time for ``ts`` (and the first ``seq``). ``max_queue``: frames a connection may have
    waiting before it counts as a slow consumer. ``max_channels``: subscriptions per connection.
    ``authorize``: the default ownership check for private channels. ``call_later(delay, fn)``:
    the timer for coalescing (default: the running loop's ``call_later``). ``dumps``: the JSON
    encoder (one call per broadcast frame). ``resume``: the :meth:`state` of the hub this one
    follows (the previous process of the market), so its clients resume here.
    """

    def __init__(
        self,
        buffer_size: int = 10_000,
        coalesce_interval: float = 0.25,
        clock: Callable[[], float] = time.time,
        *,
        max_queue: int = 1024,
        max_channels: int = 256,
        authorize: Authorizer | None = None,
        first_seq: int | None = None,
        call_later: Callable[[float, Callable[[], None]], Any] | None = None,
        dumps: Callable[[Any], str] = _dumps,
        resume: HubState | None = None,
    ) -> None:
        if buffer_size < 1 or max_queue < 2 or max_channels < 1 or coalesce_interval < 0:
            raise ValueError("buffer_size ≥ 1, max_queue ≥ 2, max_channels ≥ 1, interval ≥ 0")
        self.buffer_size = buffer_size
        self.coalesce_interval = coalesce_interval
        self.clock = clock
        self.max_queue = max_queue
        self.max_channels = max_channels
        self.authorize = authorize
        self._dumps = dumps
        self._call_later = call_later
        self._seq = int(clock() * 1_000_000) if first_seq is None else first_seq
        #: highest seq no longer in the buffer (or never issued by this hub)
        self._floor = self._seq
        self._buffer: deque[tuple[int, _Key, str]] = deque()
        if resume is not None:
            self._seq = max(self._seq, resume.head)
            kept = resume.frames[-buffer_size:]
            dropped = len(resume.frames) - len(kept)
            self._floor = resume.frames[dropped - 1][0] if dropped else resume.floor
            self._buffer.extend((seq, (name, owner), frame) for seq, name, owner, frame in kept)
        self._subscribers: dict[_Key, dict[Subscription, None]] = {}
        self._connections: dict[Subscription, None] = {}
        self._coalescing: dict[_Key, _Coalescing] = {}
        self._closed = False
        #: frames broadcast (counting coalesced ones once), for metrics and tests
        self.frames_sent = 0

    @property
    def seq(self) -> int:
        """The last ``seq`` issued (the head)."""
        return self._seq

    @property
    def connections(self) -> int:
        return len(self._connections)

    def subscribers(self, channel: str | Channel, *, user_id: str | None = None) -> int:
        parsed = parse_channel(channel)
        return len(self._subscribers.get(self._key_for(parsed, user_id), ()))

    def state(self) -> HubState:
        """The head, floor and buffered frames, for the next process's ``EventHub(resume=…)``.
        Call it after :meth:`flush` and :meth:`close`, so nothing is pending or published after."""
        frames = tuple((seq, name, owner, frame) for seq, (name, owner), frame in self._buffer)
        return HubState(head=self._seq, floor=self._floor, frames=frames)

    # ------------------------------------------------------------------ connections

    def connect(
        self,
        user_id: str | None,
        send: Send | None = None,
        *,
        on_close: Callable[[CloseReason], Any] | None = None,
        max_queue: int | None = None,
    ) -> Subscription:
        """A new connection for ``user_id`` (None: anonymous, marketplace only).

        ``send``: called with each frame in order, at once while nothing is being written, else
        awaited in turn by a task of the hub (needs a running loop); without it, read the
        returned :class:`Subscription`. ``on_close(reason)`` is called when
        the *hub* ends the connection (slow consumer, failed send, hub closed) — the handler
        closes the socket with ``reason.code``/``reason.reason`` there.
        """
        if self._closed:
            raise SubscriptionClosed(HUB_CLOSED)
        sub = Subscription(self, user_id, send, on_close, max_queue or self.max_queue)
        self._connections[sub] = None
        return sub

    def _forget(self, sub: Subscription, key: _Key) -> None:
        subs = self._subscribers.get(key)
        if subs is not None:
            subs.pop(sub, None)
            if not subs:
                del self._subscribers[key]

    def close(self) -> None:
        """End every connection with :data:`HUB_CLOSED` and drop pending coalesced frames."""
        self._closed = True
        for state in self._coalescing.values():
            if state.handle is not None:
                state.handle.cancel()
        self._coalescing.clear()
        for sub in list(self._connections):
            sub._end(HUB_CLOSED)

    # ------------------------------------------------------------------ publishing

    def _key_for(self, channel: Channel, user_id: str | None) -> _Key:
        if channel.kind is ChannelKind.WALLET:
            if not isinstance(user_id, str) or not user_id:
                raise InvalidEvent("a wallet event needs the user_id it belongs to")
            return (channel.name, user_id)
        if user_id is not None:
            raise InvalidEvent("only wallet events take a user_id")
        return (channel.name, None)

    def publish(
        self,
        channel: str | Channel,
        type: EventType | str,
        data: Mapping[str, Any],
        *,
        user_id: str | None = None,
    ) -> int | None:
        """Send an event to the channel's subscribers; return its ``seq`` (None if coalesced).

        ``user_id`` names the wallet's owner for ``wallet`` events (and only for them). The
        hub keeps ``data``: a coalesced MARKETPLACE_UPDATE is encoded up to
        ``coalesce_interval`` later, so do not change it after publishing. Raises
        :class:`InvalidChannel` or :class:`InvalidEvent` (also for data JSON cannot encode).
        """
        parsed = parse_channel(channel)
        kind = event_type(type)
        key = self._key_for(parsed, user_id)
        if self._closed:
            return None
        if kind in COALESCED_TYPES:
            check_marketplace_update(data)
            if self.coalesce_interval > 0:
                state = self._coalescing.get(key)
                if state is not None:
                    try:  # refuse now what the merged frame could not encode later
                        self._dumps(data)
                    except (TypeError, ValueError) as exc:
                        raise InvalidEvent(f"event data is not JSON: {exc}") from None
                    if state.merge is None:
                        state.merge = MarketplaceMerge()
                    state.merge.add(data)
                    return None
                call_later = self._timer()
                seq = self._broadcast(key, parsed, kind, data)
                self._start_interval(key, parsed, call_later)
                return seq
        else:
            state = self._coalescing.get(key)
            if state is not None and state.merge is not None:
                self._flush_pending(key, state)  # keep publish order on the channel
        return self._broadcast(key, parsed, kind, data)

    def flush(self) -> int:
        """Send every pending coalesced frame now; return how many were sent."""
        sent = 0
        for key, state in list(self._coalescing.items()):
            if state.merge is not None:
                self._flush_pending(key, state)
                sent += 1
        return sent

    def _timer(self) -> Callable[[float, Callable[[], None]], Any]:
        """``call_later`` for the coalescing window; RuntimeError outside a running loop."""
        return self._call_later or asyncio.get_running_loop().call_later

    def _start_interval(
        self, key: _Key, channel: Channel, call_later: Callable[[float, Callable[[], None]], Any]
    ) -> None:
        state = _Coalescing(channel)
        self._coalescing[key] = state
        state.handle = call_later(self.coalesce_interval, lambda: self._interval_over(key, state))

    def _interval_over(self, key: _Key, state: _Coalescing) -> None:
        if self._coalescing.get(key) is not state:
            return
        del self._coalescing[key]
        if state.merge is not None:
            # every merged payload encoded alone, so the merged one encodes too
            self._broadcast(key, state.channel, EventType.MARKETPLACE_UPDATE, state.merge.result())
            self._start_interval(key, state.channel, self._timer())

    def _flush_pending(self, key: _Key, state: _Coalescing) -> None:
        merge, state.merge = state.merge, None
        assert merge is not None
        self._broadcast(key, state.channel, EventType.MARKETPLACE_UPDATE, merge.result())

    def _broadcast(self, key: _Key, channel: Channel, kind: EventType, data: Any) -> int:
        seq = self._seq + 1
        envelope = {
            "type": kind.value,
            "channel": channel.name,
            "seq": seq,
            "ts": int(self.clock() * 1000),
            "data": data,
        }
        try:
            frame = self._dumps(envelope)
        except (TypeError, ValueError) as exc:
            raise InvalidEvent(f"event data is not JSON: {exc}") from None
        self._seq = seq
        buffer = self._buffer
        if len(buffer) >= self.buffer_size:
            self._floor = buffer.popleft()[0]
        buffer.append((seq, key, frame))
        self.frames_sent += 1
        subs = self._subscribers.get(key)
        if subs:
            slow = [sub for sub in subs if not sub._push(key, frame)]
            for sub in slow:
                sub._end(SLOW_CONSUMER)
        return seq

    # ------------------------------------------------------------------ resume

    def _control(self, kind: EventType, channel: Channel, data: dict[str, Any]) -> str:
        return self._dumps(
            {
                "type": kind.value,
                "channel": channel.name,
                "seq": self._seq,
                "ts": int(self.clock() * 1000),
                "data": data,
            }
        )

    def _push_one(self, sub: Subscription, key: _Key, frame: str) -> None:
        if not sub._push(key, frame):
            sub._end(SLOW_CONSUMER)

    def _replay(self, sub: Subscription, key: _Key, channel: Channel, since: int) -> None:
        """Queue the channel's buffered frames after ``since``, or one RESYNC."""
        reason = None
        if since > self._seq:
            reason = "unknown_seq"
        elif since < self._floor:
            reason = "expired"
        else:
            frames: list[str] = []
            for seq, frame_key, frame in reversed(self._buffer):
                if seq <= since:
                    break
                if frame_key == key:
                    frames.append(frame)
            # room for the frames, the SUBSCRIBED after them, and a little live traffic
            if len(frames) + sub.pending + 2 > sub.max_queue:
                reason = "too_far_behind"
            else:
                for frame in reversed(frames):
                    sub._push(key, frame)
                return
        self._push_one(
            sub, key, self._control(EventType.RESYNC, channel, {"reason": reason, "since": since})
        )
