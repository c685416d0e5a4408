"""The real-time event vocabulary of DESIGN.md §6: event types, channel names, and the merge rule.

Pure domain, no I/O. The WebSocket hub (``server_extension.events``) builds on it.

Channels a client can name:

=====================  ==========================================================================
``marketplace``         public: provider registrations, status changes, MARKETPLACE_UPDATE
``provider:{workerId}`` private to the provider's owner: GPU metrics, status, jobs on it
``job:{jobId}``         private to the job's consumer (and its provider): progress, completion
``wallet``              the connection's own user: BALANCE_CHANGED. A client never names a user;
                        the hub maps ``wallet`` to the user of the connection.
=====================  ==========================================================================

An id in ``provider:…``/``job:…`` is 1–128 characters of ``A–Z a–z 0–9 . _ - @``; anything else
is an :class:`InvalidChannel` (422) before any lookup is done.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import QubixError


class EventType(enum.StrEnum):
    """Server → client event types: the seed's six, the job/wallet ones, and the hub's own two."""

    PROVIDER_REGISTERED = "PROVIDER_REGISTERED"
    PROVIDER_STATUS_CHANGED = "PROVIDER_STATUS_CHANGED"
    GPU_METRICS_UPDATE = "GPU_METRICS_UPDATE"
    JOB_PROGRESS = "JOB_PROGRESS"
    JOB_COMPLETED = "JOB_COMPLETED"
    MARKETPLACE_UPDATE = "MARKETPLACE_UPDATE"
    JOB_ASSIGNED = "JOB_ASSIGNED"
    JOB_REASSIGNED = "JOB_REASSIGNED"
    JOB_FAILED = "JOB_FAILED"
    BALANCE_CHANGED = "BALANCE_CHANGED"
    #: Sent by the hub only, never published: the client asked to resume from a ``seq`` the hub
    #: no longer holds (or never issued), so it must refetch the channel's state over REST.
    RESYNC = "RESYNC"
    #: Sent by the hub only: ends every successful subscribe, after any replayed frames and
    #: before any live one. Its ``seq`` is the hub's head then: the client's position on the
    #: channel (see ``server_extension.events``).
    SUBSCRIBED = "SUBSCRIBED"


#: Types only the hub sends; publishing one is an InvalidEvent.
HUB_TYPES = frozenset({EventType.RESYNC, EventType.SUBSCRIBED})
#: Types the hub may merge (MARKETPLACE_UPDATE only); every other type is delivered one by one.
COALESCED_TYPES = frozenset({EventType.MARKETPLACE_UPDATE})
#: Types a caller may publish (everything but the hub's own RESYNC).
PUBLISHABLE_TYPES = frozenset(EventType) - HUB_TYPES


class ChannelKind(enum.StrEnum):
    MARKETPLACE = "marketplace"
    PROVIDER = "provider"
    JOB = "job"
    WALLET = "wallet"


class InvalidChannel(QubixError):
    """A channel name that is not one of the forms above."""

    code = "invalid_channel"
    status = 422


class ChannelForbidden(QubixError):
    """The connection's user may not subscribe to this channel (not theirs, or not signed in)."""

    code = "channel_forbidden"
    status = 403


class TooManyChannels(QubixError):
    """A connection tried to hold more subscriptions than the hub allows."""

    code = "too_many_channels"
    status = 429


class InvalidEvent(QubixError):
    """A publish the hub refuses: unknown type, RESYNC, a wallet event without a user, …"""

    code = "invalid_event"
    status = 422


MAX_ID_LENGTH = 128
_ID = re.compile(rf"[A-Za-z0-9._@-]{{1,{MAX_ID_LENGTH}}}")
_WITH_ID = frozenset({ChannelKind.PROVIDER, ChannelKind.JOB})


@dataclass(frozen=True, slots=True)
class Channel:
    """A parsed channel name: ``kind`` and, for ``provider``/``job``, the id."""

    kind: ChannelKind
    id: str | None = None

    def __post_init__(self) -> None:
        if (self.id is not None) != (self.kind in _WITH_ID):
            needs = "needs an" if self.kind in _WITH_ID else "takes no"
            raise InvalidChannel(f"a {self.kind.value} channel {needs} id")
        if self.id is not None and not _ID.fullmatch(self.id):
            raise InvalidChannel(
                f"invalid {self.kind.value} id in channel name", kind=self.kind.value
            )

    @property
    def name(self) -> str:
        return self.kind.value if self.id is None else f"{self.kind.value}:{self.id}"

    @property
    def private(self) -> bool:
        """Needs an ownership check (``provider:…``, ``job:…``); ``wallet`` is always one's own."""
        return self.kind in _WITH_ID

    def __str__(self) -> str:
        return self.name


MARKETPLACE = Channel(ChannelKind.MARKETPLACE)
WALLET = Channel(ChannelKind.WALLET)


def provider_channel(worker_id: str) -> Channel:
    return Channel(ChannelKind.PROVIDER, worker_id)


def job_channel(job_id: str) -> Channel:
    return Channel(ChannelKind.JOB, job_id)


def parse_channel(name: object) -> Channel:
    """``"provider:w-1"`` → ``Channel(PROVIDER, "w-1")``; anything malformed → InvalidChannel.

    A :class:`Channel` is returned as it is. The client's own text never reaches an error
    message (it could be anything); the error says which rule it broke.
    """
    if isinstance(name, Channel):
        return name
    if not isinstance(name, str):
        raise InvalidChannel("a channel name must be a string")
    if len(name) > MAX_ID_LENGTH + 16:
        raise InvalidChannel("channel name too long", max_length=MAX_ID_LENGTH + 16)
    head, sep, rest = name.partition(":")
    try:
        kind = ChannelKind(head)
    except ValueError:
        raise InvalidChannel(
            "unknown channel; use marketplace, provider:{workerId}, job:{jobId} or wallet",
            allowed=[k.value for k in ChannelKind],
        ) from None
    if kind in _WITH_ID:
        if not sep:
            raise InvalidChannel(f"the {kind.value} channel needs an id: {kind.value}:{{id}}")
        return Channel(kind, rest)
    if sep:
        raise InvalidChannel(f"the {kind.value} channel takes no id")
    return Channel(kind)


def event_type(value: object) -> EventType:
    """A publishable :class:`EventType` from an enum member or its name, else InvalidEvent."""
    try:
        kind = EventType(value)  # type: ignore[arg-type]
    except ValueError:
        raise InvalidEvent("unknown event type", allowed=sorted(PUBLISHABLE_TYPES)) from None
    if kind not in PUBLISHABLE_TYPES:
        raise InvalidEvent(f"{kind.value} is sent by the hub only")
    return kind


# ------------------------------------------------------------------ MARKETPLACE_UPDATE merging

#: Key of a provider entry in a MARKETPLACE_UPDATE (the seed's ``workerId``).
PROVIDER_KEY = "workerId"


def check_marketplace_update(data: Mapping[str, Any]) -> None:
    """Raise InvalidEvent unless ``data`` has the shape :func:`merge_marketplace_updates` needs.

    ``{"providers": [{"workerId": str, …}, …], "removed": [workerId, …], …other keys}``; both
    lists are optional.
    """
    if not isinstance(data, Mapping):
        raise InvalidEvent("MARKETPLACE_UPDATE data must be an object")
    providers = data.get("providers", [])
    if not isinstance(providers, list) or not all(
        isinstance(p, Mapping) and isinstance(p.get(PROVIDER_KEY), str) for p in providers
    ):
        raise InvalidEvent(f"MARKETPLACE_UPDATE providers must be objects with a {PROVIDER_KEY}")
    removed = data.get("removed", [])
    if not isinstance(removed, list) or not all(isinstance(r, str) for r in removed):
        raise InvalidEvent("MARKETPLACE_UPDATE removed must be a list of workerIds")


class MarketplaceMerge:
    """Incremental form of :func:`merge_marketplace_updates`: ``add`` each payload, oldest first."""

    __slots__ = ("_other", "_providers", "_removed")

    def __init__(self) -> None:
        self._providers: dict[str, Any] = {}
        self._removed: dict[str, None] = {}
        self._other: dict[str, Any] = {}

    def add(self, update: Mapping[str, Any]) -> None:
        for key, value in update.items():
            if key == "providers":
                for entry in value:
                    worker_id = entry[PROVIDER_KEY]
                    self._removed.pop(worker_id, None)
                    self._providers[worker_id] = entry
            elif key == "removed":
                for worker_id in value:
                    self._providers.pop(worker_id, None)
                    self._removed[worker_id] = None
            else:
                self._other[key] = value

    def result(self) -> dict[str, Any]:
        merged = dict(self._other)
        if self._providers:
            merged["providers"] = list(self._providers.values())
        if self._removed:
            merged["removed"] = list(self._removed)
        return merged


def merge_marketplace_updates(updates: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge MARKETPLACE_UPDATE payloads, oldest first, into one that means the same at the end.

    The merge rule:

    * ``providers``: one entry per ``workerId``; a later entry *replaces* an earlier one whole
      (latest state wins, fields are not merged), keeping the position of its first appearance.
    * ``removed``: a provider removed after its last update is listed in ``removed`` and not in
      ``providers``; one updated after its removal is in ``providers`` and not in ``removed``.
    * any other key: the latest value wins.

    ``providers``/``removed`` appear in the result only when not empty. Applying the merged
    payload to a client's state gives what applying each payload in turn gives.
    """
    merge = MarketplaceMerge()
    for update in updates:
        merge.add(update)
    return merge.result()
