"""Endpoints for the market's operator, behind the Jupyter server's own authentication: the
Prometheus scrape target."""

from __future__ import annotations

from pydantic import RootModel

from .endpoints import Call, TextReply
from .metrics import CONTENT_TYPE
from .route import Route


class MetricsText(RootModel[str]):
    """Prometheus' text exposition format (version 1.0.0)."""


async def metrics(call: Call) -> TextReply:
    return TextReply(await call.services.metrics.exposition(), CONTENT_TYPE)


ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "metrics",
        metrics,
        "Prometheus metrics: requests and latency by route, WebSocket connections, providers, "
        "jobs by status, ledger totals (Jupyter's token, not a market token)",
        MetricsText,
        auth="operator",
        tag="meta",
        media_type="text/plain",
    ),
)
