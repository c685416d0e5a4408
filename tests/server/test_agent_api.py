"""The local agent's routes (the JupyterLab panel's): Jupyter's own authentication only, GPU
detection, and Share my GPU end to end on a real market (role both), a real embedded scheduler
and a real worker process: idle → … → online, registered and joined, then stopped and offline;
on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import re
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from qubix_jupyter.dask_provider.gpu import HardwareReport
from qubix_jupyter.server_extension.agent import TRANSITIONS, SharingState
from qubix_jupyter.server_extension.execution import EXECUTION
from qubix_jupyter.server_extension.handlers import SERVICES
from qubix_jupyter.settlement.keys import KeyPair
from qubix_jupyter.settlement.wallet import read_seed_file

from .conftest import Api, body_of, login
from .test_provision_tokens import _rows

AGENT_ROUTES = (
    ("GET", "agent/detect"),
    ("GET", "agent/status"),
    ("GET", "agent/market"),
    ("POST", "agent/share"),
    ("POST", "agent/stop"),
    ("POST", "agent/install-command"),
    ("DELETE", "agent/install-command/some-id"),
)


def _cpu_only(only: Any = None) -> HardwareReport:
    return HardwareReport("none", (), ("no NVIDIA driver on this test machine",))


@pytest.fixture
def seed_file(tmp_path: Path) -> Path:
    return tmp_path / "agent" / "agent-seed"


@pytest.fixture
def qubix_config(seed_file: Path) -> dict[str, Any]:
    return {
        "execute_jobs": True,
        "agent_seed_file": str(seed_file),
        "agent_heartbeat_interval": 1.0,
    }


async def test_agent_routes_take_jupyters_authentication_only(api: Api):
    alice = await login(api)
    for method, path in AGENT_ROUTES:
        for authorization in ("", f"Bearer {alice['token']}", "token not-jupyters-token"):
            body = {"price": 5} if path in {"agent/share", "agent/install-command"} else None
            answer = await api(
                method, path, json_body=body, headers={"Authorization": authorization}
            )
            assert answer.code == 401, (method, path, authorization, answer.body)
            assert body_of(answer)["error"]["code"] == "unauthorized"


async def test_detect_reports_the_native_gpus(api: Api, jp_auth_header, jp_serverapp):
    services = jp_serverapp.web_app.settings[SERVICES]
    services.agent.detect = _cpu_only
    answer = await api("GET", "agent/detect", headers=jp_auth_header)
    assert answer.code == 200, answer.body
    found = body_of(answer)
    assert found["source"] == "none"
    assert found["cpuOnly"] is True
    assert found["gpus"] == []
    assert found["notes"] == ["no NVIDIA driver on this test machine"]


async def test_share_validates_the_price(api: Api, jp_auth_header):
    for body in ({"price": -1}, {"price": 1.5}, {}, {"price": 5, "extra": 1}):
        answer = await api("POST", "agent/share", json_body=body, headers=jp_auth_header)
        assert answer.code == 422, (body, answer.body)
    status = body_of(await api("GET", "agent/status", headers=jp_auth_header))
    assert status["state"] == "idle"


def test_every_sharing_state_may_stop_or_is_idle():
    """Stop sharing is always possible: every state but idle and stopping moves to stopping."""
    for state in SharingState:
        if state in (SharingState.IDLE, SharingState.STOPPING):
            continue
        assert SharingState.STOPPING in TRANSITIONS[state], state
    assert TRANSITIONS[SharingState.STOPPING] == {SharingState.IDLE}


async def _status(api: Api, auth: dict[str, str]) -> dict[str, Any]:
    answer = await api("GET", "agent/status", headers=auth)
    assert answer.code == 200, answer.body
    return body_of(answer)  # type: ignore[no-any-return]


async def _poll(
    read: Callable[[], Awaitable[dict[str, Any]]],
    done: Callable[[dict[str, Any]], bool],
    timeout_s: float = 150,
) -> list[dict[str, Any]]:
    """What ``read`` answered, polling as the Lab panel does, until ``done``."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout_s):
        for _ in itertools.count():
            seen.append(await read())
            if done(seen[-1]):
                break
            await asyncio.sleep(0.2)
    return seen


async def test_share_my_gpu_goes_online_and_stops(
    api: Api, jp_auth_header, jp_serverapp, seed_file: Path
):
    services = jp_serverapp.web_app.settings[SERVICES]
    execution = jp_serverapp.web_app.settings[EXECUTION]
    services.agent.detect = _cpu_only
    try:
        answer = await api(
            "POST",
            "agent/share",
            json_body={"price": 9, "name": "lab box", "location": "EU-West"},
            headers=jp_auth_header,
        )
        assert answer.code == 200, answer.body
        assert body_of(answer)["state"] in {"detecting", "registering", "starting"}
        again = await api("POST", "agent/share", json_body={"price": 9}, headers=jp_auth_header)
        assert again.code == 409, again.body
        assert body_of(again)["error"]["code"] == "already_sharing"

        answers = await _poll(
            lambda: _status(api, jp_auth_header), lambda s: s["state"] in {"online", "error"}
        )
        status = answers[-1]
        assert status["state"] == "online", status
        seen = [a["state"] for a in answers]
        order = ["detecting", "registering", "starting", "online"]
        assert seen == sorted(seen, key=order.index)  # never backwards
        worker_id = status["workerId"]
        assert status["provider"]["workerId"] == worker_id
        assert status["earningsToday"] == 0
        assert status["devices"][0]["running"] is True

        # The market lists it, online, under the agent's wallet; the scheduler has its worker.
        listed = body_of(await api("GET", f"providers/{worker_id}"))
        assert listed["isOnline"] is True
        assert listed["pricePerHour"] == 9
        assert listed["name"] == "lab box"
        assert listed["location"] == "EU-West"
        identity = KeyPair.from_seed(read_seed_file(seed_file)).identity
        assert listed["qubicAddress"] == identity
        mode = (await asyncio.to_thread(seed_file.stat)).st_mode
        assert stat.S_IMODE(mode) == 0o600
        assert worker_id in execution.workers

        summary = body_of(await api("GET", "agent/market", headers=jp_auth_header))
        assert summary["onlineOffers"] == 1
        assert summary["minPrice"] == summary["maxPrice"] == 9

        stopped = await api("POST", "agent/stop", headers=jp_auth_header)
        assert stopped.code == 200, stopped.body
        assert body_of(stopped)["state"] == "idle"

        async def offer() -> dict[str, Any]:
            return body_of(await api("GET", f"providers/{worker_id}"))  # type: ignore[no-any-return]

        await _poll(offer, lambda o: not o["isOnline"], 60)
        assert worker_id not in execution.workers
        # Stopping again is no error: sharing is already stopped.
        assert body_of(await api("POST", "agent/stop", headers=jp_auth_header))["state"] == "idle"
    finally:
        await services.agent.close()


async def test_share_says_why_when_the_market_is_unreachable(
    api: Api, jp_auth_header, jp_serverapp
):
    agent = jp_serverapp.web_app.settings[SERVICES].agent
    agent.detect = _cpu_only
    agent._market_url = lambda: "http://127.0.0.1:9/"  # the discard port: nothing answers
    try:
        answer = await api("POST", "agent/share", json_body={"price": 3}, headers=jp_auth_header)
        assert answer.code == 200, answer.body
        answers = await _poll(lambda: _status(api, jp_auth_header), lambda s: s["state"] == "error")
        status = answers[-1]
        assert "registering with the market" in status["error"]
        assert "http://127.0.0.1:9/" in status["nextStep"]
        market = await api("GET", "agent/market", headers=jp_auth_header)
        assert market.code == 502
        assert body_of(market)["error"]["code"] == "market_refused"
    finally:
        await agent.close()
    assert (await _status(api, jp_auth_header))["state"] == "idle"


# ---------------------------------------------------------------------- another machine


async def _install_command(api: Api, auth: dict[str, str], **body: Any) -> Any:
    return await api("POST", "agent/install-command", json_body=body, headers=auth)


async def test_install_command_carries_a_working_token_of_the_agents_wallet(
    api: Api, jp_auth_header, jp_http_port: int, jp_base_url: str, seed_file: Path, database_url
):
    # Reached by name (Jupyter refuses other hosts unless told); the agent uses 127.0.0.1.
    reached_as = {**jp_auth_header, "Host": f"localhost:{jp_http_port}"}
    answer = await _install_command(api, reached_as, price=8)
    assert answer.code == 200, answer.body
    found = body_of(answer)
    # The market is this server: the command names it as this request reached it.
    assert found["marketUrl"] == f"http://localhost:{jp_http_port}{jp_base_url}"
    match = re.fullmatch(
        r"pip install qubix-jupyter && qubix provide --market (\S+) --token (qxp_[\w-]+) "
        r"--price 8",
        found["command"],
    )
    assert match, found["command"]
    assert match[1] == found["marketUrl"]
    token = match[2]
    assert found["price"] == 8
    # The agent's wallet owns the token; the token registers for it, and only that.
    identity = KeyPair.from_seed(read_seed_file(seed_file)).identity
    registered = await api(
        "POST",
        "providers/quick-register",
        json_body={
            "type": "native",
            "gpu": {"type": "native", "count": 0},
            "workerId": "other-machine",
            "pricePerHour": 8,
        },
        token=token,
    )
    assert registered.code == 200, registered.body
    assert body_of(registered)["provider"]["qubicAddress"] == identity
    assert (await api("GET", "me", token=token)).code == 401
    # The agent kept no market session of its own: every token it signed in for is revoked.
    live = await asyncio.to_thread(
        _rows,
        database_url.url,
        "SELECT count(*) FROM api_tokens WHERE revoked_at IS NULL",
    )
    assert live == [(0,)]
    owner = await login(api, read_seed_file(seed_file))
    (listed,) = body_of(await api("GET", "providers/provision-tokens", token=owner["token"]))[
        "items"
    ]
    assert listed["id"] == found["tokenId"]
    assert listed["useCount"] == 1

    # Revoked from the panel: it registers nothing more.
    revoked = await api(
        "DELETE", f"agent/install-command/{found['tokenId']}", headers=jp_auth_header
    )
    assert revoked.code == 200, revoked.body
    assert body_of(revoked)["provisionToken"]["status"] == "revoked"
    again = await api(
        "POST",
        "providers/quick-register",
        json_body={"type": "native", "gpu": {"type": "native"}, "workerId": "x", "pricePerHour": 1},
        token=token,
    )
    assert again.code == 401
    unknown = await api(
        "DELETE",
        "agent/install-command/00000000-0000-0000-0000-000000000000",
        headers=jp_auth_header,
    )
    assert unknown.code == 404
    assert body_of(unknown)["error"]["code"] == "unknown_provision_token"


async def test_install_command_validates_its_body(api: Api, jp_auth_header):
    for body in (
        {},
        {"price": -1},
        {"price": 1.5},
        {"price": 5, "ttlSeconds": 10},
        {"price": 5, "x": 1},
    ):
        answer = await _install_command(api, jp_auth_header, **body)
        assert answer.code == 422, (body, answer.body)


@pytest.mark.parametrize("qubix_config", [{"agent_market_url": "http://127.0.0.1:9/"}])
async def test_install_command_says_why_when_the_market_is_unreachable(api: Api, jp_auth_header):
    answer = await _install_command(api, jp_auth_header, price=3)
    assert answer.code == 502, answer.body
    error = body_of(answer)["error"]
    assert error["code"] == "market_refused"
    assert "could not sign in to the market at http://127.0.0.1:9/" in error["message"]
    assert "http://127.0.0.1:9/" in error["details"]["nextStep"]


async def test_install_command_says_why_when_the_wallet_is_unusable(
    api: Api, jp_auth_header, seed_file: Path
):
    def readable_by_others() -> None:
        seed_file.parent.mkdir(parents=True, exist_ok=True)
        seed_file.write_text("a" * 55 + "\n")
        seed_file.chmod(0o644)  # refused, never used

    await asyncio.to_thread(readable_by_others)
    answer = await _install_command(api, jp_auth_header, price=3)
    assert answer.code == 409, answer.body
    error = body_of(answer)["error"]
    assert error["code"] == "agent_wallet_unusable"
    assert str(seed_file) in error["message"]
    assert "chmod 600" in error["details"]["nextStep"]


async def test_install_command_names_a_configured_market(
    api: Api, jp_auth_header, jp_serverapp, jp_http_port: int, jp_base_url: str
):
    """With agent_market_url set, the command names it, however this server was reached."""
    agent = jp_serverapp.web_app.settings[SERVICES].agent
    configured = f"http://127.0.0.1:{jp_http_port}{jp_base_url}"  # this very market, by IP
    agent._market_url = lambda: configured
    agent.market_is_this_server = lambda: False
    reached_as = {**jp_auth_header, "Host": f"localhost:{jp_http_port}"}
    answer = await _install_command(api, reached_as, price=2)
    assert answer.code == 200, answer.body
    assert body_of(answer)["marketUrl"] == configured
    assert f"--market {configured} --token qxp_" in body_of(answer)["command"]
