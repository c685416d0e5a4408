"""``qubix provide --token``: the launcher and the command with a provisioning token, against a
real market, its embedded scheduler and real worker processes, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qubix_jupyter.cli import main
from qubix_jupyter.dask_provider.gpu import HardwareReport
from qubix_jupyter.dask_provider.launcher import (
    ProvideConfig,
    ProviderLauncher,
    ProvisionTokenRefused,
)
from qubix_jupyter.dask_provider.scheduler import SchedulerCallbacks, start_scheduler
from qubix_jupyter.server_extension.handlers import SERVICES
from qubix_jupyter.server_extension.scheduler_endpoints import worker_validator

from .conftest import Api, body_of, login
from .test_provision_tokens import ALICE, issue

QUBIX = str(Path(sys.executable).with_name("qubix"))


def _cpu_only(only: Any = None) -> HardwareReport:
    return HardwareReport(source="none", gpus=(), notes=("no GPU in this test",))


class Scheduler:
    """The market's embedded scheduler for one test, and who joined and left it."""

    def __init__(self) -> None:
        self.online: list[str] = []
        self.offline: list[str] = []
        self.changed = asyncio.Event()
        self.market: Any = None

    async def start(self, services: Any) -> None:
        def joined(name: str, address: str, resources: dict[str, float]) -> None:
            self.online.append(name)
            self.changed.set()

        def left(name: str, address: str) -> None:
            self.offline.append(name)
            self.changed.set()

        self.market = await start_scheduler(
            worker_validator(services.auth), SchedulerCallbacks(joined, left)
        )
        services.scheduler.address = self.market.worker_address

    async def wait_for(self, names: list[str], name: str, timeout_s: float = 90) -> None:
        async with asyncio.timeout(timeout_s):
            while name not in names:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def scheduler(jp_serverapp: Any) -> Any:
    found = Scheduler()
    await found.start(jp_serverapp.web_app.settings[SERVICES])
    yield found
    await found.market.close()


async def test_provide_with_a_provisioning_token_joins_for_the_tokens_owner(
    api: Api, scheduler: Scheduler, jp_http_port: int, jp_base_url: str
):
    alice = await login(api)
    issued = await issue(api, alice["token"])
    market_url = f"http://127.0.0.1:{jp_http_port}{jp_base_url}"
    launcher = ProviderLauncher(
        ProvideConfig(
            market_url=market_url,
            provision_token=issued["token"],
            price_per_hour=7,
            name="token box",
            heartbeat_interval_s=1,
        ),
        detect=_cpu_only,
    )
    try:
        assert launcher.sign_in() is None  # nothing to sign: no seed here
        devices = await asyncio.to_thread(launcher.start)
        (device,) = devices
        await scheduler.wait_for(scheduler.online, device.worker_id)
        listed = body_of(await api("GET", f"providers/{device.worker_id}"))
        assert listed["qubicAddress"] == ALICE
        assert listed["pricePerHour"] == 7
        assert listed["name"] == "token box"
        mine = body_of(await api("GET", "providers/check-new", token=alice["token"]))
        assert mine["newProvider"]["workerId"] == device.worker_id
        assert launcher.user_token is None  # no market token of the user on this machine
        env = launcher.worker_env(device)
        assert issued["token"] not in env.values()
        await asyncio.to_thread(launcher.stop)
        await scheduler.wait_for(scheduler.offline, device.worker_id, 60)
    finally:
        await asyncio.to_thread(launcher.stop, 5)

    # Revoked: the next start says so, and what to do.
    record = issued["provisionToken"]
    await api("DELETE", f"providers/provision-tokens/{record['id']}", token=alice["token"])
    again = ProviderLauncher(
        ProvideConfig(market_url=market_url, provision_token=issued["token"], price_per_hour=7),
        detect=_cpu_only,
    )
    try:
        with pytest.raises(ProvisionTokenRefused) as refused:
            await asyncio.to_thread(again.start)
    finally:
        again.close()
    message = refused.value.message
    assert message.startswith("the provisioning token was refused: ")
    assert "revoked" in message
    assert message.endswith("; create a new one in the QUBIX panel")
    assert not again.running


def test_a_config_takes_a_seed_or_a_provisioning_token():
    with pytest.raises(ValueError, match="exactly one"):
        ProvideConfig(market_url="http://m/", price_per_hour=1)
    with pytest.raises(ValueError, match="exactly one"):
        ProvideConfig(
            market_url="http://m/", seed="a" * 55, provision_token="qxp_x", price_per_hour=1
        )
    with pytest.raises(ValueError, match="start with qxp_"):
        ProvideConfig(market_url="http://m/", provision_token="qxw_worker", price_per_hour=1)


async def test_the_command_says_why_a_token_is_refused(
    api: Api, jp_http_port: int, jp_base_url: str
):
    market_url = f"http://127.0.0.1:{jp_http_port}{jp_base_url}"
    argv = [QUBIX, "provide", "--market", market_url, "--token", "qxp_made-up", "--price", "3"]
    done = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 2, done
    err = done.stderr
    assert err.startswith("qubix: the provisioning token was refused: unauthorized: unknown, ")
    assert err.rstrip().endswith("create a new one in the QUBIX panel")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "env", "says"),
    [
        (["--token", "qxp_a", "--seed-file", "s"], {}, "not --seed-file and --token"),
        (["--token", "qxp_a", "--token-file", "t"], {}, "not --token and --token-file"),
        (["--token", "qxw_a"], {}, "that is not a provisioning token"),
        ([], {"QUBIX_PROVISION_TOKEN": "nope"}, "that is not a provisioning token"),
        ([], {}, "give --token qxp_"),
        (["--token-file", "/nonexistent/token"], {}, "No such file"),
    ],
)
def test_the_commands_credential_errors(
    argv: list[str],
    env: dict[str, str],
    says: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    for name in ("QUBIX_SEED", "QUBIX_PROVISION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # The discard port: a credential that got past the checks would fail differently.
    assert main(["provide", "--market", "http://127.0.0.1:9/", *argv]) == 2
    err = capsys.readouterr().err
    assert says in err, err
    assert "Traceback" not in err


async def test_qubix_provide_token_file_shares_until_sigterm(
    api: Api,
    scheduler: Scheduler,
    jp_http_port: int,
    jp_base_url: str,
    tmp_path: Path,
):
    """The command a user pastes, as a process: registers, its worker joins, SIGTERM drains."""
    alice = await login(api)
    issued = await issue(api, alice["token"])
    token_file = tmp_path / "token"
    token_file.write_text(issued["token"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in {"QUBIX_SEED", "QUBIX_PROVISION_TOKEN"}}
    env["PYTHONWARNINGS"] = "ignore"
    market_url = f"http://127.0.0.1:{jp_http_port}{jp_base_url}"
    command = [QUBIX, "provide", "--market", market_url, "--token-file", str(token_file)]
    log_path = tmp_path / "provide.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: ASYNC220 (it starts at once; the test polls it)
            [*command, "--price", "4"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        async with asyncio.timeout(120):
            while not scheduler.online:
                assert process.poll() is None, log_path.read_text()
                scheduler.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(scheduler.changed.wait(), 1)
        (worker_id,) = scheduler.online
        listed = body_of(await api("GET", f"providers/{worker_id}"))
        assert listed["qubicAddress"] == ALICE
        assert listed["pricePerHour"] == 4
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 60)
        assert code == 0, log_path.read_text()
        await scheduler.wait_for(scheduler.offline, worker_id, 60)
        output = log_path.read_text()
        assert f"sharing CPU as {worker_id}" in output
        assert issued["token"] not in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
