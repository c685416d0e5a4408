"""The market's client: REST and the events WebSocket, never the market's own code.

``MarketClient`` blocks (scripts, notebook cells); ``AsyncMarketClient`` awaits. Both sign in
with the wallet's seed on this machine (the seed never leaves it) or take a bearer token.
"""

from __future__ import annotations

from .aio import DEFAULT_URL, AsyncMarketClient, market_url, new_idempotency_key
from .backoff import Backoff
from .errors import (
    BadRequest,
    Conflict,
    Forbidden,
    InsufficientFunds,
    JobFailed,
    MarketError,
    MarketUnreachable,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ResultTimeout,
    ServerError,
    ServiceUnavailable,
    Unauthorized,
    ValidationFailed,
)
from .events import AsyncSubscription, ConnectionState, Event
from .sync import MarketClient, Subscription

__all__ = [
    "DEFAULT_URL",
    "AsyncMarketClient",
    "AsyncSubscription",
    "Backoff",
    "BadRequest",
    "Conflict",
    "ConnectionState",
    "Event",
    "Forbidden",
    "InsufficientFunds",
    "JobFailed",
    "MarketClient",
    "MarketError",
    "MarketUnreachable",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "ResultTimeout",
    "ServerError",
    "ServiceUnavailable",
    "Subscription",
    "Unauthorized",
    "ValidationFailed",
    "market_url",
    "new_idempotency_key",
]
