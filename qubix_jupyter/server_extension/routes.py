"""The market API's route table: every module's routes, in the order tornado tries them.

Paths are relative to ``{base_url}qubix/api/``. Within the table a fixed path comes before a
pattern that would match it too (``providers/check-new`` before ``providers/{workerId}``).
"""

from __future__ import annotations

from collections.abc import Iterable

from . import agent_endpoints as agent
from . import endpoints, models
from . import jobs_endpoints as jobs
from . import liveness_endpoints as liveness
from . import marketplace_endpoints as market
from . import operator_endpoints as operator
from . import provision_endpoints as provision
from . import scheduler_endpoints as scheduler
from . import wallet_endpoints as wallet
from .route import API_PREFIX, EVERY_ROLE, MARKET, Route

__all__ = ["API_PREFIX", "EVERY_ROLE", "MARKET", "ROUTES", "Route", "by_path", "routes_for"]

CORE_ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "health",
        endpoints.health,
        "Liveness: version, role and whether the database answers",
        models.HealthResponse,
        auth="public",
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
        auth="public",
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
        auth="public",
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
        auth="public",
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
)

ROUTES: tuple[Route, ...] = (
    *CORE_ROUTES,
    *provision.ROUTES,  # before market's providers/{workerId}
    *market.ROUTES,
    *jobs.ROUTES,
    *liveness.ROUTES,
    *wallet.ROUTES,
    *operator.ROUTES,
    *scheduler.ROUTES,
    *agent.ROUTES,
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
