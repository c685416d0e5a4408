"""The market API's routes, as data: one table that the server registers and OpenAPI documents.

Paths are relative to ``{base_url}qubix/api/`` and are tornado patterns whose named groups
become the endpoint's ``params`` (and OpenAPI path parameters).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable, Iterable

from pydantic import BaseModel

from . import endpoints, models
from . import marketplace_endpoints as market
from . import marketplace_models as market_models

API_PREFIX = "qubix/api/"

Endpoint = Callable[[endpoints.Call], Awaitable[BaseModel | endpoints.Reply]]

MARKET = frozenset({"market", "both"})
EVERY_ROLE = frozenset({"market", "agent", "both"})

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
    public: bool = False
    roles: frozenset[str] = MARKET
    tag: str = "market"
    #: Statuses this route answers besides 200, and those every route may (documented too).
    errors: tuple[int, ...] = ()
    #: Statuses besides 200 whose body is still ``response`` (health's 503).
    alt_statuses: tuple[int, ...] = ()

    @property
    def openapi_path(self) -> str:
        """``wallet/(?P<address>[^/]+)/balance`` → ``wallet/{address}/balance``"""
        return _GROUP.sub(lambda m: "{" + m["name"] + "}", self.path)

    @property
    def path_params(self) -> list[str]:
        return [m["name"] for m in _GROUP.finditer(self.path)]


ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "health",
        endpoints.health,
        "Liveness: version, role and whether the database answers",
        models.HealthResponse,
        public=True,
        roles=EVERY_ROLE,
        tag="meta",
        alt_statuses=(503,),
    ),
    Route(
        "GET",
        "openapi.json",
        endpoints.openapi,
        "This API as an OpenAPI 3.1 document",
        models.OpenAPIDocument,
        public=True,
        roles=EVERY_ROLE,
        tag="meta",
    ),
    Route(
        "POST",
        "auth/challenge",
        endpoints.auth_challenge,
        "A single-use, expiring challenge for a Qubic identity to sign",
        models.ChallengeResponse,
        body=models.ChallengeRequest,
        public=True,
        tag="auth",
    ),
    Route(
        "POST",
        "wallet/connect",
        endpoints.wallet_connect,
        "Sign in with a SchnorrQ signature over a challenge; creates the user on first connect "
        "and issues a bearer token",
        models.ConnectResponse,
        body=models.ConnectRequest,
        public=True,
        tag="wallet",
        errors=(401,),
    ),
    Route(
        "POST",
        "auth/revoke",
        endpoints.auth_revoke,
        "Revoke the bearer token of this request",
        models.RevokeResponse,
        tag="auth",
    ),
    Route(
        "GET",
        r"wallet/(?P<address>[^/]+)/balance",
        endpoints.wallet_balance,
        "Your wallet's balance and pending earnings (QU)",
        models.BalanceResponse,
        tag="wallet",
        errors=(403,),
    ),
    Route(
        "GET",
        "me",
        endpoints.me,
        "The signed-in user",
        models.MeResponse,
        tag="auth",
    ),
    # Marketplace. The fixed paths come before providers/{workerId}, which would match them.
    Route(
        "GET",
        "providers",
        market.list_providers,
        "The marketplace: listed GPU offers, filtered, sorted and paged",
        market_models.OfferPage,
        query=market_models.ProviderSearchQuery,
        public=True,
        tag="marketplace",
        errors=(422,),
    ),
    Route(
        "POST",
        "providers/quick-register",
        market.quick_register,
        "Register your worker as a provider and list its offer; again with the same workerId "
        "returns the same provider",
        market_models.QuickRegisterResponse,
        body=market_models.QuickRegisterRequest,
        tag="marketplace",
        errors=(403, 409),
    ),
    Route(
        "GET",
        "providers/check-new",
        market.check_new,
        "Your most recently registered provider, or null",
        market_models.CheckNewResponse,
        tag="marketplace",
    ),
    Route(
        "GET",
        r"providers/(?P<workerId>[^/]+)",
        market.get_provider,
        "One listed offer",
        market_models.OfferOut,
        public=True,
        tag="marketplace",
        errors=(404,),
    ),
    Route(
        "PATCH",
        r"providers/(?P<workerId>[^/]+)",
        market.update_provider,
        "Change your offer: price, name, location, availability",
        market_models.ProviderResponse,
        body=market_models.UpdateProviderRequest,
        tag="marketplace",
        errors=(403, 404),
    ),
    Route(
        "DELETE",
        r"providers/(?P<workerId>[^/]+)",
        market.unlist_provider,
        "Take your offer off the marketplace (registering the worker again lists it again)",
        market_models.ProviderResponse,
        tag="marketplace",
        errors=(403, 404),
    ),
)


def routes_for(role: str, routes: Iterable[Route] = ROUTES) -> tuple[Route, ...]:
    """The routes a server in ``role`` serves."""
    return tuple(r for r in routes if role in r.roles)


def by_path(routes: Iterable[Route]) -> dict[str, dict[str, Route]]:
    """``path → {method → route}``: one tornado handler per path."""
    table: dict[str, dict[str, Route]] = {}
    for route in routes:
        methods = table.setdefault(route.path, {})
        if route.method in methods:
            raise ValueError(f"{route.method} {route.path} is in the route table twice")
        methods[route.method] = route
    return table
