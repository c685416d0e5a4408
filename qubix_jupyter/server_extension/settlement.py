"""The market's side of settlement: the backend built once, its periodic round, and the wallet
events that money crossing the chain border causes.

The backend (``settlement.backends``: ``memory`` or ``qubic``) moves QU between the chain and the
ledger; this service runs its round (credit new deposits, advance payouts) on the server's loop
and tells each affected user's ``wallet`` channel that the balance changed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..market.errors import QubixError
from ..market.events import EventType
from ..market.payouts import PayoutState, PayoutStatus
from ..settlement.backends import MemoryBackend, SettlementBackend
from . import periodic
from .events import EventHub

log = logging.getLogger(__name__)


class SimulatedDepositsOff(QubixError):
    """Simulated deposits exist only on the memory backend's simulated chain."""

    code = "simulated_deposits_off"
    status = 409


@dataclasses.dataclass(frozen=True, slots=True)
class Withdrawal:
    payout: PayoutStatus
    balance: int


class SettlementService:
    def __init__(self, backend: SettlementBackend, events: EventHub) -> None:
        self.backend = backend
        self._events = events
        self._runner: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        #: request key → chain tx of a simulated deposit: a retried request mints nothing new.
        self._simulated: dict[str, str] = {}

    @property
    def simulated(self) -> bool:
        return isinstance(self.backend, MemoryBackend)

    async def _balance_changed(self, user_id: str, change: int, reason: str, **more: Any) -> None:
        balance = await self.backend.ledger.wallet_balance(user_id)
        data = {"balance": balance, "change": change, "reason": reason, **more}
        self._events.publish("wallet", EventType.BALANCE_CHANGED, data, user_id=user_id)

    # ------------------------------------------------------------------ requests

    async def deposit_address(self, user_id: str) -> str:
        return await self.backend.deposit_identity_for(user_id)

    async def simulate_deposit(self, user_id: str, amount: int, *, key: str) -> tuple[str, int]:
        """``amount`` QU arrive at the user's deposit identity on the simulated chain and are
        credited at once; returns the chain tx id and the new balance."""
        backend = self.backend
        if not isinstance(backend, MemoryBackend):
            raise SimulatedDepositsOff(
                f"deposits are simulated only with the memory settlement backend; this market "
                f"settles on {backend.name}: send QU to your deposit address instead",
                backend=backend.name,
            )
        tx_id = self._simulated.get(key)
        if tx_id is None:
            tx_id = await backend.simulate_deposit(user_id, amount)
            self._simulated[key] = tx_id
        await self._publish_credits(await backend.scan_deposits())
        return tx_id, await backend.ledger.wallet_balance(user_id)

    async def withdraw(
        self, user_id: str, destination: str, amount: int, *, key: str
    ) -> Withdrawal:
        payout = await self.backend.request_payout(key, user_id, destination, amount)
        balance = await self.backend.ledger.wallet_balance(user_id)
        data = {
            "balance": balance,
            "change": -amount,
            "reason": "withdrawal",
            "withdrawalId": payout.payout_key,
        }
        self._events.publish("wallet", EventType.BALANCE_CHANGED, data, user_id=user_id)
        return Withdrawal(payout, balance)

    async def withdrawals(self, user_id: str) -> list[PayoutStatus]:
        return await self.backend.payouts_for_user(user_id)

    # ------------------------------------------------------------------ the round

    async def _publish_credits(self, credits: list[Any]) -> None:
        for credit in credits:
            await self._balance_changed(
                credit.user_id, credit.amount, "deposit", qubicTxHash=credit.tx_id
            )

    async def _step(self, step: Callable[[], Awaitable[list[Any]]]) -> list[Any]:
        try:
            return await step()
        except QubixError as exc:  # the chain is down, say: the next round retries
            log.warning("settlement %s: %s", step.__name__, exc)
        except Exception:
            # A background round: one bad round is logged with its traceback and must not stop
            # deposits and payouts for good. Nothing here answers a client.
            log.exception("settlement %s failed", step.__name__)
        return []

    async def settle_once(self) -> None:
        """Credit new deposits and move payouts one step on, publishing what changed."""
        backend = self.backend
        if isinstance(backend, MemoryBackend) and backend.advance_on_run:
            backend.advance(1)  # the simulated chain's ticks are this loop's rounds
        await self._publish_credits(await self._step(backend.scan_deposits))
        for payout in await self._step(backend.process_payouts):
            if payout.state is PayoutState.FAILED:
                await self._balance_changed(
                    payout.user_id, payout.amount, "withdrawal_refunded",
                    withdrawalId=payout.payout_key,
                )  # fmt: skip

    def start(self, interval_s: float) -> None:
        """Run :meth:`settle_once` every ``interval_s`` seconds on the running loop."""
        if self._runner is not None and not self._runner.done():
            return

        self._stopping = stopping = asyncio.Event()

        async def loop() -> None:
            while True:
                await self.settle_once()
                if await periodic.pause(stopping, interval_s):
                    return

        self._runner = asyncio.get_running_loop().create_task(loop(), name="qubix-settlement")

    async def stop(self) -> None:
        """End the rounds (a round under way finishes, see :mod:`.periodic`); close the
        backend."""
        runner, self._runner = self._runner, None
        if runner is not None:
            self._stopping.set()
            await periodic.finish(runner)
        await self.backend.aclose()


__all__ = ["SettlementService", "SimulatedDepositsOff", "Withdrawal"]
