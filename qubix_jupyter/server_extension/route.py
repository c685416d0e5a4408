"""A route of the market API: what one method on one path does, as data.

Each endpoints module keeps its own table of routes (``ROUTES``); ``routes`` assembles them into
the one table that the server registers and OpenAPI documents. Paths are relative to
``{base_url}qubix/api/`` and are tornado patterns whose named groups become the endpoint's
``params`` (and OpenAPI path parameters).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

if TYPE_CHECKING:
    from .endpoints import Call, Held, Reply, TextReply

API_PREFIX = "qubix/api/"

Endpoint = Callable[["Call"], Awaitable["BaseModel | Held | Reply | TextReply"]]

MARKET = frozenset({"market", "both"})
EVERY_ROLE = frozenset({"market", "agent", "both"})

#: Who may call a route: anyone; a signed-in user (bearer token from wallet connect); a
#: provider's worker (the worker token quick-register issued for that provider); the market's
#: operator (Jupyter's own authentication: its token or login cookie, never a market token).
#: A user's provisioning token (``qxp_…``) opens only the user routes marked ``provisioning``.
Auth = Literal["public", "user", "worker", "operator"]

_GROUP = re.compile(r"\(\?P<(?P<name>\w+)>[^)]*\)")


@dataclasses.dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    endpoint: Endpoint
    summary: str
    response: type[BaseModel]
    body: type[BaseModel] | None = None
    #: The query string's model: each field one query parameter (a list field may repeat).
    query: type[BaseModel] | None = None
    auth: Auth = "user"
    #: A user route that also takes the user's provisioning token (``qxp_…``), acting for the
    #: token's owner: ``providers/quick-register`` and nothing else.
    provisioning: bool = False
    #: Money-moving: an ``Idempotency-Key`` header makes a retry answer what the first call did
    #: (same key and body → the same response; another body → 409 ``idempotency_conflict``).
    idempotent: bool = False
    #: An idempotent route whose endpoint makes the key's claim in its own statement when the
    #: store can (``call.claim``, PostgreSQL): one round trip fewer on a job's create.
    claims_in_call: bool = False
    roles: frozenset[str] = MARKET
    tag: str = "market"
    #: Statuses this route answers besides 200, and those every route may (documented too).
    errors: tuple[int, ...] = ()
    #: Statuses besides 200 whose body is still ``response`` (health's 503).
    alt_statuses: tuple[int, ...] = ()
    #: The 200 answer's media type. Anything but JSON is text the endpoint returns as a
    #: :class:`~.endpoints.TextReply` (``response`` is then a string model, for OpenAPI).
    media_type: str = "application/json"

    @property
    def public(self) -> bool:
        return self.auth == "public"

    @property
    def openapi_path(self) -> str:
        """``wallet/(?P<address>[^/]+)/balance`` → ``wallet/{address}/balance``"""
        return _GROUP.sub(lambda m: "{" + m["name"] + "}", self.path)

    @property
    def path_params(self) -> list[str]:
        return [m["name"] for m in _GROUP.finditer(self.path)]
