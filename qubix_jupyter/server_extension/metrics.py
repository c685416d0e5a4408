"""Prometheus metrics of the market, in a registry of the extension's own.

HTTP requests are counted as they finish (``RouteHandler.on_finish``); the market's figures —
providers, jobs, ledger totals — are read at scrape time with a few aggregate queries over cached
balances, never a full audit. One registry per extension, not prometheus_client's global one, so
two servers in one process (tests) never share or double-register series.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..db.models import Account, Job, Provider
from ..market.states import AccountKind, JobStatus
from .events import EventHub

CONTENT_TYPE = CONTENT_TYPE_LATEST

#: Request latency buckets in seconds: API calls are milliseconds, money-moving ones a little more.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class MarketMetrics:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        events: EventHub,
        *,
        settlement_backend: str,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._events = events
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "qubix_http_requests",
            "Market API requests answered, by route (its path pattern), method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "qubix_http_request_duration_seconds",
            "Time from a market API request's arrival to its answer, by route and method",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.websockets = Gauge(
            "qubix_websocket_connections", "Open events WebSocket connections", registry=registry
        )
        self.providers = Gauge(
            "qubix_providers",
            "Providers by state: listed (offered in the marketplace), online, available "
            "(listed, online and not busy)",
            ["state"],
            registry=registry,
        )
        self.jobs = Gauge("qubix_jobs", "Jobs by status", ["status"], registry=registry)
        self.ledger_qu = Gauge(
            "qubix_ledger_balance_qu",
            "Σ cached balances of the ledger's accounts by kind, integer QU (ESCROW: QU held "
            "for jobs; EXTERNAL: minus the net QU deposited)",
            ["kind"],
            registry=registry,
        )
        self.ledger_accounts = Gauge(
            "qubix_ledger_accounts", "Ledger accounts by kind", ["kind"], registry=registry
        )
        self.ledger_balanced = Gauge(
            "qubix_ledger_balanced",
            "1 when the internal accounts' cached balances sum to the net QU deposited (no QU "
            "created or lost, from cached balances: not a full audit), else 0",
            registry=registry,
        )
        self.settlement = Gauge(
            "qubix_settlement_backend_info",
            "The settlement backend this market uses (always 1)",
            ["backend"],
            registry=registry,
        )
        self.settlement.labels(backend=settlement_backend).set(1)
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        # The labelled children, looked up once per (route, method, status): labels() costs
        # more than the observation itself, on every request.
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(route=route, method=method, status=str(status)),
                self.latency.labels(route=route, method=method),
            )
        children[0].inc()
        children[1].observe(seconds)

    async def _read_market(self) -> None:
        async with self._sessionmaker() as session:
            listed, online, available = (
                await session.execute(
                    select(
                        func.count().filter(Provider.is_listed),
                        func.count().filter(Provider.is_online),
                        func.count().filter(
                            Provider.is_listed, Provider.is_online, Provider.is_available
                        ),
                    )
                )
            ).one()
            jobs = dict(
                (await session.execute(select(Job.status, func.count()).group_by(Job.status))).all()
            )
            accounts = {
                kind: (int(total or 0), int(count))
                for kind, total, count in (
                    await session.execute(
                        select(Account.kind, func.sum(Account.balance), func.count()).group_by(
                            Account.kind
                        )
                    )
                ).all()
            }
        self.providers.labels(state="listed").set(listed)
        self.providers.labels(state="online").set(online)
        self.providers.labels(state="available").set(available)
        for status in JobStatus:
            self.jobs.labels(status=status.value).set(jobs.get(status, 0))
        internal = 0
        for kind in AccountKind:
            total, count = accounts.get(kind, (0, 0))
            self.ledger_qu.labels(kind=kind.value).set(total)
            self.ledger_accounts.labels(kind=kind.value).set(count)
            if kind is not AccountKind.EXTERNAL:
                internal += total
        external = accounts.get(AccountKind.EXTERNAL, (0, 0))[0]
        self.ledger_balanced.set(1 if internal == -external else 0)

    async def exposition(self) -> str:
        """The text exposition of every metric, the market's figures read now."""
        self.websockets.set(self._events.connections)
        await self._read_market()
        return generate_latest(self.registry).decode()


__all__ = ["CONTENT_TYPE", "MarketMetrics"]
