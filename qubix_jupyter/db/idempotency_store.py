"""Money-moving API requests by their caller's ``Idempotency-Key``.

A request claims ``(scope, key)`` before it runs and stores its answer after. A retry with the
same key and the same request gets the stored answer; the same key with another request is a
conflict; a retry while the first is still running is told so. A claim whose request never
finished (the server died in between) is taken over after ``stale_after``: the endpoints derive
their ledger keys from the request key, so running it again moves no money twice.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any, cast

from sqlalchemy import delete, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..market.errors import IdempotencyConflict, QubixError
from .auth_models import IdempotentRequest
from .engine import autocommit_engine, autocommit_sessions, driver_connection

#: How often a claim also deletes the answers older than the retention.
SWEEP_EVERY = dt.timedelta(minutes=1)

#: PostgreSQL's claim (parameters: :meth:`Claim.params`) and answer, on the driver's connection
#: (every money-moving request's way).
_CLAIM = (
    "INSERT INTO idempotent_requests (scope, key, request_hash, created_at) "
    "VALUES (%(claim_scope)s, %(claim_key)s, %(claim_hash)s, %(claim_at)s) "
    "ON CONFLICT DO NOTHING"
)
_COMPLETE = (
    "UPDATE idempotent_requests SET status = %s, response = CAST(%s AS json), completed_at = %s "
    "WHERE scope = %s AND key = %s"
)


class RequestInProgress(QubixError):
    code = "request_in_progress"
    status = 409


@dataclasses.dataclass(frozen=True, slots=True)
class Claim:
    """A claim of ``(scope, key)`` to be made by the request's own statement (PostgreSQL, see
    :attr:`IdempotencyStore.folds`): :data:`CLAIMING` in front of it inserts the row, and the
    statement does its work only when the key was free (else :class:`ClaimTaken`)."""

    scope: str
    key: str
    request_hash: str
    at: dt.datetime

    def params(self) -> dict[str, Any]:
        return {
            "claim_scope": self.scope,
            "claim_key": self.key,
            "claim_hash": self.request_hash,
            "claim_at": self.at,
        }


class ClaimTaken(Exception):
    """A statement that was to claim its key found the key taken: nothing else was done. The
    caller claims it the usual way (:meth:`IdempotencyStore.claim`: replay, conflict, …)."""


#: ``CLAIMING + "SELECT CASE WHEN EXISTS (SELECT FROM claim) THEN … END"``: the claim and the
#: request's own work in one statement, one transaction, one round trip (the work's statement
#: takes :meth:`Claim.params` beside its own, in the driver's ``%(name)s`` style).
CLAIMING = f"WITH claim AS ({_CLAIM} RETURNING 1) "


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """The stored answer of a finished request."""

    status: int
    body: Any


class IdempotencyStore:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        stale_after: dt.timedelta = dt.timedelta(minutes=2),
        retention: dt.timedelta = dt.timedelta(days=1),
    ) -> None:
        self._sessionmaker = sessionmaker
        #: The claim and the stored answer are single statements: each commits on its own.
        self._single = autocommit_sessions(sessionmaker)
        engine = sessionmaker.kw["bind"]
        self._driver = autocommit_engine(engine) if engine.dialect.name == "postgresql" else None
        self.stale_after = stale_after
        self.retention = retention
        #: When expired answers were last swept (at most once per ``SWEEP_EVERY``).
        self._swept_at: dt.datetime | None = None

    async def claim(
        self, scope: str, key: str, request_hash: str, *, now: dt.datetime
    ) -> Answer | None:
        """None: the caller runs the request now. An :class:`Answer`: replay it.

        Raises :class:`IdempotencyConflict` (another request under this key) or
        :class:`RequestInProgress` (the first one with this key has not finished yet).
        """
        await self.sweep(now)
        if self._driver is not None:
            async with driver_connection(self._driver) as driver:
                claim = Claim(scope, key, request_hash, now)
                cursor = await driver.execute(_CLAIM, claim.params())
                if cursor.rowcount == 1:
                    return None
        else:
            try:
                async with self._single() as session, session.begin():
                    session.add(
                        IdempotentRequest(
                            scope=scope, key=key, request_hash=request_hash, created_at=now
                        )
                    )
                return None
            except IntegrityError:
                pass
        # The key is taken: by this request's first try, or by another request.
        async with self._sessionmaker() as session, session.begin():
            prior = await session.get(IdempotentRequest, (scope, key), with_for_update=True)
            if prior is None:  # swept or released in between: claim it again
                session.add(
                    IdempotentRequest(
                        scope=scope, key=key, request_hash=request_hash, created_at=now
                    )
                )
                return None
            if prior.request_hash != request_hash:
                raise IdempotencyConflict(
                    f"Idempotency-Key {key!r} was already used for a different request",
                    key=key,
                )
            if prior.status is not None:
                return Answer(prior.status, prior.response)
            created = prior.created_at
            if created.tzinfo is None:
                created = created.replace(tzinfo=dt.UTC)
            if now - created < self.stale_after:
                raise RequestInProgress(
                    f"a request with Idempotency-Key {key!r} is still running: retry shortly",
                    key=key,
                )
            prior.created_at = now  # abandoned by a server that died: this try takes it over
            return None

    @property
    def folds(self) -> bool:
        """Whether a request's own statement may make its claim (:class:`Claim`): PostgreSQL."""
        return self._driver is not None

    async def sweep(self, now: dt.datetime) -> None:
        """Delete the answers older than the retention, at most once per ``SWEEP_EVERY``.

        Run on every claim: that keeps the table as large as a day's money-moving requests,
        and the statement off most requests' way."""
        if self._swept_at is None or abs(now - self._swept_at) >= SWEEP_EVERY:
            self._swept_at = now
            async with self._single() as session, session.begin():
                await session.execute(
                    delete(IdempotentRequest).where(
                        IdempotentRequest.created_at < now - self.retention
                    )
                )

    async def complete(
        self, scope: str, key: str, status: int, body: Any, *, now: dt.datetime
    ) -> None:
        if self._driver is not None:
            async with driver_connection(self._driver) as driver:
                await driver.execute(_COMPLETE, (status, json.dumps(body), now, scope, key))
            return
        async with self._single() as session, session.begin():
            await session.execute(
                update(IdempotentRequest)
                .where(IdempotentRequest.scope == scope, IdempotentRequest.key == key)
                .values(status=status, response=body, completed_at=now)
            )

    async def release(self, scope: str, key: str) -> bool:
        """Forget an unfinished claim (the request failed): a retry runs it again."""
        async with self._sessionmaker() as session, session.begin():
            result = await session.execute(
                delete(IdempotentRequest).where(
                    IdempotentRequest.scope == scope,
                    IdempotentRequest.key == key,
                    IdempotentRequest.status.is_(None),
                )
            )
            return cast("CursorResult[Any]", result).rowcount == 1
