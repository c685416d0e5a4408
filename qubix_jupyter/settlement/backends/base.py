"""The settlement interface: how QU enters the ledger from the chain and leaves it again.

A backend owns two flows, both in integer QU:

* **deposits**: each user gets a deposit identity; :meth:`SettlementBackend.scan_deposits` finds
  transfers that arrived there and credits the user's wallet exactly once per chain transaction;
* **payouts**: :meth:`SettlementBackend.request_payout` debits the wallet and records the payout in
  one database transaction; :meth:`SettlementBackend.process_payouts` moves queued payouts onto
  the chain and confirms them; :meth:`SettlementBackend.payout_status` tells the user where it is.

The payout domain — :class:`PayoutState`, :data:`PAYOUT_TRANSITIONS`, :class:`PayoutStatus`,
:data:`MAX_TRANSFER_AMOUNT` — is pure and lives in :mod:`qubix_jupyter.market.payouts`, where the
database layer reads it too; it is re-exported here so ``settlement.backends.base`` stays the one
import for backend authors.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from typing import Any, Protocol

from ...market.errors import QubixError
from ...market.payouts import (
    MAX_PAYOUT_KEY_LENGTH,
    MAX_TRANSFER_AMOUNT,
    PAYOUT_TRANSITIONS,
    PayoutState,
    PayoutStatus,
    check_payout_transition,
    require_payout_amount,
)
from ..identity import is_valid_identity
from ..transaction import MAX_AMOUNT

log = logging.getLogger(__name__)

# market cannot import settlement, so it states the protocol's limit itself; the two must agree.
if MAX_TRANSFER_AMOUNT != MAX_AMOUNT:  # pragma: no cover - a build that fails loudly
    raise ImportError(
        f"market.payouts.MAX_TRANSFER_AMOUNT ({MAX_TRANSFER_AMOUNT}) differs from the Qubic "
        f"transaction limit MAX_AMOUNT ({MAX_AMOUNT})"
    )


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class SettlementError(QubixError):
    code = "settlement_error"
    status = 400


class InvalidDestination(SettlementError):
    code = "invalid_destination"
    status = 422


class UnknownPayout(SettlementError):
    code = "unknown_payout"
    status = 404


class SettlementNotConfigured(SettlementError):
    """The backend lacks configuration it needs (an RPC URL, a wallet seed, …)."""

    code = "settlement_not_configured"
    status = 503


class ChainUnavailable(SettlementError):
    """The chain (its RPC) cannot be reached now; the request can be retried later."""

    code = "chain_unavailable"
    status = 503


@dataclasses.dataclass(frozen=True, slots=True)
class DepositCredit:
    """One chain transfer newly credited to a user's wallet."""

    user_id: str
    tx_id: str
    amount: int
    tick: int


@dataclasses.dataclass(frozen=True, slots=True)
class ChainStatus:
    reachable: bool
    tick: int | None = None
    epoch: int | None = None
    last_processed_tick: int | None = None
    error: str | None = None


class LedgerPort(Protocol):
    """What a backend needs of :class:`qubix_jupyter.db.ledger.Ledger`."""

    async def deposit(
        self, user_id: str, amount: int, *, idempotency_key: str, qubic_tx_hash: str | None = None
    ) -> Any: ...

    async def withdraw(
        self,
        user_id: str,
        amount: int,
        *,
        idempotency_key: str,
        qubic_tx_hash: str | None = None,
        within: Any = None,
    ) -> Any: ...

    async def wallet_balance(self, user_id: str) -> int: ...


def deposit_idempotency_key(tx_id: str) -> str:
    return f"qubic-deposit:{tx_id}"


def payout_idempotency_key(payout_key: str) -> str:
    return f"qubic-payout:{payout_key}"


def refund_idempotency_key(payout_key: str) -> str:
    return f"qubic-payout-refund:{payout_key}"


def validate_payout(payout_key: str, destination: str, amount: int) -> None:
    if not isinstance(payout_key, str) or not 0 < len(payout_key) <= MAX_PAYOUT_KEY_LENGTH:
        raise SettlementError(
            f"a payout key is 1 to {MAX_PAYOUT_KEY_LENGTH} characters", field="payout_key"
        )
    require_payout_amount(amount)
    if not is_valid_identity(destination):
        raise InvalidDestination(
            "the destination is not a valid Qubic identity (60 letters A-Z with checksum)",
            field="destination",
        )


class SettlementBackend(abc.ABC):
    """The interface the market uses; :func:`~qubix_jupyter.settlement.backends.make_backend`
    builds one by name."""

    name: str = "abstract"
    ledger: LedgerPort

    async def _credit_deposit(
        self, user_id: str, tx_id: str, amount: int, tick: int
    ) -> DepositCredit | None:
        """Credit one money-moving chain transfer to the user's wallet, keyed by its tx id so it
        is credited once however often it is seen; None when it had been credited already."""
        receipt = await self.ledger.deposit(
            user_id, amount, idempotency_key=deposit_idempotency_key(tx_id), qubic_tx_hash=tx_id
        )
        if getattr(receipt, "replayed", False):
            return None
        return DepositCredit(user_id, tx_id, amount, tick)

    @abc.abstractmethod
    async def deposit_identity_for(self, user_id: str) -> str:
        """The identity this user sends QU to (created on first use, stable afterwards)."""

    @abc.abstractmethod
    async def scan_deposits(self) -> list[DepositCredit]:
        """Credit every new, money-moving transfer to a deposit identity; each chain transaction
        at most once however often it is seen."""

    @abc.abstractmethod
    async def request_payout(
        self, payout_key: str, user_id: str, destination_identity: str, amount: int
    ) -> PayoutStatus:
        """Debit ``amount`` from the user's wallet and queue a transfer to
        ``destination_identity``. Idempotent by ``payout_key``: a retry with the same arguments
        returns the existing payout; other arguments raise ``IdempotencyConflict``."""

    @abc.abstractmethod
    async def process_payouts(self) -> list[PayoutStatus]:
        """Advance queued and in-flight payouts one step; return those that changed."""

    @abc.abstractmethod
    async def payout_status(self, payout_key: str) -> PayoutStatus:
        """The payout's current status; :class:`UnknownPayout` if there is none."""

    @abc.abstractmethod
    async def payouts_for_user(self, user_id: str) -> list[PayoutStatus]:
        """The user's payouts, newest first."""

    @abc.abstractmethod
    async def chain_status(self) -> ChainStatus:
        """Whether the chain answers, and its tick (for health checks)."""

    async def aclose(self) -> None:
        await self.stop()

    # ------------------------------------------------------------------ background loop

    _runner: asyncio.Task[None] | None = None

    async def run_once(self) -> None:
        """One round of deposit scanning and payout processing. Chain outages are expected and
        logged; the next round retries."""
        for step in (self.scan_deposits, self.process_payouts):
            try:
                await step()
            except QubixError as exc:
                log.warning("settlement %s: %s", step.__name__, exc)
            except Exception:
                # A background loop: one bad round is logged with its traceback and must not
                # stop deposits and payouts for good. Nothing here answers a client.
                log.exception("settlement %s failed", step.__name__)

    def start(self, interval_s: float) -> None:
        """Run :meth:`run_once` every ``interval_s`` seconds on the current event loop."""
        if self._runner is not None and not self._runner.done():
            return

        async def loop() -> None:
            while True:
                await self.run_once()
                await asyncio.sleep(interval_s)

        self._runner = asyncio.get_running_loop().create_task(loop(), name=f"settle-{self.name}")

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner


__all__ = [
    "MAX_PAYOUT_KEY_LENGTH",
    "MAX_TRANSFER_AMOUNT",
    "PAYOUT_TRANSITIONS",
    "ChainStatus",
    "ChainUnavailable",
    "DepositCredit",
    "InvalidDestination",
    "LedgerPort",
    "PayoutState",
    "PayoutStatus",
    "SettlementBackend",
    "SettlementError",
    "SettlementNotConfigured",
    "UnknownPayout",
    "check_payout_transition",
    "deposit_idempotency_key",
    "payout_idempotency_key",
    "refund_idempotency_key",
    "utcnow",
    "validate_payout",
]
