"""The double-entry ledger.

Every money-moving operation runs in one database transaction that

1. claims its idempotency key (a concurrent twin waits on that row and then replays the answer),
2. locks the job row (if any), then the accounts it touches in id order (no deadlock cycles),
3. writes one ``transactions`` row per movement and updates the cached balances,
4. stores its receipt under the key.

A retried request with the same key and parameters gets the stored receipt and moves nothing; the
same key with other parameters is an :class:`IdempotencyConflict`. On PostgreSQL row locks make
this correct under concurrency; on SQLite every transaction starts with ``BEGIN IMMEDIATE``, so
writers queue. Transient conflicts (deadlock, serialization failure, a busy SQLite file) are
retried with backoff.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import json
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import psycopg
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ..market.errors import (
    AmountTooLarge,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidState,
    QubixError,
    UnknownAccount,
    UnknownJob,
)
from ..market.money import INT64_MAX, require_amount, split_charge
from ..market.states import (
    EXTERNAL_ACCOUNT_ID,
    PLATFORM_ACCOUNT_ID,
    TERMINAL_JOB_STATES,
    AccountKind,
    EntryType,
    JobStatus,
    escrow_account_id,
    wallet_account_id,
)
from .engine import Then, autocommit_engine, autocommit_sessions, driver_connection, pipelined
from .models import Account, IdempotencyKey, Job, Provider, Transaction, new_id, utcnow

MAX_KEY_LENGTH = 200
Within = Callable[[AsyncSession], Awaitable[None]]


class InvalidIdempotencyKey(QubixError):
    code = "invalid_idempotency_key"
    status = 422


@dataclasses.dataclass(frozen=True, slots=True)
class Receipt:
    """What a money-moving operation did. Replays of the same key return an equal receipt."""

    operation: str
    idempotency_key: str
    amounts: dict[str, int]
    entry_ids: tuple[str, ...]
    job_id: str | None = None
    user_id: str | None = None
    replayed: bool = False

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["entry_ids"] = list(self.entry_ids)
        del data["replayed"]
        return data

    @classmethod
    def from_function(cls, data: dict[str, Any]) -> Receipt:
        """A receipt as a PL/pgSQL ledger function returns it, with its ``replayed`` flag."""
        return cls.from_json(data, replayed=bool(data.pop("replayed")))

    @classmethod
    def from_json(cls, data: dict[str, Any], *, replayed: bool) -> Receipt:
        return cls(
            operation=data["operation"],
            idempotency_key=data["idempotency_key"],
            amounts={k: int(v) for k, v in data["amounts"].items()},
            entry_ids=tuple(data["entry_ids"]),
            job_id=data.get("job_id"),
            user_id=data.get("user_id"),
            replayed=replayed,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Condition:
    """A SQL condition (``%s`` placeholders) and its values, checked in the statement of a
    native operation before it runs (``Ledger.end_job(only_if=)``)."""

    sql: str
    values: tuple[Any, ...]


class Skipped(Exception):
    """A native operation's ``only_if`` condition did not hold: nothing was done."""


def request_hash(operation: str, params: dict[str, Any]) -> str:
    """What an idempotency key is checked against: the operation and its parameters."""
    canonical = json.dumps({"operation": operation, **params}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None)


def _is_key_collision(exc: IntegrityError) -> bool:
    """True when the error is our idempotency key being claimed by a concurrent twin."""
    text = str(exc.orig)
    if _sqlstate(exc) == "23505":
        diag = getattr(exc.orig, "diag", None)
        return getattr(diag, "constraint_name", None) == "pk_idempotency_keys"
    return "UNIQUE constraint failed: idempotency_keys.key" in text


#: SQLSTATEs raised by the PL/pgSQL ledger functions, and the errors they stand for.
_NATIVE_ERRORS: dict[str, type[QubixError]] = {
    "QX001": InsufficientFunds,
    "QX002": UnknownAccount,
    "QX003": UnknownJob,
    "QX004": InvalidState,
    "QX005": IdempotencyConflict,
    "QX006": AmountTooLarge,
}


#: Retried: serialization failure, deadlock, lock timeout, and an idempotency key taken by a
#: concurrent twin (QX007), whose receipt the retry then replays.
_TRANSIENT = frozenset({"40001", "40P01", "55P03", "QX007"})


def _domain_error(exc: BaseException | None) -> QubixError | None:
    """The typed error a ledger function raised, from the driver's exception."""
    error = _NATIVE_ERRORS.get(getattr(exc, "sqlstate", None) or "")
    if error is None:
        return None
    diag = exc.diag  # type: ignore[union-attr]
    return error(diag.message_primary or "", **json.loads(diag.message_detail or "{}"))


def _is_transient(driver_error: BaseException | None) -> bool:
    if getattr(driver_error, "sqlstate", None) in _TRANSIENT:
        return True
    return "database is locked" in str(driver_error)  # SQLite past its busy timeout


class _Work:
    """The movements of one operation, written inside its transaction."""

    def __init__(self, session: AsyncSession, key: str) -> None:
        self.session = session
        self.key = key
        self.entry_ids: list[str] = []
        self.accounts: dict[str, Account] = {}

    async def lock(self, account_ids: Iterable[str]) -> dict[str, Account]:
        ids = sorted(set(account_ids))
        rows = (
            await self.session.execute(
                select(Account).where(Account.id.in_(ids)).order_by(Account.id).with_for_update()
            )
        ).scalars()
        self.accounts.update({row.id: row for row in rows})
        missing = [i for i in ids if i not in self.accounts]
        if missing:
            raise UnknownAccount(f"no ledger account {missing[0]!r}", account=missing[0])
        return self.accounts

    def move(
        self,
        debit: str,
        credit: str,
        amount: int,
        entry_type: EntryType,
        *,
        user_id: str | None,
        job_id: str | None = None,
        qubic_tx_hash: str | None = None,
    ) -> None:
        if amount == 0:
            return
        source, target = self.accounts[debit], self.accounts[credit]
        if source.kind != AccountKind.EXTERNAL and source.balance < amount:
            raise InsufficientFunds(
                f"account {debit} holds {source.balance} QU, {amount} QU needed",
                account=debit,
                balance=source.balance,
                needed=amount,
            )
        if target.balance + amount > INT64_MAX:
            raise AmountTooLarge(
                f"account {credit} would exceed the largest storable balance",
                account=credit,
                max=INT64_MAX,
            )
        source.balance -= amount
        target.balance += amount
        entry = Transaction(
            id=new_id(),
            user_id=user_id,
            job_id=job_id,
            debit_account_id=debit,
            credit_account_id=credit,
            type=entry_type,
            amount=amount,
            qubic_tx_hash=qubic_tx_hash,
            idempotency_key=self.key,
            completed_at=utcnow(),
        )
        self.session.add(entry)
        self.entry_ids.append(entry.id)

    async def lock_job(self, job_id: str) -> Job:
        job = (
            await self.session.execute(select(Job).where(Job.id == job_id).with_for_update())
        ).scalar_one_or_none()
        if job is None:
            raise UnknownJob(f"no job {job_id!r}", job_id=job_id)
        return job


class Ledger:
    """Deposits, withdrawals, escrow and settlement of jobs, each idempotent by key."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        platform_fee_bps: int = 0,
        max_attempts: int = 20,
        native: bool | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._engine: AsyncEngine = sessionmaker.kw["bind"]
        self._autocommit = autocommit_engine(self._engine)
        #: Reads that lock nothing: without a transaction around them (on PostgreSQL).
        self._reads = autocommit_sessions(sessionmaker)
        self.platform_fee_bps = platform_fee_bps
        self._max_attempts = max_attempts
        #: PostgreSQL runs each operation as one call to its PL/pgSQL function (created by the
        #: migrations); other databases run the same steps here in Python. None: decide on use.
        self._native: bool | None = native

    # ------------------------------------------------------------------ engine room

    async def _execute(
        self,
        operation: str,
        key: str,
        params: dict[str, Any],
        work: Callable[[_Work], Awaitable[Receipt]],
        native: tuple[str, dict[str, Any]],
        within: Within | None = None,
        session: AsyncSession | None = None,
        only_if: Condition | None = None,
        then: Then | None = None,
    ) -> Receipt:
        if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH:
            raise InvalidIdempotencyKey(
                f"an idempotency key must be 1 to {MAX_KEY_LENGTH} characters", field="key"
            )
        hashed = request_hash(operation, params)
        if session is not None:
            # Inside the caller's transaction: no retry of its own (a transient failure rolls
            # that whole transaction back; the caller tries it again, see ``retryable``).
            try:
                receipt = await self._attempt(session, operation, key, hashed, work, native)
            except DBAPIError as exc:
                domain = _domain_error(exc.orig)
                if domain is not None:
                    raise domain from None
                raise
            if within is not None and not receipt.replayed:
                await within(session)
            return receipt
        for attempt in range(self._max_attempts):
            try:
                if within is None and self._is_native():
                    # The hot path: one function call is one statement is one transaction,
                    # so it runs in autocommit: a single round trip, no BEGIN/COMMIT.
                    return await self._call_raw(native, key, hashed, only_if, then)
                async with self._sessionmaker() as own, own.begin():
                    receipt = await self._attempt(own, operation, key, hashed, work, native)
                    if within is not None and not receipt.replayed:
                        await within(own)
                return receipt
            except IntegrityError as exc:
                if not _is_key_collision(exc):
                    raise
                # The twin committed first: the next attempt replays its receipt.
            except (psycopg.Error, DBAPIError) as exc:  # raw hot path, or through SQLAlchemy
                driver_error = exc.orig if isinstance(exc, DBAPIError) else exc
                domain = _domain_error(driver_error)
                if domain is not None:
                    raise domain from None
                if not _is_transient(driver_error) or attempt == self._max_attempts - 1:
                    raise
                await asyncio.sleep(random.uniform(0, 0.002 * 2 ** min(attempt, 8)))
        raise RuntimeError(f"{operation} {key!r} did not settle after {self._max_attempts} tries")

    async def _attempt(
        self,
        session: AsyncSession,
        operation: str,
        key: str,
        request_hash: str,
        work: Callable[[_Work], Awaitable[Receipt]],
        native: tuple[str, dict[str, Any]],
    ) -> Receipt:
        """One try of the operation in ``session``'s transaction (replayed if its key was used)."""
        if self._is_native():
            function, args = native
            return await self._call(session, function, key, request_hash, args)
        prior = await session.get(IdempotencyKey, key)
        if prior is not None:
            return self._replay(prior, operation, request_hash)
        claim = IdempotencyKey(key=key, operation=operation, request_hash=request_hash)
        session.add(claim)
        await session.flush()  # a concurrent twin now waits on this row
        receipt = await work(_Work(session, key))
        claim.response = receipt.to_json()
        return receipt

    @staticmethod
    def retryable(error: BaseException) -> bool:
        """Whether a transaction that ran ledger operations (``session=``) and failed with
        ``error`` may simply run again: a serialization failure, a deadlock, a lock timeout, or
        an idempotency key a concurrent twin claimed first (the next try replays its answer)."""
        if isinstance(error, IntegrityError) and _is_key_collision(error):
            return True
        if isinstance(error, DBAPIError):
            return _is_transient(error.orig)
        return isinstance(error, psycopg.Error) and _is_transient(error)

    def _is_native(self) -> bool:
        if self._native is None:
            self._native = self._engine.dialect.name == "postgresql"
        return self._native

    @property
    def native(self) -> bool:
        """Whether operations run as the PL/pgSQL functions of the migrations (PostgreSQL)."""
        return self._is_native()

    @staticmethod
    def native_error(error: BaseException) -> QubixError | None:
        """The typed error a PL/pgSQL ledger function raised, from the driver's exception (a
        caller that runs those functions itself, e.g. inside ``qubix_create_job``)."""
        return _domain_error(error.orig if isinstance(error, DBAPIError) else error)

    async def _call_raw(
        self,
        native: tuple[str, dict[str, Any]],
        key: str,
        request_hash: str,
        only_if: Condition | None = None,
        then: Then | None = None,
    ) -> Receipt:
        """Call a ledger function straight through psycopg on a pooled autocommit connection;
        with ``only_if``, in the same statement only if that condition holds (else
        :class:`Skipped`); with ``then``, that statement behind it in the same round trip
        (:func:`.pipelined`).

        One statement is one transaction, so autocommit costs a single round trip; skipping the
        SQL layer here matters because this is every money-moving request's path.
        """
        function, args = native
        statement = f"{function}({', '.join(['%s'] * (len(args) + 2))})"
        values = [key, request_hash, *args.values()]
        if only_if is None:
            statement = f"SELECT {statement}"
        else:
            statement = f"SELECT CASE WHEN {only_if.sql} THEN {statement} END"
            values = [*only_if.values, *values]
        statements: list[tuple[str, Any]] = [(statement, values)]
        if then is not None:
            statements.append((then.sql, then.params))
        async with driver_connection(self._autocommit) as driver:
            row, *after = await pipelined(driver, *statements)
        if then is not None:
            then.row = after[0]
        assert row is not None
        if row[0] is None:
            raise Skipped(f"{function} {key!r}: its condition did not hold")
        return Receipt.from_function(row[0])

    @staticmethod
    async def _call(
        session: AsyncSession,
        function: str,
        key: str,
        request_hash: str,
        args: dict[str, Any],
    ) -> Receipt:
        names = ", ".join(f":{name}" for name in args)
        statement = text(f"SELECT {function}(:key, :request_hash, {names})")
        data = (
            await session.execute(statement, {"key": key, "request_hash": request_hash, **args})
        ).scalar_one()
        return Receipt.from_function(data)

    @staticmethod
    def _replay(prior: IdempotencyKey, operation: str, request_hash: str) -> Receipt:
        if prior.operation != operation or prior.request_hash != request_hash:
            raise IdempotencyConflict(
                f"idempotency key {prior.key!r} was already used for a different request",
                key=prior.key,
                operation=prior.operation,
            )
        return Receipt.from_json(prior.response, replayed=True)

    # ------------------------------------------------------------------ wallets

    async def deposit(
        self, user_id: str, amount: int, *, idempotency_key: str, qubic_tx_hash: str | None = None
    ) -> Receipt:
        """Credit QU that arrived from outside (the chain) to a user's wallet."""
        return await self._transfer("deposit", user_id, amount, idempotency_key, qubic_tx_hash)

    async def withdraw(
        self,
        user_id: str,
        amount: int,
        *,
        idempotency_key: str,
        qubic_tx_hash: str | None = None,
        within: Within | None = None,
    ) -> Receipt:
        """Debit a user's wallet for QU leaving to the chain.

        ``within`` runs inside the same transaction, so a payout outbox row commits or rolls back
        together with the debit: money never leaves the ledger without a payout to send it.
        """
        return await self._transfer(
            "withdraw", user_id, amount, idempotency_key, qubic_tx_hash, within
        )

    async def _transfer(
        self,
        operation: str,
        user_id: str,
        amount: int,
        key: str,
        qubic_tx_hash: str | None,
        within: Within | None = None,
    ) -> Receipt:
        """QU between a wallet and the outside world (``deposit`` in, ``withdraw`` out)."""
        require_amount(amount)
        wallet = wallet_account_id(user_id)
        inbound = operation == "deposit"

        async def work(w: _Work) -> Receipt:
            await w.lock([wallet, EXTERNAL_ACCOUNT_ID])
            debit, credit = (
                (EXTERNAL_ACCOUNT_ID, wallet) if inbound else (wallet, EXTERNAL_ACCOUNT_ID)
            )
            entry_type = EntryType.DEPOSIT if inbound else EntryType.WITHDRAWAL
            w.move(debit, credit, amount, entry_type, user_id=user_id, qubic_tx_hash=qubic_tx_hash)
            return Receipt(
                operation,
                w.key,
                {"amount": amount, "balance": w.accounts[wallet].balance},
                tuple(w.entry_ids),
                user_id=user_id,
            )

        params = {"user_id": user_id, "amount": amount, "qubic_tx_hash": qubic_tx_hash}
        args = {"op": operation, "user": user_id, "amount": amount, "tx": qubic_tx_hash}
        return await self._execute(operation, key, params, work, ("qubix_transfer", args), within)

    # ------------------------------------------------------------------ escrow

    @staticmethod
    def _require_open(job: Job) -> None:
        if job.status in TERMINAL_JOB_STATES:
            raise InvalidState(
                f"job {job.id} is {job.status.value}; its escrow is settled",
                job_id=job.id,
                status=job.status.value,
            )

    async def lock_escrow(
        self,
        job_id: str,
        amount: int,
        *,
        idempotency_key: str,
        session: AsyncSession | None = None,
    ) -> Receipt:
        """Move ``amount`` from the consumer's wallet into the job's escrow (may top it up).

        ``session``: run in that session's transaction (commits or rolls back with it)."""
        return await self._escrow("lock_escrow", job_id, amount, idempotency_key, session)

    async def release_escrow(
        self,
        job_id: str,
        amount: int,
        *,
        idempotency_key: str,
        session: AsyncSession | None = None,
    ) -> Receipt:
        """Give part of an open job's escrow back (e.g. the excess once a cheaper offer is
        assigned than the max price that was locked); ``session`` as for :meth:`lock_escrow`."""
        return await self._escrow("release_escrow", job_id, amount, idempotency_key, session)

    async def _escrow(
        self,
        operation: str,
        job_id: str,
        amount: int,
        key: str,
        session: AsyncSession | None = None,
    ) -> Receipt:
        """QU between an open job's consumer wallet and its escrow, either way."""
        require_amount(amount)
        escrow = escrow_account_id(job_id)
        locking = operation == "lock_escrow"

        async def work(w: _Work) -> Receipt:
            job = await w.lock_job(job_id)
            self._require_open(job)
            wallet = wallet_account_id(job.user_id)
            await w.lock([wallet, escrow])
            debit, credit = (wallet, escrow) if locking else (escrow, wallet)
            entry_type = EntryType.ESCROW_LOCK if locking else EntryType.ESCROW_RELEASE
            w.move(debit, credit, amount, entry_type, user_id=job.user_id, job_id=job_id)
            return Receipt(
                operation,
                w.key,
                {"amount": amount, "escrow": w.accounts[escrow].balance},
                tuple(w.entry_ids),
                job_id=job_id,
                user_id=job.user_id,
            )

        params = {"job_id": job_id, "amount": amount}
        args = {"op": operation, "job": job_id, "amount": amount}
        native = ("qubix_escrow", args)
        return await self._execute(operation, key, params, work, native, session=session)

    async def charge(
        self,
        job_id: str,
        *,
        seconds: int,
        idempotency_key: str,
        final_status: JobStatus = JobStatus.COMPLETED,
        error: str | None = None,
        within: Within | None = None,
    ) -> Receipt:
        """Settle a job: ``ceil(price × seconds / 3600)`` (never above the escrow) goes to the
        provider less the platform fee, the rest of the escrow back to the consumer, and the job
        becomes ``final_status`` in the same transaction (``within`` runs in it too, once: not
        when the key's answer is replayed)."""
        params, args = self._settle_args("charge", job_id, seconds, final_status, error)
        escrow = escrow_account_id(job_id)
        fee_bps = self.platform_fee_bps

        async def work(w: _Work) -> Receipt:
            job = await w.lock_job(job_id)
            self._require_open(job)
            if job.provider_id is None or job.price_per_hour is None:
                raise InvalidState(
                    f"job {job_id} has no provider and price yet; refund it instead",
                    job_id=job_id,
                )
            provider = await w.session.get(Provider, job.provider_id)
            assert provider is not None  # foreign key
            consumer_wallet = wallet_account_id(job.user_id)
            provider_wallet = wallet_account_id(provider.user_id)
            await w.lock([consumer_wallet, provider_wallet, PLATFORM_ACCOUNT_ID, escrow])
            held = w.accounts[escrow].balance
            split = split_charge(
                escrow=held,
                price_per_hour=job.price_per_hour,
                seconds=seconds,
                platform_fee_bps=fee_bps,
            )
            pay = functools.partial(w.move, escrow, job_id=job_id)
            pay(provider_wallet, split.provider, EntryType.EARNING, user_id=provider.user_id)
            pay(PLATFORM_ACCOUNT_ID, split.fee, EntryType.FEE, user_id=None)
            pay(consumer_wallet, split.refund, EntryType.ESCROW_RELEASE, user_id=job.user_id)
            await self._finish(w.session, job, final_status, split.cost, error)
            if split.provider:
                await w.session.execute(
                    update(Provider)
                    .where(Provider.id == provider.id)
                    .values(total_earnings=Provider.total_earnings + split.provider)
                )
            return Receipt(
                "charge",
                w.key,
                dataclasses.asdict(split),
                tuple(w.entry_ids),
                job_id=job_id,
                user_id=job.user_id,
            )

        native = ("qubix_settle", args)
        return await self._execute("charge", idempotency_key, params, work, native, within)

    def _settle_args(
        self,
        operation: str,
        job_id: str,
        seconds: int,
        final_status: JobStatus,
        error: str | None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """A charge's or refund's parameters (what its key's request hash covers) and the
        arguments of ``qubix_settle`` after the key and the hash; bad ones refused first."""
        charging = operation == "charge"
        if charging:
            require_amount(seconds, name="seconds", allow_zero=True)
        if final_status not in TERMINAL_JOB_STATES:
            raise InvalidState(
                f"a {operation} ends a job; {final_status.value} is not an end state"
            )
        params: dict[str, Any] = {"job_id": job_id}
        if charging:
            params["seconds"] = seconds
        params |= {"final_status": final_status.value, "error": error}
        args = {
            "op": operation,
            "job": job_id,
            "seconds": seconds if charging else 0,
            "fee": self.platform_fee_bps if charging else 0,
            "status": final_status.value,
            "error": error,
        }
        return params, args

    async def end_job(
        self,
        job_id: str,
        *,
        operation: str,
        idempotency_key: str,
        final_status: JobStatus,
        error: str | None = None,
        seconds: int = 0,
        result: Any = None,
        only_if: Condition | None = None,
        then: Then | None = None,
    ) -> Receipt:
        """PostgreSQL only: :meth:`charge` (``operation="charge"``) or :meth:`refund` a job and,
        in the same single call (``qubix_end_job``), store its ``result`` (when not None) and
        free the provider that holds it. Same key, same receipt, as :meth:`charge` /
        :meth:`refund`: a replay moves nothing and changes nothing. ``only_if``: a condition
        checked in the same statement first (it may lock the job's row); when it does not hold
        nothing is done and :class:`Skipped` is raised. ``then``: a statement (a read of the job)
        sent behind the call in the same round trip and transaction, its row kept in
        ``then.row``."""
        if not self._is_native():
            raise RuntimeError("end_job runs on PostgreSQL; elsewhere use charge/refund within")
        if operation not in ("charge", "refund"):
            raise ValueError(f"a job ends with a charge or a refund, not {operation!r}")
        params, args = self._settle_args(operation, job_id, seconds, final_status, error)
        args |= {
            "keep": result is not None,
            "result": None if result is None else json.dumps(result, separators=(",", ":")),
        }

        async def unused(_: _Work) -> Receipt:  # pragma: no cover - only PostgreSQL gets here
            raise AssertionError("end_job has no Python path")

        return await self._execute(
            operation,
            idempotency_key,
            params,
            unused,
            ("qubix_end_job", args),
            only_if=only_if,
            then=then,
        )

    async def refund(
        self,
        job_id: str,
        *,
        idempotency_key: str,
        final_status: JobStatus = JobStatus.FAILED,
        error: str | None = None,
        within: Within | None = None,
    ) -> Receipt:
        """Return a job's whole escrow to the consumer and end the job as ``final_status``
        (``within`` runs in the same transaction, as for :meth:`charge`)."""
        params, args = self._settle_args("refund", job_id, 0, final_status, error)
        escrow = escrow_account_id(job_id)

        async def work(w: _Work) -> Receipt:
            job = await w.lock_job(job_id)
            self._require_open(job)
            wallet = wallet_account_id(job.user_id)
            await w.lock([wallet, escrow])
            held = w.accounts[escrow].balance
            w.move(escrow, wallet, held, EntryType.REFUND, user_id=job.user_id, job_id=job_id)
            await self._finish(w.session, job, final_status, 0, error)
            return Receipt(
                "refund",
                w.key,
                {"refund": held},
                tuple(w.entry_ids),
                job_id=job_id,
                user_id=job.user_id,
            )

        return await self._execute(
            "refund", idempotency_key, params, work, ("qubix_settle", args), within
        )

    @staticmethod
    async def _finish(
        session: AsyncSession, job: Job, status: JobStatus, cost: int, error: str | None
    ) -> None:
        job.status = status
        job.actual_cost = cost
        job.completed_at = utcnow()
        if error is not None:
            job.error = error
        if job.provider_id is not None:
            await session.execute(
                update(Provider)
                .where(Provider.id == job.provider_id)
                .values(total_jobs=Provider.total_jobs + 1)
            )

    # ------------------------------------------------------------------ reads

    async def balance(self, account_id: str) -> int:
        async with self._sessionmaker() as session:
            account = await session.get(Account, account_id)
            if account is None:
                raise UnknownAccount(f"no ledger account {account_id!r}", account=account_id)
            return account.balance

    async def wallet_balance(self, user_id: str) -> int:
        return await self.balance(wallet_account_id(user_id))

    async def wallet_balances(self, user_ids: Iterable[str]) -> dict[str, int]:
        """Users' wallet balances in one read (user id → QU); unknown accounts are refused."""
        wanted = {wallet_account_id(user): user for user in user_ids}
        if self._is_native():  # after every job's create and end: the driver's statement
            async with driver_connection(self._autocommit) as driver:
                cursor = await driver.execute(
                    "SELECT id, balance FROM accounts WHERE id = ANY(%s)", (list(wanted),)
                )
                rows: Iterable[Any] = await cursor.fetchall()
        else:
            async with self._reads() as session:
                rows = await session.execute(
                    select(Account.id, Account.balance).where(Account.id.in_(wanted))
                )
        found = {wanted[account]: int(balance) for account, balance in rows}
        missing = sorted(set(wanted.values()) - set(found))
        if missing:
            account = wallet_account_id(missing[0])
            raise UnknownAccount(f"no ledger account {account!r}", account=account)
        return found

    async def escrow_balance(self, job_id: str) -> int:
        async with self._sessionmaker() as session:
            account = await session.get(Account, escrow_account_id(job_id))
            return 0 if account is None else account.balance


@dataclasses.dataclass(frozen=True, slots=True)
class AuditReport:
    """The five ledger invariants of DESIGN.md §4, recomputed from the entries."""

    accounts: int
    entries: int
    internal_total: int
    deposits: int
    withdrawals: int
    violations: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.violations


async def audit(session: AsyncSession) -> AuditReport:
    """Recompute every invariant from the raw entries; an empty ``violations`` means all hold."""
    violations: list[str] = []
    credits = dict(
        (
            await session.execute(
                select(Transaction.credit_account_id, func.sum(Transaction.amount)).group_by(
                    Transaction.credit_account_id
                )
            )
        ).all()
    )
    debits = dict(
        (
            await session.execute(
                select(Transaction.debit_account_id, func.sum(Transaction.amount)).group_by(
                    Transaction.debit_account_id
                )
            )
        ).all()
    )
    accounts = (await session.execute(select(Account))).scalars().all()
    internal_total = 0
    for account in accounts:
        derived = int(credits.get(account.id) or 0) - int(debits.get(account.id) or 0)
        if account.balance != derived:  # 1. balance == Σ credits − Σ debits
            violations.append(f"{account.id}: cached {account.balance} != entries {derived}")
        if account.kind != AccountKind.EXTERNAL:
            internal_total += account.balance
            if account.balance < 0:  # 3. no internal account negative
                violations.append(f"{account.id}: negative balance {account.balance}")

    by_type = dict(
        (
            await session.execute(
                select(Transaction.type, func.sum(Transaction.amount)).group_by(Transaction.type)
            )
        ).all()
    )
    deposits = int(by_type.get(EntryType.DEPOSIT) or 0)
    withdrawals = int(by_type.get(EntryType.WITHDRAWAL) or 0)
    if internal_total != deposits - withdrawals:  # 2. money never created or lost
        violations.append(
            f"internal total {internal_total} != deposits {deposits} - withdrawals {withdrawals}"
        )

    open_escrows = (
        await session.execute(
            select(Account.id, Account.balance, Job.status)
            .join(Job, Job.id == Account.job_id)
            .where(Account.kind == AccountKind.ESCROW, Job.status.in_(TERMINAL_JOB_STATES))
            .where(Account.balance != 0)
        )
    ).all()
    for account_id, held, status in open_escrows:  # 4. terminal jobs hold no escrow
        violations.append(f"{account_id}: job is {status} but escrow holds {held}")

    per_key = dict(
        (
            await session.execute(
                select(Transaction.idempotency_key, func.count()).group_by(
                    Transaction.idempotency_key
                )
            )
        ).all()
    )
    keys = (await session.execute(select(IdempotencyKey))).scalars().all()
    for key in keys:  # 5. a request moved money exactly as its one receipt says
        recorded = len(key.response["entry_ids"]) if key.response else 0
        if per_key.get(key.key, 0) != recorded:
            violations.append(
                f"key {key.key}: {per_key.get(key.key, 0)} entries, receipt names {recorded}"
            )
    entries = sum(per_key.values())
    return AuditReport(
        accounts=len(accounts),
        entries=entries,
        internal_total=internal_total,
        deposits=deposits,
        withdrawals=withdrawals,
        violations=tuple(violations),
    )


__all__ = [
    "MAX_KEY_LENGTH",
    "AuditReport",
    "InvalidIdempotencyKey",
    "Ledger",
    "Receipt",
    "audit",
]
