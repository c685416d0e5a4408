"""The events WebSocket, kept alive: subscribe once, receive every frame across reconnects.

:class:`AsyncSubscription` holds one WebSocket to ``{market}qubix/api/events`` and the channels
it is subscribed to (``marketplace``, ``wallet``, ``job:{jobId}``, ``provider:{workerId}``).

* **Reconnect.** When the socket drops (server restart, network, ``slow_consumer``) it tries again
  after :class:`~.backoff.Backoff` waits — the first within 250 ms, then doubling up to 2 s, each
  with full jitter — until it is back or :meth:`close` is called.
* **Resume.** It remembers the ``seq`` of the last frame of each channel and resubscribes with
  ``sinceSeq``: the market replays exactly what was missed. When the market cannot (its buffer
  moved on, or it restarted), the market sends one ``RESYNC`` frame, delivered here as an
  :class:`Event` with ``resync`` true: refetch that channel's state over REST.
* **State.** :attr:`state` is ``connecting``, ``open``, ``reconnecting`` or ``closed``; callbacks
  given to :meth:`on_state` see every change.
* **Heartbeat.** The market pings; tornado answers. The client pings too and treats a market that
  stops answering as a dropped socket.
* **Token.** Sent as ``Authorization: Bearer``. A 401 (token expired or revoked) signs in again
  when the client holds the wallet's seed, else closes the subscription with the error.

``SUBSCRIBED`` frames only move the position; they are not delivered (see
:meth:`wait_subscribed`). Error frames arrive as events of type ``error`` with ``error`` set.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import json
import logging
import random
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClientConnection, WebSocketError, websocket_connect

from .backoff import MAX_ATTEMPT_SECONDS, Backoff
from .errors import MarketError, Unauthorized, error_from_frame, error_from_response

if TYPE_CHECKING:
    from .aio import AsyncMarketClient

log = logging.getLogger(__name__)

#: Close code of the market when the token expired or was revoked.
TOKEN_ENDED = 4401
#: The market does not send these to a consumer; a subscribe answered with one is given up.
_FATAL_FRAME_STATUSES = frozenset({403, 404, 422})


class ConnectionState(enum.StrEnum):
    CONNECTING = "connecting"
    OPEN = "open"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@dataclasses.dataclass(frozen=True)
class Event:
    """One frame of the market: ``type`` (``JOB_PROGRESS``, ``RESYNC``, ``error``…), its channel,
    ``seq``, ``ts`` (ms since the epoch) and ``data``."""

    type: str
    channel: str | None
    seq: int | None
    ts: int | None
    data: Any
    error: MarketError | None = None

    @property
    def resync(self) -> bool:
        """The market could not replay what was missed on ``channel``: refetch it over REST."""
        return self.type == "RESYNC"

    @classmethod
    def from_frame(cls, frame: dict[str, Any]) -> Event:
        kind = str(frame.get("type"))
        channel = frame.get("channel") if isinstance(frame.get("channel"), str) else None
        seq = frame.get("seq") if isinstance(frame.get("seq"), int) else None
        ts = frame.get("ts") if isinstance(frame.get("ts"), int) else None
        error = error_from_frame(frame) if kind == "error" else None
        return cls(kind, channel, seq, ts, frame.get("data"), error)


def _consume(sent: asyncio.Future[None]) -> None:
    # a frame lost with its socket is sent again by the next connect's subscribe
    if not sent.cancelled():
        sent.exception()


def _close_when_open(connecting: asyncio.Future[WebSocketClientConnection]) -> None:
    # the subscription was closed while this connect was under way
    if not connecting.cancelled() and connecting.exception() is None:
        connecting.result().close(1000, "closed")


StateCallback = Callable[[ConnectionState], Any]
EventCallback = Callable[[Event], Any]


class AsyncSubscription:
    """A self-healing subscription; build it with ``client.events(*channels)``."""

    DEFAULT_BACKOFF = Backoff()

    def __init__(
        self,
        client: AsyncMarketClient,
        channels: Iterable[str] = (),
        *,
        on_event: EventCallback | None = None,
        on_state: StateCallback | None = None,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        connect_timeout: float = MAX_ATTEMPT_SECONDS,
        ping_interval: float = 20.0,
        ping_timeout: float = 10.0,
        max_buffer: int = 100_000,
    ) -> None:
        self.client = client
        self.channels: dict[str, None] = dict.fromkeys(channels)
        #: channel → ``seq`` of the last frame received on it (the resume point)
        self.positions: dict[str, int] = {}
        self.state = ConnectionState.CONNECTING
        #: how many times the socket was opened again after a drop
        self.reconnects = 0
        #: the error that closed the subscription for good, if any
        self.error: MarketError | None = None
        self.backoff = backoff or self.DEFAULT_BACKOFF
        self._rng = rng or random.Random()
        self._connect_timeout = connect_timeout
        self._ping = (ping_interval, ping_timeout)
        self._event_callbacks: list[EventCallback] = [on_event] if on_event else []
        self._state_callbacks: list[StateCallback] = [on_state] if on_state else []
        self._buffer: collections.deque[Event] = collections.deque(maxlen=max_buffer)
        self._arrived = asyncio.Event()
        self._changed = asyncio.Event()
        self._subscribed: dict[str, asyncio.Event] = {}
        self._conn: WebSocketClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # ------------------------------------------------------------------ callers

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def on_event(self, callback: EventCallback) -> None:
        self._event_callbacks.append(callback)

    def on_state(self, callback: StateCallback) -> None:
        self._state_callbacks.append(callback)

    def subscribe(self, channel: str, since_seq: int | None = None) -> None:
        """Add a channel (now if open, else at the next connect); ``since_seq`` to resume."""
        if since_seq is not None:
            self.positions[channel] = since_seq
        if channel in self.channels:
            return
        self.channels[channel] = None
        if self._conn is not None and self.state is ConnectionState.OPEN:
            self._send_subscribe(self._conn, channel)

    def unsubscribe(self, channel: str) -> None:
        if self.channels.pop(channel, False) is None and self._conn is not None:
            self._write(self._conn, {"type": "unsubscribe", "channel": channel})
        self.positions.pop(channel, None)
        self._subscribed.pop(channel, None)

    async def get(self) -> Event:
        """The next event (wrap in ``asyncio.timeout``); ConnectionError once closed."""
        while not self._buffer:
            if self.state is ConnectionState.CLOSED:
                raise ConnectionError("the subscription is closed") from self.error
            self._arrived.clear()
            await self._arrived.wait()
        return self._buffer.popleft()

    def get_nowait(self) -> Event | None:
        return self._buffer.popleft() if self._buffer else None

    def __aiter__(self) -> AsyncSubscription:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self.get()
        except ConnectionError:
            raise StopAsyncIteration from None

    async def wait_state(self, state: ConnectionState) -> None:
        while self.state is not state:
            self._changed.clear()
            await self._changed.wait()

    async def wait_subscribed(self, channel: str) -> None:
        """Until the market confirmed ``channel`` on the current socket (its SUBSCRIBED frame)."""
        while True:
            flag = self._subscribed.setdefault(channel, asyncio.Event())
            await flag.wait()
            if self._subscribed.get(channel) is flag:
                return

    async def close(self) -> None:
        self._closing = True
        if self._conn is not None:
            self._conn.close(1000, "closed")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._set_state(ConnectionState.CLOSED)

    def drop(self) -> None:
        """Close the socket as a network failure would; the subscription reconnects and resumes."""
        if self._conn is not None:
            self._conn.close(4000, "dropped by the client")

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        delays = None
        try:
            while not self._closing:
                try:
                    conn = await self._connect()
                except Unauthorized as exc:
                    if not await self._sign_in_again():
                        self.error = exc
                        return
                    continue
                except (OSError, StreamClosedError, WebSocketError, TimeoutError, MarketError):
                    delays = delays or self.backoff.delays(self._rng)
                    await asyncio.sleep(next(delays))
                    continue
                if self.state is ConnectionState.RECONNECTING:
                    self.reconnects += 1
                delays = None
                self._conn = conn
                self._set_state(ConnectionState.OPEN)
                for channel in list(self.channels):
                    self._send_subscribe(conn, channel)
                await self._read(conn)
                conn.close()  # frees tornado's side of a socket the market closed
                self._conn = None
                self._subscribed.clear()
                if self._closing:
                    return
                self._set_state(ConnectionState.RECONNECTING)
                if conn.close_code == TOKEN_ENDED and not await self._sign_in_again():
                    self.error = Unauthorized(
                        401, conn.close_reason or "unauthorized", "the market ended the token"
                    )
                    return
                delays = self.backoff.delays(self._rng)
                await asyncio.sleep(next(delays))
        finally:
            self._conn = None
            self._set_state(ConnectionState.CLOSED)

    async def _connect(self) -> WebSocketClientConnection:
        token = self.client.token
        if not token:
            raise Unauthorized(401, "not_signed_in", "sign in before subscribing to events")
        request = HTTPRequest(
            self.client.events_url,
            headers={"Authorization": f"Bearer {token}"},
            connect_timeout=self._connect_timeout,
            request_timeout=self._connect_timeout,
        )
        connecting = asyncio.ensure_future(
            websocket_connect(request, ping_interval=self._ping[0], ping_timeout=self._ping[1])
        )
        try:
            # tornado's connect and request timeouts bound the attempt
            return await asyncio.shield(connecting)
        except asyncio.CancelledError:
            connecting.add_done_callback(_close_when_open)
            raise
        except HTTPClientError as exc:
            body: Any = None
            if exc.response is not None and exc.response.body:
                try:
                    body = json.loads(exc.response.body)
                except ValueError:
                    body = None
            raise error_from_response(exc.code, body, reason=exc.message or "") from exc

    async def _sign_in_again(self) -> bool:
        if self._closing or not self.client.can_sign_in:
            return False
        try:
            await self.client.sign_in()
        except MarketError as exc:
            log.warning("qubix events: signing in again failed: %s", exc)
            await asyncio.sleep(next(self.backoff.delays(self._rng)))
        return True

    async def _read(self, conn: WebSocketClientConnection) -> None:
        while True:
            message = await conn.read_message()
            if message is None:
                return
            if isinstance(message, bytes):
                continue
            try:
                frame = json.loads(message)
            except ValueError:
                log.warning("qubix events: a frame that is not JSON")
                continue
            if isinstance(frame, dict):
                self._on_frame(frame)

    def _on_frame(self, frame: dict[str, Any]) -> None:
        event = Event.from_frame(frame)
        if (
            event.channel is not None
            and event.seq is not None
            and event.seq > self.positions.get(event.channel, -1)
        ):
            self.positions[event.channel] = event.seq
        if event.type == "SUBSCRIBED" and event.channel is not None:
            self._subscribed.setdefault(event.channel, asyncio.Event()).set()
            return
        if event.error is not None and event.error.status in _FATAL_FRAME_STATUSES:
            self.channels.pop(event.channel or "", None)
        self._buffer.append(event)
        self._arrived.set()
        for callback in list(self._event_callbacks):
            try:
                callback(event)
            except Exception:  # a caller's callback must not end the subscription
                log.exception("qubix events: an event callback failed")

    def _send_subscribe(self, conn: WebSocketClientConnection, channel: str) -> None:
        message: dict[str, Any] = {"type": "subscribe", "channel": channel}
        if channel in self.positions:
            message["sinceSeq"] = self.positions[channel]
        self._write(conn, message)

    @staticmethod
    def _write(conn: WebSocketClientConnection, message: dict[str, Any]) -> None:
        try:
            sent = conn.write_message(json.dumps(message))
        except WebSocketError:  # closed meanwhile: the next connect subscribes again
            return
        sent.add_done_callback(_consume)

    def _set_state(self, state: ConnectionState) -> None:
        if state is self.state:
            return
        self.state = state
        self._changed.set()
        self._arrived.set()  # a reader waiting on a closed subscription wakes up
        for callback in list(self._state_callbacks):
            try:
                callback(state)
            except Exception:  # a caller's callback must not end the subscription
                log.exception("qubix events: a state callback failed")
