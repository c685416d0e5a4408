"""Provisioning tokens: a credential a user hands to a machine they want to share.

``qubix provide --market URL --token qxp_…`` registers that machine's GPUs (one provider per GPU,
again on every restart) for the token's owner, without the wallet's seed ever reaching it. The
token opens ``POST providers/quick-register`` and nothing else; it is stored hashed, expires, and
its owner can list and revoke it here (with the market token from wallet connect).
"""

from __future__ import annotations

import datetime as dt
import uuid

from pydantic import BaseModel

from ..db.auth_store import ProvisionRecord
from ..market.errors import QubixError
from . import provision_models as p
from .endpoints import Call, _utc, _utc_or_none
from .route import Route


class UnknownProvisionToken(QubixError):
    """No provisioning token of yours with that id (another user's is not told apart)."""

    code = "unknown_provision_token"
    status = 404


def token_out(record: ProvisionRecord, now: dt.datetime | None = None) -> p.ProvisionTokenOut:
    now = now or dt.datetime.now(dt.UTC)
    expires_at = _utc(record.expires_at)
    if record.revoked_at is not None:
        status = "revoked"
    elif expires_at <= now:
        status = "expired"
    else:
        status = "active"
    return p.ProvisionTokenOut(
        id=record.id,
        status=status,
        createdAt=_utc(record.created_at),
        expiresAt=expires_at,
        revokedAt=_utc_or_none(record.revoked_at),
        lastUsedAt=_utc_or_none(record.last_used_at),
        useCount=record.use_count,
    )


async def issue(call: Call) -> BaseModel:
    body: p.ProvisionTokenRequest = call.body
    issued = await call.services.auth.issue_provision_token(call.caller.user.id, body.ttlSeconds)
    return p.ProvisionTokenIssued(token=issued.token, provisionToken=token_out(issued.record))


async def list_tokens(call: Call) -> BaseModel:
    records = await call.services.auth.provision_tokens(call.caller.user.id)
    now = dt.datetime.now(dt.UTC)
    return p.ProvisionTokenList(items=[token_out(r, now) for r in records])


async def revoke(call: Call) -> BaseModel:
    token_id = call.params["tokenId"]
    record = None
    try:
        uuid.UUID(token_id)
    except ValueError:
        pass  # no token has such an id
    else:
        record = await call.services.auth.revoke_provision_token(call.caller.user.id, token_id)
    if record is None:
        raise UnknownProvisionToken(
            f"you have no provisioning token {token_id!r}", tokenId=token_id[:100]
        )
    return p.ProvisionTokenRevoked(success=True, provisionToken=token_out(record))


#: Before ``providers/{workerId}`` in the table, whose pattern would match these paths too.
ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "providers/provision-tokens",
        issue,
        "A provisioning token: lets another machine register providers paid to your wallet "
        "(qubix provide --token), and nothing else; expires, revocable",
        p.ProvisionTokenIssued,
        body=p.ProvisionTokenRequest,
        tag="providers",
    ),
    Route(
        "GET",
        "providers/provision-tokens",
        list_tokens,
        "Your provisioning tokens (never the tokens themselves), newest first",
        p.ProvisionTokenList,
        tag="providers",
    ),
    Route(
        "DELETE",
        r"providers/provision-tokens/(?P<tokenId>[^/]+)",
        revoke,
        "Revoke one of your provisioning tokens: it registers nothing more (providers it "
        "registered keep running on their worker tokens)",
        p.ProvisionTokenRevoked,
        tag="providers",
        errors=(404,),
    ),
)
