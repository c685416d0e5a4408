"""The QUBIX sidebar in a real JupyterLab, driven in Debian's headless Chromium: open it, Share
my GPU until online (the market lists the provider online, so its worker joined the scheduler),
stop sharing until offline; create the install command for another machine (its token really
registers for the agent's wallet), copy it, revoke it; without an agent, the panel says why no
token can be had and gives the seed-file command. An axe-core audit finds no serious or
critical violation. A screenshot of the panel in each state goes to tests/artifacts/lab/."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from qubix_jupyter.settlement.keys import KeyPair
from qubix_jupyter.settlement.wallet import read_seed_file

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
AXE = ROOT / "labextension" / "node_modules" / "axe-core" / "axe.min.js"
BUILT = ROOT / "qubix_jupyter" / "labextension" / "package.json"
ARTIFACTS = ROOT / "tests" / "artifacts" / "lab"
TOKEN = "qubix-lab-test-token"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _require(path: Path, what: str) -> None:
    if path.exists():
        return
    message = f"{what} is missing ({path}): run scripts/setup.sh --browser"
    if os.environ.get("QUBIX_ALLOW_NO_BROWSER") == "1":
        pytest.skip(message)
    pytest.fail(message + " (or set QUBIX_ALLOW_NO_BROWSER=1 to skip the browser test locally)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[str]:
    """``jupyter lab`` with the market and the agent in one server (role both)."""
    yield from _lab(tmp_path, "both")


@pytest.fixture
def lab_market(tmp_path: Path) -> Iterator[str]:
    """``jupyter lab`` whose server is a market without an agent (role market)."""
    yield from _lab(tmp_path, "market")


def _lab(tmp_path: Path, role: str) -> Iterator[str]:
    _require(CHROMIUM, "Debian's Chromium")
    _require(BUILT, "the built Lab extension")
    _require(AXE, "axe-core (labextension/node_modules)")
    config = tmp_path / "config"
    config.mkdir()
    (config / "jupyter_server_config.json").write_text(
        json.dumps(
            {
                "IdentityProvider": {"token": TOKEN},
                "ServerApp": {"jpserver_extensions": {"qubix_jupyter": True}},
                "QubixExtension": {
                    "role": role,
                    "agent_seed_file": str(tmp_path / "agent-seed"),
                    "agent_heartbeat_interval": 1.0,
                },
            }
        )
    )
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(config),
        # The embedded default a new user gets: SQLite under the data dir, migrated at start.
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
    }
    env.pop("QUBIX_DATABASE_URL", None)
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={tmp_path}",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    log = (tmp_path / "lab.log").open("w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, (tmp_path / "lab.log").read_text()[-4000:]
            try:
                if httpx.get(base + "qubix/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "lab.log").read_text()[-4000:]
            time.sleep(0.3)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _agent(base: str, path: str) -> dict:
    answer = httpx.get(
        base + "qubix/api/" + path, headers={"Authorization": f"token {TOKEN}"}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def _audit(page: Any) -> None:
    page.add_script_tag(path=str(AXE))
    audit = page.evaluate("async () => (await axe.run('#qubix-panel')).violations")
    serious = [v for v in audit if v["impact"] in {"serious", "critical"}]
    assert not serious, json.dumps(serious, indent=1)[:4000]


def _quick_register(base: str, token: str, worker_id: str) -> httpx.Response:
    return httpx.post(
        base + "qubix/api/providers/quick-register",
        json={
            "type": "native",
            "gpu": {"type": "native", "count": 0},
            "workerId": worker_id,
            "pricePerHour": 12,
        },
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def _open_panel(browser: Any, lab: str) -> tuple[Any, Any]:
    """JupyterLab at ``lab`` in a new page, with the QUBIX sidebar opened: (page, panel)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{lab}lab?token={TOKEN}")
    tab = page.locator('.jp-SideBar [data-id="qubix-panel"]')
    tab.wait_for(timeout=120_000)
    tab.click()
    return page, page.locator("#qubix-panel")


def test_share_my_gpu_from_the_lab_sidebar(lab: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"screenshots of the QUBIX panel: {ARTIFACTS}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page, panel = _open_panel(browser, lab)
            expect(panel).to_have_attribute("data-state", "idle", timeout=30_000)
            expect(panel.get_by_text("Online offers")).to_be_visible(timeout=30_000)
            panel.screenshot(path=str(ARTIFACTS / "idle.png"))

            _audit(page)

            # Keyboard: the price field and the buttons are reachable and labelled.
            price = page.get_by_label("Price (QU per GPU-hour)")
            price.fill("12")
            page.get_by_role("button", name="Share my GPU").focus()
            page.keyboard.press("Enter")
            expect(panel).to_have_attribute("data-state", "online", timeout=180_000)
            # The summary counts our own offer once it is online (one provider in this market).
            expect(panel.locator("dt:text-is('Online offers') + dd")).to_have_text(
                "1", timeout=30_000
            )
            panel.screenshot(path=str(ARTIFACTS / "online.png"))
            expect(page.locator(".qx-statusbar")).to_contain_text("online")

            status = _agent(lab, "agent/status")
            listed = httpx.get(f"{lab}qubix/api/providers/{status['workerId']}").json()
            assert listed["isOnline"] is True
            assert listed["pricePerHour"] == 12

            page.get_by_role("button", name="Stop sharing").click()
            expect(panel).to_have_attribute("data-state", "idle", timeout=90_000)
            panel.screenshot(path=str(ARTIFACTS / "stopped.png"))
            deadline = time.monotonic() + 60
            while httpx.get(f"{lab}qubix/api/providers/{status['workerId']}").json()["isOnline"]:
                assert time.monotonic() < deadline, "the provider stayed online after stop"
                time.sleep(0.3)

            # Share another machine: the install command, by keyboard.
            page.context.grant_permissions(["clipboard-read", "clipboard-write"])
            page.get_by_role("button", name="Create install command").focus()
            page.keyboard.press("Enter")
            command_box = page.get_by_label("Install command (run it on the machine to share)")
            expect(command_box).to_have_value(re.compile(r"^pip install"), timeout=30_000)
            command = command_box.input_value()
            match = re.fullmatch(
                r"pip install qubix-jupyter && qubix provide --market (\S+) "
                r"--token (qxp_[\w-]+) --price 12",
                command,
            )
            assert match, command
            assert match[1] == lab  # the market is this server, as the browser reaches it
            expect(panel.locator("#qx-install-status")).to_contain_text("ready")
            panel.screenshot(path=str(ARTIFACTS / "install-command.png"))
            _audit(page)
            page.get_by_role("button", name="Copy command").focus()
            page.keyboard.press("Enter")
            expect(panel.locator("#qx-install-status")).to_have_text("Copied the install command.")
            assert page.evaluate("navigator.clipboard.readText()") == command
            # Its token registers for the agent's wallet, and only that.
            token = match[2]
            registered = _quick_register(lab, token, "lab-other-machine")
            assert registered.status_code == 200, registered.text
            agent_wallet = KeyPair.from_seed(read_seed_file(tmp_path / "agent-seed")).identity
            assert registered.json()["provider"]["qubicAddress"] == agent_wallet
            me = httpx.get(
                f"{lab}qubix/api/me", headers={"Authorization": f"Bearer {token}"}, timeout=10
            )
            assert me.status_code == 401
            # Revoked from the panel: it registers nothing more.
            page.get_by_role("button", name="Revoke its token").click()
            expect(panel.locator("#qx-install-status")).to_contain_text(
                "Token revoked", timeout=30_000
            )
            assert _quick_register(lab, token, "lab-other-machine").status_code == 401
            _audit(page)
        finally:
            browser.close()


def test_share_another_machine_says_why_no_token_here_without_an_agent(
    lab_market: str,
) -> None:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page, panel = _open_panel(browser, lab_market)
            expect(panel).to_have_attribute("data-state", "no-agent", timeout=30_000)
            expect(panel.locator("#qx-other-intro")).to_contain_text(
                "runs no QUBIX agent, so it cannot create a provisioning token"
            )
            expect(page.get_by_role("button", name="Create install command")).to_be_hidden()
            command_box = page.get_by_label("Install command (run it on the machine to share)")
            # This server is the market (role market): the command names it.
            expect(command_box).to_have_value(
                f"pip install qubix-jupyter && qubix provide --market {lab_market} --price 10 "
                "--seed-file ~/.qubix/seed",
                timeout=30_000,
            )
            expect(page.get_by_role("button", name="Share my GPU")).to_be_disabled()
            panel.screenshot(path=str(ARTIFACTS / "no-agent.png"))
            _audit(page)
        finally:
            browser.close()
