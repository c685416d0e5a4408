"""WebSocket ``{base_url}qubix/api/events``: the :class:`~.events.EventHub` over tornado.

Connecting (checked before the upgrade, answered with the API's JSON error body):

* the ``Origin`` must be the server's own or one of ``QubixExtension.allowed_origins`` (``*``:
  any), else **403** ``forbidden``; a client that sends no ``Origin`` (not a browser) passes;
* the market's bearer token, as ``Authorization: Bearer <token>`` or, for browsers (which cannot
  set headers on a WebSocket), as the query parameter ``?token=<token>`` (Jupyter scrubs
  ``token`` from its request logs); none, unknown, expired or revoked: **401** ``unauthorized``;
* the per-token rate limit counts the connect (**429**).

Client → server messages (JSON text frames):

* ``{"type": "subscribe", "channel": c, "sinceSeq": n?}``: ``marketplace``, ``wallet`` (always
  one's own), ``job:{jobId}`` (its consumer, or the owner of its assigned provider),
  ``provider:{workerId}`` (its owner). Answered by the replay (with ``sinceSeq``) and one
  ``SUBSCRIBED`` frame, then live frames ``{"type", "channel", "seq", "ts", "data"}``.
* ``{"type": "unsubscribe", "channel": c}``: no answer; the channel's frames stop.

A message the server cannot act on is answered with one error frame and the connection stays
open: ``{"type": "error", "status": 403, "channel": c, "error": {"code", "message",
"details"}}`` (``channel`` only when the message named one). Codes: ``invalid_json`` (400: not
JSON text), ``validation_failed`` (422: not an object, unknown ``type``, a field of the wrong
type), ``invalid_channel`` (422), ``invalid_event`` (422: bad ``sinceSeq``),
``channel_forbidden`` (403), ``too_many_channels`` (429), ``rate_limited`` (429: each
subscribe counts against the token's ``rate_limit_per_minute``), ``service_unavailable`` (503:
the ownership lookup failed).

Each subscribe checks the token again: once it is revoked the subscribe gets an ``unauthorized``
(401) error frame and the connection closes with 4401 ``unauthorized``. When the token expires
the connection closes with 4401 ``token_expired``; the client signs in again and resumes.

The server pings every ``HeartbeatPolicy.ping_interval`` seconds and closes a connection whose
pong does not come within ``ping_timeout``. The hub closes a connection with 1013
``slow_consumer`` when its queue overflows and, at server stop, with 1001 ``going_away``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import logging
import struct
import weakref
from collections.abc import Awaitable
from typing import Any

from jupyter_server.auth.decorator import allow_unauthenticated
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased
from tornado.iostream import IOStream, StreamClosedError
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from ..db.models import Job, Provider
from ..market.errors import QubixError
from ..market.events import Channel, ChannelKind, parse_channel
from .errors import Forbidden, InvalidJSON, ServiceUnavailable, Unauthorized, ValidationFailed
from .events import (
    SEND_FAILED,
    CloseReason,
    EventHub,
    HeartbeatPolicy,
    Subscription,
    SubscriptionClosed,
)
from .handlers import SERVICES
from .services import Services

#: The tornado settings key of the process's one :class:`EventHub`.
EVENTS = "qubix_events"
#: The route, relative to ``{base_url}qubix/api/``.
EVENTS_PATH = "events"

MESSAGE_TYPES = ("subscribe", "unsubscribe")

log = logging.getLogger(__name__)

#: Close code (application range) when the connection's token expires or is revoked.
TOKEN_ENDED = CloseReason(4401, "unauthorized")


class ChannelOwnership:
    """The hub's ``authorize``: may ``user_id`` subscribe to this ``job:``/``provider:`` channel?

    Read-only lookups: a provider channel is its owner's; a job channel is its consumer's and
    the owner's of the provider it is assigned to.
    """

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessionmaker = sessionmaker

    async def __call__(self, user_id: str, channel: Channel) -> bool:
        async with self._sessionmaker() as session:
            if channel.kind is ChannelKind.PROVIDER:
                owner = await session.scalar(
                    select(Provider.user_id).where(Provider.worker_id == channel.id)
                )
                return owner is not None and owner == user_id
            if channel.kind is ChannelKind.JOB:
                provider = aliased(Provider)
                row = (
                    await session.execute(
                        select(Job.user_id, provider.user_id)
                        .outerjoin(provider, Job.provider_id == provider.id)
                        .where(Job.id == channel.id)
                    )
                ).first()
                return row is not None and user_id in (row[0], row[1])
        return False


def origin_allowed(origin: str | None, host: str, allowed: tuple[str, ...]) -> bool:
    """Same rule as the REST handlers: no Origin, the server's own, or a configured one."""
    if origin is None:
        return True
    if origin.split("://", 1)[-1] == host:
        return True
    return "*" in allowed or origin in allowed


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


@functools.lru_cache(maxsize=256)
def wire_frame(text: str) -> bytes:
    """The WebSocket frame a server sends for one text message: final, unmasked, uncompressed
    (RFC 6455 §5.2). The same bytes for every connection, so a broadcast frames its text once;
    the hub hands every subscriber the same string, whose hash Python keeps."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x81, size)
    elif size <= 0xFFFF:
        head = struct.pack("!BBH", 0x81, 126, size)
    else:
        head = struct.pack("!BBQ", 0x81, 127, size)
    return head + payload


class FrameBatch:
    """The connections with frames held during one pass of the event loop, written at its end.

    A registration publishes a PROVIDER_REGISTERED and a MARKETPLACE_UPDATE to every connection
    back to back; written apart they are two system calls per connection, and on loopback (or
    any busy server) each send costs far more than the Python around it. Held until the pass
    ends, they are one ``send`` per connection. One batch per event loop.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._handlers: list[EventsHandler] = []

    @classmethod
    def of_running_loop(cls) -> FrameBatch:
        loop = asyncio.get_running_loop()
        batch = _BATCHES.get(loop)
        if batch is None:
            batch = _BATCHES[loop] = cls(loop)
        return batch

    def add(self, handler: EventsHandler) -> None:
        if not self._handlers:
            self._loop.call_soon(self._write)
        self._handlers.append(handler)

    def _write(self) -> None:
        handlers, self._handlers = self._handlers, []
        for handler in handlers:
            try:
                handler._write_held()
            except Exception:
                log.exception("writing held event frames failed; closing that connection")
                handler.close(SEND_FAILED.code, SEND_FAILED.reason)


_BATCHES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, FrameBatch] = (
    weakref.WeakKeyDictionary()
)


def _written(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a stream closed before the write is not an error here


class EventsHandler(WebSocketHandler):
    """One WebSocket client of the event hub.

    A plain tornado handler, not a Jupyter one: a client authenticates with its market token
    (header or ``?token=``), never Jupyter's login, so Jupyter's per-request identity work has
    nothing to find, and every open connection would carry its handler state. The origin rule,
    the token check and the JSON refusals are the market's own, below.
    """

    sub: Subscription | None = None
    user_id: str | None = None
    _authorization: str | None = None
    _token_id: str = ""
    _expires_at: dt.datetime | None = None
    _expiry: asyncio.TimerHandle | None = None
    #: frames written this pass of the event loop, not yet sent (see :meth:`_send_frame`)
    _held: list[bytes] | None = None

    def initialize(self, heartbeat: HeartbeatPolicy | None = None) -> None:  # type: ignore[override]
        self.heartbeat = heartbeat or HeartbeatPolicy()

    @property
    def log(self) -> Any:
        return self.settings["serverapp"].log

    @property
    def services(self) -> Services:
        return self.settings[SERVICES]  # type: ignore[no-any-return]

    @property
    def hub(self) -> EventHub:
        return self.settings[EVENTS]  # type: ignore[no-any-return]

    # ----------------------------------------------------------- tornado's knobs

    @property
    def ping_interval(self) -> float:
        return self.heartbeat.ping_interval

    @property
    def ping_timeout(self) -> float:
        return self.heartbeat.ping_timeout

    @property
    def max_message_size(self) -> int:
        return self.heartbeat.max_message_size

    def check_origin(self, origin: str = "") -> bool:
        # checked in get(), before the upgrade, with the API's JSON 403
        return True

    def check_xsrf_cookie(self) -> None:
        # bearer token, never a cookie: nothing to forge
        return None

    # ----------------------------------------------------------- connect

    def _refuse(self, error: QubixError) -> None:
        self.set_status(error.status)
        self.set_header("Content-Type", "application/json")
        self.log.info("qubix events %s: %s", self.request.path, error.code)
        self.finish(json.dumps(error.to_body()))

    @allow_unauthenticated
    async def get(self, *args: Any, **kwargs: Any) -> None:
        services = self.services
        if not origin_allowed(
            self.request.headers.get("Origin"), self.request.host, services.allowed_origins
        ):
            self._refuse(
                Forbidden("this origin may not open the event stream (see allowed_origins)")
            )
            return
        authorization = self.request.headers.get("Authorization")
        if not authorization:
            token = self.get_query_argument("token", None)
            authorization = f"Bearer {token}" if token else None
        try:
            owner = await services.auth.authenticate(authorization)
            services.rate_limiter.check(f"token:{owner.token_id}")
        except QubixError as error:
            self._refuse(error)
            return
        self.user_id = owner.user.id
        self._authorization = authorization
        self._token_id = owner.token_id
        self._expires_at = owner.expires_at
        await super().get(*args, **kwargs)

    def open(self, *args: Any, **kwargs: Any) -> None:
        try:
            self.sub = self.hub.connect(
                self.user_id, send=self._send_frame, on_close=self._closed_by_hub
            )
        except SubscriptionClosed as exc:  # the hub is shutting down
            self.close(exc.reason.code, exc.reason.reason)
            return
        if self._expires_at is not None:
            expires_at = self._expires_at
            if expires_at.tzinfo is None:  # SQLite hands back naive UTC
                expires_at = expires_at.replace(tzinfo=dt.UTC)
            delay = max(0.0, (expires_at - dt.datetime.now(dt.UTC)).total_seconds())
            self._expiry = asyncio.get_running_loop().call_later(delay, self._token_ended)

    def _send_frame(self, frame: str) -> Awaitable[None] | None:
        """Write one event frame: its wire bytes, framed once per broadcast (:func:`wire_frame`).

        ``write_message`` would frame the same text again for each connection and wrap each
        write in a task of its own. The connection never compresses (no compression options),
        so every connection's frame of a text is the same bytes.

        A frame to a connection with nothing being written is held until the end of this pass
        of the event loop (:class:`FrameBatch`) and goes out with the others written to it
        meanwhile in one ``send``; None then: the hub need not wait. While an earlier write is
        still in flight (the client reads slower than it is sent to) the frame goes behind it
        and the hub waits for the returned future before the next one.
        """
        connection = self.ws_connection
        if connection is None or connection.is_closing():
            raise WebSocketClosedError()
        data = wire_frame(frame)
        held = self._held
        if held is not None:
            held.append(data)
            return None
        stream = connection.stream  # type: ignore[attr-defined]
        if stream.writing():
            return stream.write(data)  # type: ignore[no-any-return]
        self._held = [data]
        FrameBatch.of_running_loop().add(self)
        return None

    def _write_held(self) -> None:
        """Send the frames held this pass (see :meth:`_send_frame`), in order, in one write."""
        held, self._held = self._held, None
        connection = self.ws_connection
        if not held or connection is None or connection.is_closing():
            return  # closing: on_close ends the subscription, the client resumes by seq
        stream = connection.stream  # type: ignore[attr-defined]
        data = held[0] if len(held) == 1 else b"".join(held)
        if type(stream) is IOStream and not stream.writing():
            # what IOStream.write would do first, without its buffer, future and callbacks
            try:
                sent = stream.socket.send(data)
            except OSError:  # full (EAGAIN) or broken: IOStream retries, or sees and closes
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        try:
            written = stream.write(data)
        except StreamClosedError:
            return  # closed meanwhile: on_close runs
        # the rest goes when the socket has room; a close before then is on_close's to handle
        written.add_done_callback(_written)

    def _token_ended(self) -> None:
        self.close(TOKEN_ENDED.code, "token_expired")

    def _closed_by_hub(self, reason: CloseReason) -> None:
        self.close(reason.code, reason.reason)

    def on_close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        if self.sub is not None:
            self.sub.close()

    # ----------------------------------------------------------- messages

    async def on_message(self, message: str | bytes) -> None:
        channel: object = None
        try:
            data = self._parse(message)
            channel = data.get("channel")
            await self._act(data)
        except SubscriptionClosed:
            return
        except Unauthorized as error:  # the token was revoked meanwhile
            self._error(error, channel)
            self.close(TOKEN_ENDED.code, TOKEN_ENDED.reason)
        except QubixError as error:
            self._error(error, channel)
        except SQLAlchemyError:
            self.log.exception("qubix events: channel ownership lookup failed")
            self._error(
                ServiceUnavailable("the market cannot check channel ownership now; retry"),
                channel,
            )

    def _parse(self, message: str | bytes) -> dict[str, Any]:
        if isinstance(message, bytes):
            raise InvalidJSON("send JSON text frames, not binary ones")
        try:
            data = json.loads(message, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            raise InvalidJSON("message is not valid JSON") from None
        if not isinstance(data, dict):
            raise ValidationFailed("a message must be a JSON object")
        return data

    async def _act(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        sub = self.sub
        if sub is None:
            raise SubscriptionClosed(CloseReason(1001, "going_away"))
        if kind == "subscribe":
            # each subscribe counts against the token's rate limit and sees a revocation
            services = self.services
            await services.auth.authenticate(self._authorization)
            services.rate_limiter.check(f"token:{self._token_id}")
            await sub.subscribe(parse_channel(data.get("channel")), since_seq=data.get("sinceSeq"))
        elif kind == "unsubscribe":
            sub.unsubscribe(parse_channel(data.get("channel")))
        else:
            raise ValidationFailed(
                "unknown message type: use subscribe or unsubscribe", allowed=list(MESSAGE_TYPES)
            )

    def _error(self, error: QubixError, channel: object) -> None:
        frame: dict[str, Any] = {"type": "error", "status": error.status}
        if isinstance(channel, str) and len(channel) <= 160:
            frame["channel"] = channel
        frame.update(error.to_body())
        try:
            self.write_message(json.dumps(frame))
        except Exception:  # the socket closed meanwhile
            self.log.debug("qubix events: could not send an error frame", exc_info=True)


def events_operation() -> dict[str, Any]:
    """The OpenAPI description of the WebSocket (documented as the GET that upgrades)."""

    def error(description: str) -> dict[str, Any]:
        return {
            "description": description,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
            },
        }

    return {
        "get": {
            "operationId": "events",
            "summary": "WebSocket of real-time events (upgrade this GET to a WebSocket)",
            "description": (__doc__ or "").split("\n", 2)[-1],
            "tags": ["events"],
            "security": [{"bearerAuth": []}, {"tokenQuery": []}],
            "parameters": [
                {
                    "name": "token",
                    "in": "query",
                    "required": False,
                    "description": "the market token, for browsers (instead of Authorization)",
                    "schema": {"type": "string"},
                }
            ],
            "responses": {
                "101": {"description": "Switching Protocols: the event stream"},
                "401": error("No, unknown, expired or revoked bearer token"),
                "403": error("An origin not in allowed_origins"),
                "429": error("Rate limited"),
            },
            "x-websocket": {
                "clientMessages": {
                    "subscribe": {"type": "subscribe", "channel": "string", "sinceSeq": "int?"},
                    "unsubscribe": {"type": "unsubscribe", "channel": "string"},
                },
                "channels": ["marketplace", "wallet", "job:{jobId}", "provider:{workerId}"],
                "serverFrame": {
                    "type": "str",
                    "channel": "str",
                    "seq": "int",
                    "ts": "int (ms)",
                    "data": "object",
                },
                "errorFrame": {
                    "type": "error",
                    "status": "int",
                    "channel": "str?",
                    "error": {"code": "str", "message": "str", "details": "object"},
                },
            },
        }
    }


def add_events_to(document: dict[str, Any]) -> dict[str, Any]:
    """Document the WebSocket in an OpenAPI document made by ``openapi_document``."""
    document["paths"]["/" + EVENTS_PATH] = events_operation()
    document["components"]["securitySchemes"]["tokenQuery"] = {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": "the market token as ?token= (the events WebSocket only)",
    }
    return document
