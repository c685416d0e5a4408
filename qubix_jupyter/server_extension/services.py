"""The services the handlers call, built once when the extension starts (see ``app``)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Literal

from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ..db.idempotency_store import IdempotencyStore
from ..db.ledger import Ledger
from ..db.models import Account, Job, Provider
from ..market.states import OPEN_JOB_STATES, AccountKind
from .auth import AuthService, RateLimiter
from .events import EventHub
from .metrics import MarketMetrics
from .scheduler_directory import SchedulerDirectory
from .settlement import SettlementService

if TYPE_CHECKING:  # liveness and jobs build on the endpoints, which import this module
    from .agent import AgentService
    from .jobs import JobService
    from .liveness import HeartbeatBuffer

Role = Literal["market", "agent", "both"]


class WalletService:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], ledger: Ledger) -> None:
        self._sessionmaker = sessionmaker
        self._ledger = ledger

    async def balance(self, user_id: str) -> int:
        return await self._ledger.wallet_balance(user_id)

    async def pending_earnings(self, user_id: str) -> int:
        """QU in escrow for active jobs on the user's providers."""
        async with self._sessionmaker() as session:
            total = (
                await session.execute(
                    select(func.coalesce(func.sum(Account.balance), 0))
                    .join(Job, Account.job_id == Job.id)
                    .join(Provider, Job.provider_id == Provider.id)
                    .where(
                        Account.kind == AccountKind.ESCROW,
                        Provider.user_id == user_id,
                        Job.status.in_(OPEN_JOB_STATES),
                    )
                )
            ).scalar_one()
            return int(total)


class HealthService:
    def __init__(self, engine: AsyncEngine, *, timeout: float = 2.0) -> None:
        self._engine = engine
        self._timeout = timeout
        self.backend = engine.dialect.name

    async def database_reachable(self) -> bool:
        async def ping() -> None:
            async with self._engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

        try:
            await asyncio.wait_for(ping(), self._timeout)
        except (TimeoutError, OSError, SQLAlchemyError):
            return False
        return True


@dataclasses.dataclass(frozen=True, slots=True)
class Services:
    """Everything a request may use, in the tornado settings as ``qubix_services``."""

    role: Role
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    ledger: Ledger
    auth: AuthService
    wallets: WalletService
    health: HealthService
    rate_limiter: RateLimiter
    idempotency: IdempotencyStore
    #: The WebSocket hub: services publish their events here (``events.publish(channel, …)``).
    events: EventHub
    #: Jobs: create, assign, progress, complete, cancel (and the background assigner).
    jobs: JobService
    #: Deposits and withdrawals through the configured settlement backend.
    settlement: SettlementService
    #: The Prometheus registry of this extension (``GET metrics``).
    metrics: MarketMetrics
    #: Provider heartbeats: buffered, flushed in batches, silent providers taken offline.
    liveness: HeartbeatBuffer
    max_body_bytes: int
    allowed_origins: tuple[str, ...]
    #: Where providers' workers reach the scheduler (``GET scheduler``); set once it listens.
    scheduler: SchedulerDirectory = dataclasses.field(default_factory=SchedulerDirectory)
    #: The local agent (roles agent and both): sharing this machine from the Lab.
    agent: AgentService | None = None
