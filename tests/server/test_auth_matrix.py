"""Who may call what, for every route of the table (a new route is covered by being in it).

Each kind of credential opens only its own routes: a user's market token the user routes, a
provider's worker token the worker routes, Jupyter's own token the operator routes, a user's
provisioning token only the user routes that take one (quick-register). Any other credential,
or none, is a 401 with the error body; public routes answer without one. Jupyter's own APIs
stay closed to anonymous callers and to market tokens.
"""

from __future__ import annotations

from typing import Any

import pytest
from tornado.httpclient import HTTPResponse

from qubix_jupyter.server_extension.routes import ROUTES, Route, routes_for
from qubix_jupyter.settlement.keys import KeyPair

from .conftest import SEED_BOB, Api, body_of, login

#: The test server's role ("both", the default) serves every route of the table.
SERVED = routes_for("both")
#: Jupyter's own REST APIs (terminals are off in the test server).
JUPYTER_APIS = ("api/contents", "api/kernels", "api/sessions", "api/kernelspecs", "api/me")


@pytest.fixture
def qubix_config() -> dict[str, Any]:
    # hundreds of refused calls from one address: a 429 would hide which answer was meant
    return {"rate_limit_per_minute": 0}


def _concrete(route: Route) -> str:
    path = route.openapi_path
    for name in route.path_params:
        path = path.replace("{" + name + "}", "no-such-" + name.lower())
    return path


async def _call(api: Api, route: Route, authorization: str) -> HTTPResponse:
    body = b"{}" if route.body is not None else None
    return await api(
        route.method, _concrete(route), body=body, headers={"Authorization": authorization}
    )


def _assert_refused(response: HTTPResponse, route: Route, credential: str) -> None:
    where = (route.method, route.path, credential)
    assert response.code == 401, (*where, response.code, response.body)
    error = body_of(response)["error"]
    assert error["code"] == "unauthorized", (*where, error)
    assert error["message"], (*where, error)
    assert isinstance(error["details"], dict), (*where, error)


def kinds_of(route: Route) -> set[str]:
    """The kinds of credential ``route`` takes."""
    return {route.auth} | ({"provisioning"} if route.provisioning else set())


class Credentials:
    def __init__(self, api: Api, user: str, worker: str, jupyter: str, provision: str) -> None:
        self.api = api
        self.by_kind = {
            "user": [f"Bearer {user}"],
            "worker": [f"Bearer {worker}"],
            # Jupyter takes its token as `token …` or `Bearer …`
            "operator": [f"token {jupyter}", f"Bearer {jupyter}"],
            "provisioning": [f"Bearer {provision}"],
        }

    def others(self, kinds: set[str]) -> list[tuple[str, str]]:
        """Every credential but those of ``kinds``, with a name for the failure message."""
        found = [
            ("nothing", ""),
            ("a made-up token", "Bearer qxt_not-a-token"),
            ("a made-up provisioning token", "Bearer qxp_not-a-token"),
            ("a made-up worker token", "Bearer qxw_not-a-token"),
        ]
        for other, headers in self.by_kind.items():
            if other not in kinds:
                found.extend((f"{other}'s {header.split()[0]}", header) for header in headers)
        return found

    async def renew_user(self) -> None:
        """A new user token, after a route (auth/revoke) that may have revoked the last one."""
        self.by_kind["user"] = [f"Bearer {(await login(self.api))['token']}"]


@pytest.fixture
async def credentials(api: Api, jp_serverapp: Any) -> Credentials:
    user = await login(api)
    bob = await login(api, SEED_BOB)
    registered = await api(
        "POST",
        "providers/quick-register",
        json_body={
            "qubicAddress": KeyPair.from_seed(SEED_BOB).identity,
            "workerId": "matrix-worker",
            "type": "native",
            "gpu": {"type": "native", "model": "RTX 4090", "vram": 24, "count": 1},
            "pricePerHour": 5,
        },
        token=bob["token"],
    )
    assert registered.code == 200, registered.body
    worker = body_of(registered)["workerToken"]
    issued = await api("POST", "providers/provision-tokens", json_body={}, token=bob["token"])
    assert issued.code == 200, issued.body
    provision = body_of(issued)["token"]
    return Credentials(api, user["token"], worker, jp_serverapp.identity_provider.token, provision)


def test_the_table_has_every_kind_of_route():
    """Otherwise a whole row of the matrix below would pass by having nothing to check."""
    assert {route.auth for route in ROUTES} == {"public", "user", "worker", "operator"}
    assert set(SERVED) == set(ROUTES)
    # A provisioning token opens exactly one route, a user route.
    assert [(r.method, r.path, r.auth) for r in ROUTES if r.provisioning] == [
        ("POST", "providers/quick-register", "user")
    ]


async def test_every_route_takes_only_its_own_credential(api: Api, credentials: Credentials):
    for route in SERVED:
        if route.public:
            continue
        kinds = kinds_of(route)
        for credential, authorization in credentials.others(kinds):
            _assert_refused(await _call(api, route, authorization), route, credential)
        for authorization in [h for kind in sorted(kinds) for h in credentials.by_kind[kind]]:
            response = await _call(api, route, authorization)
            # past authentication: whatever the (made-up) input gets, it is not a 401, nor a
            # 5xx the route does not document (the scheduler's 503 while none runs)
            where = (route.method, route.path, response.code, response.body)
            assert response.code != 401, where
            assert response.code < 500 or response.code in route.errors, where
        if route.auth == "user":
            await credentials.renew_user()


async def test_public_routes_answer_without_a_token(api: Api):
    for route in SERVED:
        if not route.public:
            continue
        response = await _call(api, route, "")
        assert response.code not in {401, 403}, (route.method, route.path, response.body)
        assert response.code < 500, (route.method, route.path, response.body)


async def test_jupyters_apis_are_closed_to_anonymous_callers_and_market_tokens(
    api: Api, credentials: Credentials, jp_fetch: Any
):
    market_tokens = [
        *credentials.by_kind["user"],
        *credentials.by_kind["worker"],
        *credentials.by_kind["provisioning"],
    ]
    market_tokens += [f"token {header.split()[1]}" for header in market_tokens]
    for path in JUPYTER_APIS:
        for authorization in ("", *market_tokens):
            response = await jp_fetch(
                *path.split("/"), headers={"Authorization": authorization}, raise_error=False
            )
            assert response.code in {401, 403}, (path, authorization, response.code)
        # ...and open to Jupyter's own token (jp_fetch sends it): the refusals above are real
        for authorization in credentials.by_kind["operator"]:
            response = await jp_fetch(
                *path.split("/"), headers={"Authorization": authorization}, raise_error=False
            )
            assert response.code == 200, (path, authorization, response.code)
