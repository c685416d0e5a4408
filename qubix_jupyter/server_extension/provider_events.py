"""What the market broadcasts when a provider changes: one place, so that a registration, an
owner's edit, a heartbeat and the liveness monitor all tell clients the same way.

* registered: PROVIDER_REGISTERED on ``marketplace`` (data: the offer), and a MARKETPLACE_UPDATE;
* status changed (online / busy / offline): PROVIDER_STATUS_CHANGED on ``marketplace`` and on
  ``provider:{workerId}`` (``workerId``, ``status``, ``previousStatus``, ``isOnline``,
  ``isAvailable``, ``lastHeartbeat``), and a MARKETPLACE_UPDATE;
* offer changed: a MARKETPLACE_UPDATE ``{"providers": [offer]}``; unlisted: ``{"removed":
  [workerId]}``.

An unlisted provider's changes go to its own channel only: the marketplace does not show it.
Offers are the JSON of ``OfferOut`` (MARKETPLACE_UPDATE entries replace each other whole).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..market.events import MARKETPLACE, Channel, EventType, InvalidChannel, provider_channel
from ..market.liveness import ProviderStatus
from .events import EventHub

Offer = Mapping[str, Any]


def own_channel(worker_id: str) -> Channel | None:
    """``provider:{workerId}``, or None for a workerId no channel name can hold (a space, …):
    such a provider has only the marketplace's broadcasts."""
    try:
        return provider_channel(worker_id)
    except InvalidChannel:
        return None


def registered(events: EventHub, offer: Offer) -> None:
    events.publish(MARKETPLACE, EventType.PROVIDER_REGISTERED, dict(offer))
    offers_changed(events, [offer])


def offers_changed(events: EventHub, offers: Iterable[Offer]) -> None:
    entries = [dict(offer) for offer in offers]
    if entries:
        events.publish(MARKETPLACE, EventType.MARKETPLACE_UPDATE, {"providers": entries})


def unlisted(events: EventHub, worker_id: str) -> None:
    events.publish(MARKETPLACE, EventType.MARKETPLACE_UPDATE, {"removed": [worker_id]})


def status_changed(events: EventHub, changes: Iterable[tuple[Offer, ProviderStatus, bool]]) -> None:
    """``changes``: (the offer after the change, the status before it, whether it is listed)."""
    listed_offers = []
    for offer, previous, listed in changes:
        data = {
            "workerId": offer["workerId"],
            "status": offer["status"],
            "previousStatus": previous.value,
            "isOnline": offer["isOnline"],
            "isAvailable": offer["isAvailable"],
            "lastHeartbeat": offer["lastHeartbeat"],
        }
        channel = own_channel(offer["workerId"])
        if channel is not None:
            events.publish(channel, EventType.PROVIDER_STATUS_CHANGED, data)
        if listed:
            events.publish(MARKETPLACE, EventType.PROVIDER_STATUS_CHANGED, data)
            listed_offers.append(offer)
    offers_changed(events, listed_offers)
