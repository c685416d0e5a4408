"""What every panel shares: a market client, refreshes that run on the client's loop when an
event arrives, and a table drawn as HTML."""

from __future__ import annotations

import asyncio
import html
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..client import MarketClient, MarketError


def client_or_default(client: MarketClient | None) -> MarketClient:
    if client is not None:
        return client
    from ..api import default_client

    return default_client()


class Refresher:
    """Runs ``refresh`` (a coroutine on the client's loop) once per burst of events.

    Event callbacks run on the client's loop thread, where a blocking call would deadlock; the
    refresh is scheduled there instead, and events arriving while one runs fold into one more.
    """

    def __init__(
        self,
        refresh: Callable[[], Awaitable[None]],
        on_error: Callable[[BaseException], None],
    ) -> None:
        self._refresh = refresh
        self._on_error = on_error
        self._running = False
        self._again = False

    def trigger(self, *_: Any) -> None:
        if self._running:
            self._again = True
            return
        self._running = True
        asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            while True:
                self._again = False
                try:
                    await self._refresh()
                except (MarketError, OSError) as exc:
                    self._on_error(exc)
                if not self._again:
                    return
        finally:
            self._running = False


def html_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str) -> str:
    if not rows:
        return f"<p><i>{html.escape(empty)}</i></p>"
    head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def error_html(message: str, next_step: str) -> str:
    return (
        f"<div style='color:#b00020'><b>{html.escape(message)}</b><br>"
        f"{html.escape(next_step)}</div>"
    )


def close_subscription(client: MarketClient, subscription: Any) -> None:
    """Close a live subscription from any thread, its client's loop thread included (where the
    blocking close would wait on the very loop that must run it)."""
    if threading.current_thread() is client._loop.thread:
        asyncio.get_running_loop().create_task(subscription.aio.close())
    else:
        subscription.close()
