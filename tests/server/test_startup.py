"""What the extension does when it starts: schema checks, the embedded default, roles, config."""

from __future__ import annotations

import asyncio
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from traitlets import TraitError

import qubix_jupyter
from qubix_jupyter.db import migrate
from qubix_jupyter.market.errors import SchemaOutOfDate
from qubix_jupyter.server_extension.app import QubixExtension
from qubix_jupyter.server_extension.auth import AuthService
from qubix_jupyter.server_extension.routes import ROUTES

from ..conftest import DatabaseURL
from .conftest import Api, body_of, login


def test_an_old_schema_is_refused_at_start(
    database_url: DatabaseURL, jp_configurable_serverapp, capfd: pytest.CaptureFixture[str]
):
    migrate.downgrade(database_url.url, "0002")
    with pytest.raises(SchemaOutOfDate, match="qubix db upgrade"):
        jp_configurable_serverapp()
    logged = capfd.readouterr().err
    assert "QUBIX market not started" in logged
    assert "qubix db upgrade" in logged
    # nothing was migrated behind the operator's back
    assert migrate.current_revision(database_url.url) == "0002"


@pytest.mark.parametrize(
    ("trait", "value"),
    [
        ("platform_fee_bps", -1),
        ("platform_fee_bps", 10_001),
        ("heartbeat_interval", 0.0),
        ("max_body_bytes", 0),
        ("token_ttl_seconds", -5),
        ("rate_limit_per_minute", -1),
        ("role", "broker"),
    ],
)
def test_bad_config_is_refused(trait: str, value: Any):
    with pytest.raises(TraitError):
        QubixExtension(**{trait: value})


def test_every_config_trait_explains_itself():
    traits = QubixExtension.class_own_traits(config=True)
    assert {
        "database_url",
        "role",
        "scheduler_address",
        "platform_fee_bps",
        "heartbeat_interval",
        "max_body_bytes",
        "allowed_origins",
        "token_ttl_seconds",
        "rate_limit_per_minute",
    } <= set(traits)
    for name, trait in traits.items():
        assert len(trait.help) > 60, name


class TestAgentRole:
    @pytest.fixture
    def qubix_config(self) -> dict[str, Any]:
        return {"role": "agent"}

    async def test_an_agent_serves_no_market_routes(self, api: Api):
        health = await api("GET", "health")
        assert body_of(health)["role"] == "agent"
        paths = set(body_of(await api("GET", "openapi.json"))["paths"])
        # Only what an agent is for: health, the document, and its own agent/* routes.
        assert paths == {"/" + r.openapi_path for r in ROUTES if "agent" in r.roles}
        assert {"/health", "/openapi.json", "/agent/status", "/agent/share"} <= paths
        assert not {p for p in paths if p.split("/")[1] in {"providers", "jobs", "wallet", "me"}}
        assert (await api("GET", "me")).code == 404


class TestEmbeddedDefault:
    @pytest.fixture
    def jp_server_config(self, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
        monkeypatch.delenv("QUBIX_DATABASE_URL", raising=False)
        return {
            "ServerApp": {
                "jpserver_extensions": {"qubix_jupyter": True, "jupyter_server_terminals": False},
                "allow_unauthenticated_access": False,
                "reraise_server_extension_failures": True,
            }
        }

    async def test_first_start_creates_the_sqlite_database_under_the_data_dir(
        self, api: Api, jp_data_dir: Path
    ):
        response = await api("GET", "health")
        assert response.code == 200
        assert body_of(response)["database"] == {"reachable": True, "backend": "sqlite"}
        path = jp_data_dir / "qubix" / "qubix.db"
        assert path.exists()
        assert migrate.current_revision(f"sqlite:///{path}") == migrate.head_revision()


def test_the_wheel_enables_the_extension():
    """The wheel installs a jupyter_server_config.d file that turns the extension on."""
    root = Path(__file__).resolve().parents[2]
    project = tomllib.loads((root / "pyproject.toml").read_text())
    shared = project["tool"]["hatch"]["build"]["targets"]["wheel"]["shared-data"]
    source = "jupyter-config/jupyter_server_config.d/qubix_jupyter.json"
    assert shared[source] == "etc/jupyter/jupyter_server_config.d/qubix_jupyter.json"
    config = json.loads((root / source).read_text())
    assert config == {"ServerApp": {"jpserver_extensions": {"qubix_jupyter": True}}}
    points = qubix_jupyter._jupyter_server_extension_points()
    assert points == [{"module": "qubix_jupyter.server_extension.app", "app": QubixExtension}]
    assert QubixExtension.name == "qubix"


class CountingAuthService(AuthService):
    """A drop-in login service, chosen by configuration."""

    challenges_issued = 0

    async def issue_challenge(self, qubic_address: str) -> Any:
        type(self).challenges_issued += 1
        return await super().issue_challenge(qubic_address)


class TestSwappableAuthService:
    @pytest.fixture
    def qubix_config(self) -> dict[str, Any]:
        return {"auth_service_class": f"{__name__}.CountingAuthService"}

    async def test_the_configured_class_serves_the_requests(self, api: Api, jp_serverapp):
        services = jp_serverapp.web_app.settings["qubix_services"]
        assert type(services.auth) is CountingAuthService
        before = CountingAuthService.challenges_issued
        session = await login(api)
        assert session["success"] is True
        assert CountingAuthService.challenges_issued == before + 1


async def test_a_stop_waits_for_the_scheduler_start_under_way(api: Api, jp_serverapp: Any):
    """A start still reconciling when the engine is disposed would open a connection that
    nobody closes: the stop lets it finish first, and a start that comes after does nothing."""
    [extension] = jp_serverapp.extension_manager.extension_apps["qubix_jupyter"]
    release = asyncio.Event()
    started: list[str] = []

    class SlowStart:
        async def start(self) -> None:
            started.append("begun")
            await release.wait()
            started.append("ended")

    starting = asyncio.ensure_future(extension._start_execution(SlowStart()))
    await asyncio.sleep(0.05)
    stopping = asyncio.ensure_future(extension.stop_extension())
    await asyncio.sleep(0.3)
    assert not stopping.done()  # waiting for the start under way
    release.set()
    await asyncio.wait_for(stopping, 30)
    await starting
    assert started == ["begun", "ended"]
    await extension._start_execution(SlowStart())  # after the stop: nothing starts
    assert started == ["begun", "ended"]


async def test_a_background_loop_whose_start_comes_after_the_stop_does_not_start(
    api: Api, jp_serverapp: Any
):
    """The liveness, assigner and settlement loops are started by the server's loop once it
    runs; a stop that came first found nothing to stop, so a start after it must not run them
    on the disposed engine."""
    [extension] = jp_serverapp.extension_manager.extension_apps["qubix_jupyter"]
    started: list[str] = []
    extension._start_loop(started.append, "before")  # the extension is running: it starts
    await extension.stop_extension()
    extension._start_loop(started.append, "after")
    assert started == ["before"]
