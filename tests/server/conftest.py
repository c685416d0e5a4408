"""A real Jupyter server with the qubix extension, through pytest-jupyter's fixtures.

The fixtures are imported by name (not its plugin module, whose own test-running hooks would
fight pytest-asyncio), and ``jp_asyncio_loop`` is pytest-asyncio's session loop, so the server,
its HTTP client and the async tests share one event loop. Every server test runs on SQLite and
on PostgreSQL through the ``database_url`` fixture.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
import pytest_asyncio
from pytest_jupyter.jupyter_core import (  # noqa: F401
    echo_kernel_spec,
    jp_config_dir,
    jp_data_dir,
    jp_env_config_path,
    jp_env_jupyter_path,
    jp_environ,
    jp_home_dir,
    jp_kernel_dir,
    jp_runtime_dir,
    jp_system_config_path,
    jp_system_jupyter_path,
)
from pytest_jupyter.jupyter_server import (  # noqa: F401
    jp_argv,
    jp_auth_header,
    jp_base_url,
    jp_configurable_serverapp,
    jp_fetch,
    jp_http_port,
    jp_logging_stream,
    jp_nbconvert_templates,
    jp_root_dir,
    jp_server_cleanup,
    jp_serverapp,
    jp_template_dir,
    jp_web_app,
)
from pytest_jupyter.pytest_tornasync import (  # noqa: F401
    http_server,
    http_server_client,
    http_server_port,
    io_loop,
)
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool
from tornado.httpclient import HTTPResponse

from qubix_jupyter.db.engine import sync_url
from qubix_jupyter.settlement.keys import KeyPair
from qubix_jupyter.settlement.wallet import challenge_digest

from ..conftest import DatabaseURL


@pytest_asyncio.fixture(loop_scope="session")
async def jp_asyncio_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


@pytest.fixture
def qubix_config() -> dict[str, Any]:
    """Extra ``QubixExtension`` traits for one test (override or update it)."""
    return {}


@pytest.fixture
def jp_server_config(database_url: DatabaseURL, qubix_config: dict[str, Any]) -> dict[str, Any]:
    return {
        "ServerApp": {
            # pytest-jupyter adds terminals unless told; their websocket handler trips
            # jupyter_server's warning about undecorated endpoints, and we do not need them.
            "jpserver_extensions": {"qubix_jupyter": True, "jupyter_server_terminals": False},
            # Jupyter's own APIs stay closed to anonymous callers; the market routes declare
            # themselves public and do their own authentication.
            "allow_unauthenticated_access": False,
            "reraise_server_extension_failures": True,
        },
        # Jobs run on Dask workers only where a test asks (execute_jobs): the others drive
        # the worker's HTTP routes themselves.
        "QubixExtension": {
            "database_url": database_url.url,
            "execute_jobs": False,
            **qubix_config,
        },
    }


class Api:
    """``jp_fetch`` for the market API: no Jupyter token unless asked, errors as answers."""

    def __init__(self, fetch: Callable[..., Any]) -> None:
        self._fetch = fetch

    async def __call__(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        body: bytes | str | None = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> HTTPResponse:
        sent = dict(headers or {})
        # jp_fetch adds Jupyter's token when no Authorization is given: send an empty one.
        sent.setdefault("Authorization", f"Bearer {token}" if token else "")
        if json_body is not None:
            body = json.dumps(json_body)
        if body is None and method in {"POST", "PUT", "PATCH"}:
            body = b""
        return await self._fetch(  # type: ignore[no-any-return]
            "qubix",
            "api",
            *path.split("/"),
            method=method,
            body=body,
            headers=sent,
            raise_error=False,
        )


@pytest.fixture
def api(jp_fetch: Callable[..., Any]) -> Api:  # noqa: F811 (the fixture, imported above)
    return Api(jp_fetch)


def body_of(response: HTTPResponse) -> Any:
    return json.loads(response.body)


SEED_ALICE = "a" * 55
SEED_BOB = "b" * 55


def sign(seed: str, challenge: str) -> str:
    return KeyPair.from_seed(seed).sign(challenge_digest(challenge)).hex()


async def login(api: Api, seed: str = SEED_ALICE) -> dict[str, Any]:
    """Challenge → sign with the wallet's key pair → connect: the connect answer."""
    address = KeyPair.from_seed(seed).identity
    challenge = await api("POST", "auth/challenge", json_body={"qubicAddress": address})
    assert challenge.code == 200, challenge.body
    issued = body_of(challenge)["challenge"]
    connected = await api(
        "POST",
        "wallet/connect",
        json_body={"qubicAddress": address, "challenge": issued, "signature": sign(seed, issued)},
    )
    assert connected.code == 200, connected.body
    return body_of(connected)  # type: ignore[no-any-return]


async def execute_sql(url: str, statement: str, **params: Any) -> None:
    """Change the database behind the server's back (expire a challenge or token).

    In a thread: the server runs on the test's event loop, and a blocking write there would
    keep the server's own open SQLite transaction (the liveness flush, the assigner) from ever
    finishing, so both would wait on the file's lock until it timed out.
    """

    def execute() -> None:
        engine = create_engine(sync_url(url), poolclass=NullPool)
        try:
            with engine.begin() as conn:
                conn.execute(text(statement), params)
        finally:
            engine.dispose()

    await asyncio.to_thread(execute)
