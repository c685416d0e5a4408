"""Settlement on the Qubic network through its public RPC.

**Deposits** are watched, never signed for: each user has a deposit identity (derived from the
operator's ``deposit_seed``, or assigned); :meth:`QubicBackend.scan_deposits` reads its incoming
transfers from the archive up to the last processed tick, page by page from where the previous
scan stopped, and credits each transfer with ``moneyFlew`` exactly once (ledger idempotency key
``qubic-deposit:{txid}``, the tx id stored on the entry).

**Payouts** leave from the platform wallet (its seed is given to this backend, server side) through
the ``payout_outbox``:

1. ``request_payout`` debits the wallet and inserts the ``queued`` row in one database transaction;
2. under the source's lock, the oldest queued row is signed for ``tick + tick_offset`` and the
   signed bytes, tx id and target tick are committed (``signed``) *before* the broadcast;
3. a broadcast the peers accept makes it ``broadcast``; one that cannot reach them leaves it
   ``signed`` and "payment delayed", and it is re-broadcast while its target tick is ahead;
4. once the archive's last processed tick reaches the target tick, ``getTransactionByHash``
   decides: found with ``moneyFlew`` → ``confirmed``; otherwise the transaction can never be
   included any more, so the payout goes back to ``queued`` and is re-signed with a new tick
   (same payout, new tx id, ``attempts`` + 1). Nothing is re-signed before that proof, so a
   payout is never paid twice.

Only one transaction from the platform wallet is in flight at a time (Qubic's one pending
transaction per source), across processes. While the RPC is unreachable payouts stay queued and
are retried on the next round (each RPC call itself retries transient failures 3 times).

The backend reaches the database only through the ``store`` it is given (the payout outbox,
deposit addresses and scan state; :class:`SettlementStorePort` says what it needs), so this layer
imports no database code. The caller composes the two, e.g.
``make_backend("qubic", ledger=Ledger(sm), store=SettlementStore(sm), ...)`` with
``qubix_jupyter.db.settlement_store.SettlementStore``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from ...market.errors import IdempotencyConflict, QubixError
from ...market.payouts import PayoutRecord
from ..identity import is_valid_identity, public_key_from_identity
from ..keys import InvalidSeed, KeyPair
from ..rpc import (
    MAX_RESULT_WINDOW,
    QubicRpcClient,
    QubicRpcError,
    RetryPolicy,
    RpcRejected,
    TransactionNotFound,
)
from ..transaction import Transaction
from .base import (
    ChainStatus,
    ChainUnavailable,
    DepositCredit,
    InvalidDestination,
    LedgerPort,
    PayoutState,
    PayoutStatus,
    SettlementBackend,
    SettlementNotConfigured,
    UnknownPayout,
    check_payout_transition,
    payout_idempotency_key,
    refund_idempotency_key,
    utcnow,
    validate_payout,
)

log = logging.getLogger(__name__)


class PayoutRow(PayoutRecord, Protocol):
    """One stored payout (a ``payout_outbox`` row) as the backend reads and changes it inside a
    store transaction; its changes are committed when the transaction ends."""

    id: int
    misses: int
    signed_tx: bytes | None
    confirmed_at: dt.datetime | None


class DepositAddressRow(Protocol):
    user_id: str
    identity: str
    start_tick: int


class SettlementStorePort(Protocol):
    """What the backend needs of its persistence
    (:class:`qubix_jupyter.db.settlement_store.SettlementStore`). ``session`` values are opaque
    here: the store hands them out and takes them back."""

    def source_locked(self, source: str) -> AbstractAsyncContextManager[Any]: ...

    async def insert_payout(
        self,
        session: Any,
        *,
        payout_key: str,
        user_id: str,
        source: str,
        destination: str,
        amount: int,
    ) -> None: ...

    async def payout(self, payout_key: str) -> PayoutRow | None: ...

    async def payouts_for_user(self, user_id: str) -> Sequence[PayoutRow]: ...

    async def in_flight(self, source: str, session: Any = None) -> PayoutRow | None: ...

    async def next_queued(self, session: Any, source: str) -> PayoutRow | None: ...

    async def reload(self, session: Any, payout_id: int) -> PayoutRow: ...

    def add_attempt(self, session: Any, payout: PayoutRow) -> None: ...

    async def resolve_attempt(self, session: Any, tx_id: str, outcome: str) -> None: ...

    async def attempt_outcome(self, session: Any, tx_id: str) -> str | None: ...

    async def mark_delayed(self, source: str, error: str) -> Sequence[PayoutRow]: ...

    async def clear_queued_delays(self, source: str) -> None: ...

    async def deposit_address(self, user_id: str) -> DepositAddressRow | None: ...

    async def add_deposit_address(
        self, user_id: str, identity: str, start_tick: int
    ) -> DepositAddressRow: ...

    async def deposit_addresses(self) -> Sequence[DepositAddressRow]: ...

    async def scan_position(self, identity: str) -> int | None: ...

    async def set_scan_position(self, identity: str, tick: int) -> None: ...


def payout_status(row: PayoutRecord) -> PayoutStatus:
    return PayoutStatus.from_record(row)


_SEED_ALPHABET = "abcdefghijklmnopqrstuvwxyz"
_SEED_LENGTH = 55


def derive_deposit_seed(deposit_seed: str, user_id: str) -> str:
    """The seed of ``user_id``'s deposit identity: 55 lowercase letters drawn without bias from
    SHAKE-256 of the operator's deposit seed and the user id. The operator can re-derive it to
    move deposited QU; the server stores only the resulting identity."""
    stream = hashlib.shake_256(
        b"qubix-deposit-seed/v1\x00" + deposit_seed.encode() + b"\x00" + user_id.encode()
    ).digest(256)
    letters = [_SEED_ALPHABET[b % 26] for b in stream if b < 234]  # 234 = 9 × 26: no bias
    if len(letters) < _SEED_LENGTH:  # pragma: no cover - p ≈ 0 for 256 bytes
        raise RuntimeError("seed derivation ran short of bytes")
    return "".join(letters[:_SEED_LENGTH])


def _platform_wallet(seed: object) -> KeyPair:
    try:
        if not isinstance(seed, str):
            raise InvalidSeed("no seed")
        return KeyPair.from_seed(seed)
    except InvalidSeed as exc:
        raise SettlementNotConfigured(
            "the qubic backend needs the platform wallet's seed (55 lowercase letters)",
            field="platform_seed",
        ) from exc


class QubicBackend(SettlementBackend):
    """Deposits and payouts on the Qubic network.

    ``platform_seed``: the 55-letter seed of the wallet payouts are sent from (keep it secret).
    ``deposit_seed``: a secret from which per-user deposit identities are derived; without it,
    deposit identities must be assigned with :meth:`assign_deposit_identity`.
    ``tick_offset``: how many ticks ahead of the current tick a payout is scheduled (5–20 is
    usual; too small and it misses its tick, too large and a miss costs more time).
    ``max_misses``: acknowledged transactions of one payout that may fail to pay before the payout
    is failed and its debit refunded; 0 retries forever.
    ``page_size``: transactions per archive page when scanning deposits (1 or a multiple of 10).
    """

    name = "qubic"

    def __init__(
        self,
        ledger: LedgerPort,
        store: SettlementStorePort,
        rpc: QubicRpcClient,
        *,
        platform_seed: str | None = None,
        deposit_seed: str | None = None,
        tick_offset: int = 10,
        max_misses: int = 10,
        page_size: int = 100,
        max_result_window: int = MAX_RESULT_WINDOW,
    ) -> None:
        if tick_offset < 1:
            raise SettlementNotConfigured("tick_offset must be at least 1", field="tick_offset")
        if max_misses < 0:
            raise SettlementNotConfigured("max_misses must be ≥ 0", field="max_misses")
        self._wallet = _platform_wallet(platform_seed)
        if deposit_seed is not None:
            try:
                KeyPair.from_seed(derive_deposit_seed(deposit_seed, "check"))
            except (InvalidSeed, TypeError) as exc:  # pragma: no cover - derivation is valid
                raise SettlementNotConfigured("unusable deposit seed") from exc
        self.ledger = ledger
        self.rpc = rpc
        self.store = store
        self.platform_identity = self._wallet.identity
        self._deposit_seed = deposit_seed
        self.tick_offset = tick_offset
        self.max_misses = max_misses
        self.page_size = page_size
        self.max_result_window = max_result_window
        self._round = asyncio.Lock()

    @classmethod
    def from_config(
        cls,
        *,
        ledger: LedgerPort,
        store: SettlementStorePort | None = None,
        rpc: QubicRpcClient | None = None,
        rpc_url: str | None = None,
        live_url: str | None = None,
        query_url: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        retry_base_delay: float = 0.25,
        **options: Any,
    ) -> QubicBackend:
        """Build from flat configuration: either ``rpc``, or ``rpc_url`` (a gateway serving both
        APIs, e.g. https://rpc.qubic.org), or ``live_url`` and ``query_url``."""
        if store is None:
            raise SettlementNotConfigured(
                "the qubic backend needs store=SettlementStore(sessionmaker) "
                "(qubix_jupyter.db.settlement_store) for its payout outbox",
                field="store",
            )
        _platform_wallet(options.get("platform_seed"))  # refuse before opening any connection
        if rpc is None:
            policy = RetryPolicy(retries=retries, base_delay=retry_base_delay)
            try:
                if rpc_url:
                    rpc = QubicRpcClient.from_base_url(rpc_url, timeout=timeout, retry=policy)
                else:
                    rpc = QubicRpcClient(live_url, query_url, timeout=timeout, retry=policy)
            except QubicRpcError as exc:
                raise SettlementNotConfigured(str(exc), field="rpc_url") from exc
        return cls(ledger, store, rpc, **options)

    async def aclose(self) -> None:
        await super().aclose()
        await self.rpc.aclose()

    async def chain_status(self) -> ChainStatus:
        try:
            info = await self.rpc.get_tick_info()
            last = await self.rpc.get_last_processed_tick()
        except QubicRpcError as exc:
            return ChainStatus(reachable=False, error=str(exc))
        return ChainStatus(True, info.tick, info.epoch, last.tick_number)

    # ------------------------------------------------------------------ deposits

    async def deposit_identity_for(self, user_id: str) -> str:
        found = await self.store.deposit_address(user_id)
        if found is not None:
            return found.identity
        if self._deposit_seed is None:
            raise SettlementNotConfigured(
                "no deposit identity for this user and no deposit_seed to derive one",
                field="deposit_seed",
            )
        identity = KeyPair.from_seed(derive_deposit_seed(self._deposit_seed, user_id)).identity
        return (await self.store.add_deposit_address(user_id, identity, await self._now())).identity

    async def assign_deposit_identity(
        self, user_id: str, identity: str, *, start_tick: int | None = None
    ) -> str:
        """Watch ``identity`` for the user's deposits from ``start_tick`` (default: now)."""
        if not is_valid_identity(identity):
            raise InvalidDestination("not a valid Qubic identity", field="identity")
        start = await self._now() if start_tick is None else start_tick
        row = await self.store.add_deposit_address(user_id, identity, start)
        if row.identity != identity:
            raise IdempotencyConflict(
                "this user already has another deposit identity", user_id=user_id
            )
        return row.identity

    async def _now(self) -> int:
        """The first tick a new deposit identity can receive in; 0 (scan everything) when the
        network cannot tell us, which is safe because credits are idempotent."""
        try:
            return (await self.rpc.get_tick_info()).tick
        except QubicRpcError:
            return 0

    async def scan_deposits(self) -> list[DepositCredit]:
        try:
            last = (await self.rpc.get_last_processed_tick()).tick_number
        except QubicRpcError as exc:
            raise ChainUnavailable(f"the Qubic archive is unreachable: {exc}") from exc
        credits: list[DepositCredit] = []
        for address in await self.store.deposit_addresses():
            position = await self.store.scan_position(address.identity)
            start = address.start_tick if position is None else position + 1
            if start > last:
                continue
            try:
                credits += await self._scan_identity(address.user_id, address.identity, start, last)
            except QubicRpcError as exc:
                raise ChainUnavailable(f"the Qubic archive failed: {exc}") from exc
            except QubixError as exc:
                # One user's ledger trouble must not stop everyone else's deposits; the range is
                # scanned again next round.
                log.warning("deposit scan of %s for %s: %s", address.identity, address.user_id, exc)
                continue
            await self.store.set_scan_position(address.identity, last)
        return credits

    async def _scan_identity(
        self, user_id: str, identity: str, start: int, end: int
    ) -> list[DepositCredit]:
        credits = []
        async for tx in self.rpc.iter_transactions_for_identity(
            identity,
            from_tick=start,
            to_tick=end,
            filters={"destination": identity},
            page_size=self.page_size,
            max_result_window=self.max_result_window,
        ):
            if not tx.money_flew or tx.destination != identity or tx.source == identity:
                continue
            if tx.amount <= 0:
                continue
            credit = await self._credit_deposit(user_id, tx.hash, tx.amount, tx.tick_number)
            if credit is not None:
                credits.append(credit)
        return credits

    # ------------------------------------------------------------------ payout requests

    async def request_payout(
        self, payout_key: str, user_id: str, destination_identity: str, amount: int
    ) -> PayoutStatus:
        validate_payout(payout_key, destination_identity, amount)
        if destination_identity == self.platform_identity:
            raise InvalidDestination("a payout cannot go to the platform wallet itself")
        row = await self.store.payout(payout_key)
        if row is None:

            async def queue(session: Any) -> None:
                await self.store.insert_payout(
                    session,
                    payout_key=payout_key,
                    user_id=user_id,
                    source=self.platform_identity,
                    destination=destination_identity,
                    amount=amount,
                )

            await self.ledger.withdraw(
                user_id, amount, idempotency_key=payout_idempotency_key(payout_key), within=queue
            )
            row = await self.store.payout(payout_key)
            assert row is not None, "the withdrawal committed without its outbox row"
        if (row.user_id, row.destination_identity, row.amount) != (
            user_id,
            destination_identity,
            amount,
        ):
            raise IdempotencyConflict(
                f"payout key {payout_key!r} was already used for a different payout",
                key=payout_key,
            )
        return payout_status(row)

    async def payout_status(self, payout_key: str) -> PayoutStatus:
        row = await self.store.payout(payout_key)
        if row is None:
            raise UnknownPayout(f"no payout {payout_key!r}", payout_key=payout_key)
        return payout_status(row)

    async def payouts_for_user(self, user_id: str) -> list[PayoutStatus]:
        return [payout_status(row) for row in await self.store.payouts_for_user(user_id)]

    # ------------------------------------------------------------------ payout processing

    async def process_payouts(self) -> list[PayoutStatus]:
        async with self._round:
            changed: dict[str, PayoutStatus] = {}
            try:
                tick = (await self.rpc.get_tick_info()).tick
            except QubicRpcError as exc:
                await self._delay(f"the Qubic network is unreachable: {exc}", changed)
                return list(changed.values())
            await self.store.clear_queued_delays(self.platform_identity)
            try:
                active = await self.store.in_flight(self.platform_identity)
                if active is None or await self._follow_up(active, tick, changed):
                    await self._send_next(tick, changed)
            except QubicRpcError as exc:
                # Without a clear answer nothing is decided: the payout waits for the next round.
                await self._delay(f"the Qubic RPC is unreachable: {exc}", changed)
            return list(changed.values())

    async def _delay(self, error: str, changed: dict[str, PayoutStatus]) -> None:
        log.warning("payouts delayed: %s", error)
        for row in await self.store.mark_delayed(self.platform_identity, error):
            changed[row.payout_key] = payout_status(row)

    def _transition(self, row: PayoutRow, state: PayoutState) -> None:
        check_payout_transition(PayoutState(row.status), state)
        row.status = state
        row.updated_at = utcnow()

    async def _follow_up(self, active: PayoutRow, tick: int, changed: dict) -> bool:
        """Move the in-flight payout on; True when the source is free for the next one."""
        # in flight ⇒ signed: the table's check constraint guarantees both
        assert active.target_tick is not None
        assert active.tx_id is not None
        if tick < active.target_tick:
            if active.status == PayoutState.SIGNED:  # not yet acknowledged: send it (again)
                await self._broadcast(active, changed)
            return False
        last = (await self.rpc.get_last_processed_tick()).tick_number
        if last < active.target_tick:
            return False  # the archive has not processed the target tick yet
        try:
            archived = await self.rpc.get_transaction_by_hash(active.tx_id)
        except TransactionNotFound:
            archived = None

        refund = None
        async with self.store.source_locked(self.platform_identity) as session:
            row = await self.store.reload(session, active.id)
            if row.tx_id != active.tx_id or not PayoutState(row.status).in_flight:
                return True  # another process got here first
            if archived is not None and archived.money_flew:
                self._transition(row, PayoutState.CONFIRMED)
                row.confirmed_tick = archived.tick_number
                row.confirmed_at = utcnow()
                row.delayed = False
                row.last_error = None
                await self.store.resolve_attempt(session, active.tx_id, "confirmed")
            else:
                outcome = "not_included" if archived is None else "no_money_flew"
                rejected = await self.store.attempt_outcome(session, active.tx_id) == "rejected"
                # A miss is a transaction the network had (or refused); one that never reached
                # it while the RPC was down is not held against the payout.
                if row.status == PayoutState.BROADCAST or rejected or archived is not None:
                    row.misses += 1
                row.last_error = (
                    f"transaction {active.tx_id} was not included by tick {active.target_tick}"
                    if archived is None
                    else f"transaction {active.tx_id} was included but moved no QU "
                    "(the platform wallet could not cover it)"
                )
                await self.store.resolve_attempt(session, active.tx_id, outcome)
                self._transition(row, PayoutState.QUEUED)
                row.signed_tx = row.tx_id = row.target_tick = None
                if self.max_misses and row.misses >= self.max_misses:
                    refund = row
            changed[row.payout_key] = payout_status(row)
        if refund is not None:
            await self._fail_and_refund(refund, changed)
        return True

    async def _send_next(self, tick: int, changed: dict) -> None:
        """Sign the oldest queued payout for ``tick + tick_offset`` and broadcast it."""
        while True:
            async with self.store.source_locked(self.platform_identity) as session:
                if await self.store.in_flight(self.platform_identity, session) is not None:
                    return  # another process signed one meanwhile
                row = await self.store.next_queued(session, self.platform_identity)
                if row is None:
                    return
                if self.max_misses and row.misses >= self.max_misses:
                    failing = row  # refunded below, outside this transaction
                else:
                    failing = None
                    target = tick + self.tick_offset
                    tx = Transaction(
                        self._wallet.public_key,
                        public_key_from_identity(row.destination_identity),
                        row.amount,
                        target,
                    ).signed(self._wallet.subseed)
                    self._transition(row, PayoutState.SIGNED)
                    row.signed_tx = tx.to_bytes()
                    row.tx_id = tx.tx_id
                    row.target_tick = target
                    row.attempts += 1
                    await session.flush()
                    self.store.add_attempt(session, row)
                    changed[row.payout_key] = payout_status(row)
            # committed: the signed transaction is on disk before it leaves this process
            if failing is None:
                await self._broadcast(row, changed)
                return
            await self._fail_and_refund(failing, changed)

    async def _broadcast(self, row: PayoutRow, changed: dict) -> None:
        assert row.signed_tx is not None
        error: str | None = None
        acknowledged = rejected = False
        try:
            result = await self.rpc.broadcast_transaction(row.signed_tx)
            acknowledged = True
            if result.transaction_id and result.transaction_id != row.tx_id:
                log.error("broadcast of %s came back as %s", row.tx_id, result.transaction_id)
        except RpcRejected as exc:
            # Refused bytes are never included; still, nothing is re-signed until the archive
            # proves that after the target tick (a node may have relayed them anyway).
            error, rejected = f"the network refused the transaction: {exc.message}", True
            if exc.status == 429:
                error, rejected = f"rate limited by the Qubic RPC: {exc.message}", False
        except QubicRpcError as exc:
            error = f"broadcast failed, will retry: {exc}"
        async with self.store.source_locked(self.platform_identity) as session:
            current = await self.store.reload(session, row.id)
            if current.tx_id != row.tx_id or current.status != PayoutState.SIGNED:
                return
            if acknowledged:
                self._transition(current, PayoutState.BROADCAST)
                current.delayed = False
                current.last_error = None
            else:
                current.delayed = True
                current.last_error = error
                current.updated_at = utcnow()
                if rejected:
                    await self.store.resolve_attempt(session, row.tx_id or "", "rejected")
            changed[current.payout_key] = payout_status(current)

    async def _fail_and_refund(self, row: PayoutRow, changed: dict) -> None:
        # Refund first, then mark failed: a crash in between leaves the payout queued with its
        # misses used up, and the next round repeats the (idempotent) refund and then fails it.
        await self.ledger.deposit(
            row.user_id, row.amount, idempotency_key=refund_idempotency_key(row.payout_key)
        )
        async with self.store.source_locked(self.platform_identity) as session:
            current = await self.store.reload(session, row.id)
            if current.status != PayoutState.QUEUED:
                return
            self._transition(current, PayoutState.FAILED)
            current.delayed = False
            changed[current.payout_key] = payout_status(current)
        log.error(
            "payout %s failed after %d transactions; %d QU refunded to %s",
            row.payout_key,
            current.attempts,
            row.amount,
            row.user_id,
        )


__all__ = ["QubicBackend", "derive_deposit_seed"]
