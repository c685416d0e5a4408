"""The served OpenAPI document is the contract: schemathesis calls every operation of a real
``qubix serve`` with inputs it generates from that document (valid and invalid), signed in with
the credentials each security scheme names, and checks every answer: never a 5xx, only a
documented status, the documented media type, headers and body schema.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from qubix_jupyter.db.pg_cluster import PgCluster
from qubix_jupyter.settlement.keys import KeyPair

from ..conftest import TEMPLATE_DB
from .conftest import SEED_ALICE, SEED_BOB, sign
from .test_serve import QUBIX, _environ, _free_port, _poll_health

JUPYTER_TOKEN = "schemathesis-operator-token"
#: Generated calls per operation and generation mode (valid inputs, then invalid ones).
EXAMPLES = 12
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def _post(base: str, path: str, body: dict[str, Any], token: str | None = None) -> Any:
    request = urllib.request.Request(
        f"{base}/{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {token}"} if token else {}),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _sign_in(base: str, seed: str) -> str:
    address = KeyPair.from_seed(seed).identity
    challenge = _post(base, "auth/challenge", {"qubicAddress": address})["challenge"]
    connected = _post(
        base,
        "wallet/connect",
        {"qubicAddress": address, "challenge": challenge, "signature": sign(seed, challenge)},
    )
    return str(connected["token"])


def _quick_register(base: str, token: str, seed: str) -> str:
    registered = _post(
        base,
        "providers/quick-register",
        {
            "qubicAddress": KeyPair.from_seed(seed).identity,
            "workerId": "contract-worker",
            "type": "native",
            "gpu": {"type": "native", "model": "RTX 4090", "vram": 24, "count": 1},
            "pricePerHour": 5,
            "name": "contract test rig",
            "location": "EU",
        },
        token,
    )
    return str(registered["workerToken"])


def _database(kind: str, tmp: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        path = tmp / "qubix.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    return cluster.create_database(f"contract_{os.getpid()}", template=TEMPLATE_DB)


@dataclasses.dataclass
class Market:
    schema: schemathesis.BaseSchema
    base: str

    def fresh_user(self) -> dict[str, str]:
        """A token of its own, for a call that revokes the one it sends."""
        return {"Authorization": f"Bearer {_sign_in(self.base, SEED_ALICE)}"}


@pytest.fixture(params=["sqlite", "postgresql"])
def market(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Market]:
    """``qubix serve`` with no rate limit (a 429 would hide what the request meant), a known
    Jupyter token for the operator's routes, a signed-in user and a registered provider; the
    schema it serves, with each security scheme's credentials."""
    tmp = tmp_path
    url = _database(request.param, tmp, request)
    env = _environ(tmp)
    config_dir = Path(env["JUPYTER_CONFIG_DIR"])
    config_dir.mkdir(parents=True)
    (config_dir / "jupyter_server_config.json").write_text(
        json.dumps(
            {
                "IdentityProvider": {"token": JUPYTER_TOKEN},
                "QubixExtension": {"rate_limit_per_minute": 0},
            }
        )
    )
    port = _free_port()
    command = [QUBIX, "serve", "--port", str(port), "--database-url", url]
    if os.geteuid() == 0:
        command.append("--allow-root")
    log = (tmp / "serve.log").open("w")
    process = subprocess.Popen(
        command, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, text=True
    )
    base = f"http://127.0.0.1:{port}/qubix/api"
    try:
        _poll_health(f"{base}/health", process, time.monotonic() + 60)
        user_token = _sign_in(base, SEED_ALICE)
        bob = _sign_in(base, SEED_BOB)
        worker_token = _quick_register(base, bob, SEED_BOB)
        provision_token = _post(base, "providers/provision-tokens", {}, bob)["token"]
        config = schemathesis.Config.from_dict(
            {
                "generation": {
                    "mode": "all",
                    "max-examples": EXAMPLES,
                    "with-security-parameters": False,
                },
                "auth": {
                    "openapi": {
                        "bearerAuth": {"bearer": user_token},
                        "workerAuth": {"bearer": worker_token},
                        "provisionAuth": {"bearer": provision_token},
                        "jupyterAuth": {"api_key": f"token {JUPYTER_TOKEN}"},
                    }
                },
            }
        )
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json", config=config)
        schema.base_url = base
        yield Market(schema, base)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()
        output = (tmp / "serve.log").read_text()
        assert "Traceback" not in output, output[-6000:]


def _exercise(
    operation: APIOperation, mode: GenerationMode, headers: Callable[[], dict[str, str]]
) -> Counter[int]:
    """Call one operation with generated inputs of one mode; the statuses it answered."""
    statuses: Counter[int] = Counter()

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def call(case: schemathesis.Case) -> None:
        wait = (case.query or {}).get("wait")
        if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > 1:
            case.query["wait"] = 1  # a held answer is tested elsewhere; here it only slows
        response = case.call_and_validate(checks=CHECKS, headers=headers(), timeout=30)
        statuses[response.status_code] += 1

    call()
    return statuses


def test_every_operation_keeps_its_contract(market: Market) -> None:
    failures: list[str] = []
    for result in market.schema.get_all_operations():
        operation = result.ok()
        if "x-websocket" in operation.definition.raw:
            continue  # the events WebSocket is no HTTP call: tests/server/test_websocket.py
        revoke = operation.method.upper() == "POST" and operation.path == "/auth/revoke"
        # revoking the shared token would turn every later user call into a 401
        headers = market.fresh_user if revoke else dict
        seen: Counter[int] = Counter()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                seen += _exercise(operation, mode, headers)
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, operation.label  # nothing to get wrong
            except (Exception, BaseExceptionGroup) as exc:  # every operation's, not the first
                failures.append(f"{operation.label} ({mode.value}):\n{exc}")
        if operation.definition.raw.get("security") and not set(seen) - {401}:
            failures.append(f"{operation.label}: no call got past authentication")
    assert not failures, "\n\n".join(failures)
