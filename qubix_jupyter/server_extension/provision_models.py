"""Bodies and answers of the provisioning-token routes (``providers/provision-tokens``)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field

from .auth import PROVISION_TTL_DEFAULT, PROVISION_TTL_MAX, PROVISION_TTL_MIN
from .models import Request, Response


class ProvisionTokenRequest(Request):
    ttlSeconds: int = Field(
        default=PROVISION_TTL_DEFAULT,
        ge=PROVISION_TTL_MIN,
        le=PROVISION_TTL_MAX,
        description="seconds the token stays valid: at least a minute, at most 30 days "
        "(default a day)",
    )


class ProvisionTokenOut(Response):
    """A provisioning token as its owner sees it; the token itself is shown only at issue."""

    id: str
    status: Literal["active", "expired", "revoked"]
    createdAt: dt.datetime
    expiresAt: dt.datetime
    revokedAt: dt.datetime | None
    lastUsedAt: dt.datetime | None = Field(description="its most recent registration")
    useCount: int = Field(description="registrations made with it")


class ProvisionTokenIssued(Response):
    token: str = Field(
        description="qxp_…: give it to `qubix provide --market URL --token …` on the machine "
        "to share; it registers providers paid to your wallet until it expires or you revoke "
        "it, and opens nothing else. Shown once."
    )
    provisionToken: ProvisionTokenOut


class ProvisionTokenList(Response):
    items: list[ProvisionTokenOut] = Field(description="yours, newest first")


class ProvisionTokenRevoked(Response):
    success: bool
    provisionToken: ProvisionTokenOut
