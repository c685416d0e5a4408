"""Persistence of the market's login: challenges, users created at first connect, tokens.

Each method is one short transaction. Times are compared inside SQL against the caller's ``now``
(UTC), so SQLite, which keeps timestamps as text without an offset, and PostgreSQL agree.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Collection
from typing import Any, cast

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.engine import CursorResult, Result
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .auth_models import ApiToken, LoginChallenge, ProvisionToken, WorkerToken
from .chunks import chunks
from .engine import autocommit_sessions
from .models import Provider, User
from .repositories import create_user


def _rowcount(result: Result[Any]) -> int:
    # UPDATE answers with a cursor result; the generic Result type does not show its rowcount.
    return cast("CursorResult[Any]", result).rowcount


@dataclasses.dataclass(frozen=True, slots=True)
class Connected:
    user: User
    created: bool  # True when this connect created the user


@dataclasses.dataclass(frozen=True, slots=True)
class TokenOwner:
    user: User
    token_id: str
    expires_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerOwner:
    """The provider a live worker token stands for."""

    provider_id: str
    worker_id: str
    user_id: str
    token_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class ProvisionRecord:
    """A provisioning token as its owner sees it (never the token itself)."""

    id: str
    user_id: str
    created_at: dt.datetime
    expires_at: dt.datetime
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None
    use_count: int

    @classmethod
    def of(cls, row: ProvisionToken) -> ProvisionRecord:
        return cls(
            row.id,
            row.user_id,
            row.created_at,
            row.expires_at,
            row.revoked_at,
            row.last_used_at,
            row.use_count,
        )


async def note_provision_use(session: AsyncSession, token_id: str, *, now: dt.datetime) -> None:
    """Count a registration made with provisioning token ``token_id``, in the caller's
    transaction (the registration's)."""
    await session.execute(
        update(ProvisionToken)
        .where(ProvisionToken.id == token_id)
        .values(last_used_at=now, use_count=ProvisionToken.use_count + 1)
    )


async def add_worker_token(
    session: AsyncSession, provider_id: str, token_hash: str, *, now: dt.datetime
) -> None:
    """Store a new worker token for ``provider_id`` and revoke its earlier ones, in the caller's
    transaction (the registration that issues it): one live token per provider."""
    await session.execute(
        update(WorkerToken)
        .where(WorkerToken.provider_id == provider_id, WorkerToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    session.add(WorkerToken(provider_id=provider_id, token_hash=token_hash, created_at=now))
    await session.flush()


#: Built once, as the next: a wave of clients reconnecting after a restart runs it thousands of
#: times a second.
_TOKEN_OWNERS = (
    select(ApiToken.token_hash, User, ApiToken.id, ApiToken.expires_at)
    .join(ApiToken, ApiToken.user_id == User.id)
    .where(
        ApiToken.token_hash.in_(bindparam("hashes", expanding=True)),
        ApiToken.revoked_at.is_(None),
        ApiToken.expires_at > bindparam("now"),
    )
)

#: Built once (every provider's first heartbeat after a restart runs it).
_WORKER_OWNERS = (
    select(
        WorkerToken.token_hash, Provider.id, Provider.worker_id, Provider.user_id, WorkerToken.id
    )
    .join(WorkerToken, WorkerToken.provider_id == Provider.id)
    .where(
        WorkerToken.token_hash.in_(bindparam("hashes", expanding=True)),
        WorkerToken.revoked_at.is_(None),
    )
)


class AuthStore:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessionmaker = sessionmaker
        #: The token lookups of every request: reads only, without a transaction around them.
        self._reads = autocommit_sessions(sessionmaker)

    async def add_challenge(
        self, challenge: str, qubic_address: str, *, now: dt.datetime, expires_at: dt.datetime
    ) -> None:
        async with self._sessionmaker() as session, session.begin():
            # Sweeping here keeps the table as small as the number of challenges in flight.
            await session.execute(delete(LoginChallenge).where(LoginChallenge.expires_at <= now))
            session.add(
                LoginChallenge(
                    challenge=challenge,
                    qubic_address=qubic_address,
                    created_at=now,
                    expires_at=expires_at,
                )
            )

    async def open_challenge_address(self, challenge: str, *, now: dt.datetime) -> str | None:
        """The identity an unused, unexpired ``challenge`` was issued to, else None."""
        async with self._sessionmaker() as session:
            return (
                await session.execute(
                    select(LoginChallenge.qubic_address).where(
                        LoginChallenge.challenge == challenge,
                        LoginChallenge.used_at.is_(None),
                        LoginChallenge.expires_at > now,
                    )
                )
            ).scalar_one_or_none()

    async def connect(
        self,
        challenge: str,
        qubic_address: str,
        *,
        token_hash: str,
        now: dt.datetime,
        token_expires_at: dt.datetime,
    ) -> Connected | None:
        """Consume the challenge, find or create the user, store the token: all or nothing.

        None when the challenge is unknown, used, expired or was issued to another identity.
        """
        for attempt in range(2):
            try:
                return await self._connect_once(
                    challenge, qubic_address, token_hash, now, token_expires_at
                )
            except IntegrityError:
                # Two first connects of one identity raced to create its user: the loser's
                # transaction (challenge included) rolled back; the second try finds the user.
                if attempt:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _connect_once(
        self,
        challenge: str,
        qubic_address: str,
        token_hash: str,
        now: dt.datetime,
        token_expires_at: dt.datetime,
    ) -> Connected | None:
        async with self._sessionmaker() as session, session.begin():
            consumed = await session.execute(
                update(LoginChallenge)
                .where(
                    LoginChallenge.challenge == challenge,
                    LoginChallenge.qubic_address == qubic_address,
                    LoginChallenge.used_at.is_(None),
                    LoginChallenge.expires_at > now,
                )
                .values(used_at=now)
            )
            if _rowcount(consumed) != 1:
                return None
            user = (
                await session.execute(select(User).where(User.qubic_address == qubic_address))
            ).scalar_one_or_none()
            created = user is None
            if user is None:
                user = await create_user(session, qubic_address)
            session.add(
                ApiToken(
                    user_id=user.id,
                    token_hash=token_hash,
                    created_at=now,
                    expires_at=token_expires_at,
                )
            )
            await session.flush()
            return Connected(user, created)

    async def token_owners(
        self, token_hashes: Collection[str], *, now: dt.datetime
    ) -> dict[str, TokenOwner]:
        """The user of each live (unrevoked, unexpired) token among these; others are absent."""
        found: dict[str, TokenOwner] = {}
        hashes = sorted(token_hashes)
        async with self._reads() as session:
            for chunk in chunks(hashes):
                rows = await session.execute(_TOKEN_OWNERS, {"hashes": list(chunk), "now": now})
                for token_hash, user, token_id, expires_at in rows:
                    found[token_hash] = TokenOwner(user, token_id, expires_at)
        return found

    async def revoke(self, token_id: str, *, now: dt.datetime) -> bool:
        async with self._sessionmaker() as session, session.begin():
            result = await session.execute(
                update(ApiToken)
                .where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            return _rowcount(result) == 1

    async def worker_owners(self, token_hashes: Collection[str]) -> dict[str, WorkerOwner]:
        """The provider of each live (unrevoked) worker token among these; others are absent."""
        found: dict[str, WorkerOwner] = {}
        hashes = sorted(token_hashes)
        async with self._reads() as session:
            for chunk in chunks(hashes):
                rows = await session.execute(_WORKER_OWNERS, {"hashes": list(chunk)})
                for token_hash, *owner in rows:
                    found[token_hash] = WorkerOwner(*owner)
        return found

    # ------------------------------------------------------------------ provisioning tokens

    async def add_provision_token(
        self, user_id: str, token_hash: str, *, now: dt.datetime, expires_at: dt.datetime
    ) -> ProvisionRecord:
        async with self._sessionmaker() as session, session.begin():
            row = ProvisionToken(
                user_id=user_id,
                token_hash=token_hash,
                created_at=now,
                expires_at=expires_at,
                use_count=0,
            )
            session.add(row)
            await session.flush()
            return ProvisionRecord.of(row)

    async def provision_owner(
        self, token_hash: str, *, now: dt.datetime
    ) -> tuple[User, ProvisionRecord] | None:
        """The user of a live (unrevoked, unexpired) provisioning token, and the token."""
        async with self._sessionmaker() as session:
            row = (
                await session.execute(
                    select(User, ProvisionToken)
                    .join(ProvisionToken, ProvisionToken.user_id == User.id)
                    .where(
                        ProvisionToken.token_hash == token_hash,
                        ProvisionToken.revoked_at.is_(None),
                        ProvisionToken.expires_at > now,
                    )
                )
            ).one_or_none()
            return None if row is None else (row[0], ProvisionRecord.of(row[1]))

    async def provision_tokens(self, user_id: str) -> list[ProvisionRecord]:
        """The user's provisioning tokens, newest first."""
        async with self._sessionmaker() as session:
            rows = await session.scalars(
                select(ProvisionToken)
                .where(ProvisionToken.user_id == user_id)
                .order_by(ProvisionToken.created_at.desc(), ProvisionToken.id.desc())
            )
            return [ProvisionRecord.of(row) for row in rows]

    async def revoke_provision_token(
        self, user_id: str, token_id: str, *, now: dt.datetime
    ) -> ProvisionRecord | None:
        """Revoke the user's token ``token_id`` (again: no change); None when it is not theirs."""
        async with self._sessionmaker() as session, session.begin():
            await session.execute(
                update(ProvisionToken)
                .where(
                    ProvisionToken.id == token_id,
                    ProvisionToken.user_id == user_id,
                    ProvisionToken.revoked_at.is_(None),
                )
                .values(revoked_at=now)
            )
            row = (
                await session.scalars(
                    select(ProvisionToken).where(
                        ProvisionToken.id == token_id, ProvisionToken.user_id == user_id
                    )
                )
            ).one_or_none()
            return None if row is None else ProvisionRecord.of(row)
