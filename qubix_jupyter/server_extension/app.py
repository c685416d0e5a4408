"""``QubixExtension``: the market server as a Jupyter server extension.

On start it connects to the database (migrating the embedded SQLite default, refusing any other
database whose schema is not current), builds the ledger and the services once, stores them in
the tornado settings, and registers the route table under ``{base_url}qubix/api/``. Jupyter's own
APIs keep Jupyter's authentication; the market's routes use the market's bearer tokens.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from jupyter_server.utils import url_path_join
from traitlets import (
    Bool,
    CaselessStrEnum,
    Float,
    Int,
    List,
    TraitError,
    Type,
    Unicode,
    default,
    validate,
)

from ..config import default_database_url
from ..db import migrate
from ..db.auth_store import AuthStore
from ..db.engine import make_engine, make_sessionmaker
from ..db.event_store import save_hub_state, take_hub_state
from ..db.idempotency_store import IdempotencyStore
from ..db.ledger import Ledger
from ..db.settlement_store import SettlementStore
from ..market.liveness import InvalidLivenessPolicy, LivenessPolicy
from ..settlement.backends import SettlementBackend, SettlementNotConfigured, make_backend
from . import periodic
from .agent import AgentService
from .agent_endpoints import AGENT
from .auth import AuthService, RateLimiter
from .events import EventHub, HeartbeatPolicy, HubState
from .execution import EXECUTION, ExecutionService
from .handlers import (
    OPENAPI,
    SERVICES,
    NotFoundHandler,
    RouteHandler,
    WorkerRouteHandler,
    serves_on_tornado,
)
from .jobs import JobService
from .liveness import HeartbeatBuffer
from .metrics import MarketMetrics
from .openapi import openapi_document
from .routes import API_PREFIX, MARKET, ROUTES, by_path, routes_for
from .scheduler_directory import SchedulerDirectory
from .services import HealthService, Services, WalletService
from .settlement import SettlementService
from .websocket import EVENTS, EVENTS_PATH, ChannelOwnership, EventsHandler, add_events_to


def _ensure_current_now(url: str) -> None:
    """``migrate.ensure_current`` from synchronous start-up code (the server's loop may be
    running already, so it runs on a loop of its own in a worker thread)."""

    async def check() -> None:
        engine = make_engine(url)
        try:
            await migrate.ensure_current(engine)
        finally:
            await engine.dispose()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, check()).result()


def _take_hub_state_now(url: str) -> HubState | None:
    """The event hub state the previous process saved as it stopped (taken: deleted), read from
    start-up code like ``_ensure_current_now``."""

    async def take() -> HubState | None:
        engine = make_engine(url)
        try:
            saved = await take_hub_state(make_sessionmaker(engine))
        finally:
            await engine.dispose()
        if saved is None:
            return None
        head, floor, frames = saved
        return HubState(head=head, floor=floor, frames=tuple(frames))

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, take()).result()


class QubixExtension(ExtensionApp):
    """QUBIX: a GPU-time marketplace in Jupyter (market and/or local agent)."""

    name = "qubix"
    description = __doc__
    load_other_extensions = True
    #: Set by :meth:`stop_extension`: a scheduler start that comes after it does nothing.
    _stopping = False
    #: The scheduler start under way (:meth:`_start_execution`), which a stop waits for.
    _execution_starting: asyncio.Task[None] | None = None

    database_url = Unicode(
        config=True,
        help="""Database of the market: postgresql://user:password@host/db or sqlite:///path.

        Default: $QUBIX_DATABASE_URL, else the embedded SQLite file
        {jupyter data dir}/qubix/qubix.db, which is created and migrated on first start. Any
        other database must be migrated by its operator first (`qubix db upgrade
        --database-url URL`); the server refuses to start on an old schema.
        Example: c.QubixExtension.database_url = "postgresql://qubix@db.internal/qubix"
        """,
    )

    role = CaselessStrEnum(
        ["market", "agent", "both"],
        default_value="both",
        config=True,
        help="""What this server is: "market" hosts the marketplace API, ledger and matcher;
        "agent" is a provider's or consumer's own Jupyter (local GPU, local worker, the user's
        market token kept server-side); "both" (default) runs the two in one process.
        Example: c.QubixExtension.role = "market"
        """,
    )

    scheduler_address = Unicode(
        "",
        config=True,
        help="""Address of an external Dask scheduler, e.g. "tls://scheduler.internal:8786".
        Empty (default): the market embeds its own scheduler on the server's event loop.
        Providers' workers learn the address from `GET scheduler` (worker token).
        """,
    )

    scheduler_listen = Unicode(
        "tcp://127.0.0.1:0",
        config=True,
        help="""Where the embedded Dask scheduler listens for providers' workers, e.g.
        "tcp://0.0.0.0:8786" (port 0: any free port). Empty: the market runs no scheduler and
        executes no jobs itself (providers then poll for their jobs over HTTP). Ignored when
        scheduler_address names an external scheduler.
        Example: c.QubixExtension.scheduler_listen = "tls://0.0.0.0:8786"
        """,
    )

    scheduler_contact_address = Unicode(
        "",
        config=True,
        help="""The address workers are told to dial (`GET scheduler`) when it differs from
        scheduler_listen (behind NAT or a proxy), e.g. "tls://market.example:8786".
        Empty (default): the address the scheduler listens on.
        """,
    )

    scheduler_tls_ca_file = Unicode(
        "",
        config=True,
        help="""CA certificate (PEM) for the scheduler's TLS: with scheduler_tls_cert_file and
        scheduler_tls_key_file the scheduler listens with tls:// and requires encryption
        (distributed.Security). Empty (default): plain tcp://.
        """,
    )

    scheduler_tls_cert_file = Unicode(
        "",
        config=True,
        help="""The scheduler's TLS certificate (PEM); see scheduler_tls_ca_file.""",
    )

    scheduler_tls_key_file = Unicode(
        "",
        config=True,
        help="""The scheduler's TLS private key (PEM); see scheduler_tls_ca_file.""",
    )

    worker_ttl_seconds = Float(
        15.0,
        config=True,
        help="""Seconds the scheduler waits for a silent worker (a stopped or unreachable
        process) before it removes it; its running job is then reassigned. Must be > 0.
        Example: c.QubixExtension.worker_ttl_seconds = 30
        """,
    )

    execute_jobs = Bool(
        True,
        config=True,
        help="""Whether this market runs its jobs on the providers' Dask workers (default).
        False: jobs are only assigned; providers poll for them and report over HTTP.
        """,
    )

    platform_fee_bps = Int(
        0,
        config=True,
        help="""Platform fee taken from each job charge, in basis points (1/100 of a percent):
        0 (default) takes nothing, 250 takes 2.5 %, at most 10000.
        Example: c.QubixExtension.platform_fee_bps = 250
        """,
    )

    heartbeat_interval = Float(
        5.0,
        config=True,
        help="""Seconds between provider heartbeats; a provider is offline after 3 missed ones.
        Must be > 0. Example: c.QubixExtension.heartbeat_interval = 10.0
        """,
    )

    heartbeat_flush_interval = Float(
        1.0,
        config=True,
        help="""Seconds between writes of the buffered provider heartbeats: a heartbeat is kept
        in memory and every this many seconds one transaction writes the latest of each
        provider (their metrics samples too). Must be > 0; larger means fewer writes and a
        staler lastHeartbeat. Example: c.QubixExtension.heartbeat_flush_interval = 2.0
        """,
    )

    metrics_sample_seconds = Float(
        10.0,
        config=True,
        help="""Seconds between two samples of a provider's metrics history (GET
        providers/{workerId}/metrics): heartbeats in between update the live metrics only.
        Must be > 0, and (3 + 1) × heartbeat_interval + metrics_sample_seconds +
        heartbeat_flush_interval at most 60, so an online provider's metrics are never older
        than 60 s. Example: c.QubixExtension.metrics_sample_seconds = 30.0
        """,
    )

    metrics_retention_hours = Float(
        24.0,
        config=True,
        help="""Hours the metrics history is kept; older samples are deleted about once a
        minute. Must be > 0. Example: c.QubixExtension.metrics_retention_hours = 168
        """,
    )

    max_body_bytes = Int(
        1024 * 1024,
        config=True,
        help="""Largest request body the market API accepts, in bytes; a larger one is answered
        413. Default 1 MiB. Must be > 0. Example: c.QubixExtension.max_body_bytes = 65536
        """,
    )

    allowed_origins = List(
        Unicode(),
        default_value=[],
        config=True,
        help="""Browser origins, other than the server's own, allowed to call the market API
        (CORS), e.g. ["https://lab.example.org"]; ["*"] allows any. Default [] (same origin
        and non-browser clients only). Jupyter's own APIs keep ServerApp.allow_origin.
        """,
    )

    token_ttl_seconds = Int(
        30 * 24 * 3600,
        config=True,
        help="""Lifetime of a market bearer token issued at wallet connect, in seconds
        (default 30 days). Must be > 0. Example: c.QubixExtension.token_ttl_seconds = 86400
        """,
    )

    challenge_ttl_seconds = Int(
        300,
        config=True,
        help="""Lifetime of a wallet login challenge, in seconds (default 5 minutes); each
        challenge is also single-use. Must be > 0.
        """,
    )

    rate_limit_per_minute = Int(
        600,
        config=True,
        help="""Requests a minute allowed per market token (per client IP on public routes),
        with bursts up to the same number; over it the API answers 429 with Retry-After.
        0 turns the limit off. Example: c.QubixExtension.rate_limit_per_minute = 120
        """,
    )

    auth_service_class = Type(
        default_value=AuthService,
        klass=AuthService,
        config=True,
        help="""The market's login service (wallet challenges, bearer tokens): a subclass of
        qubix_jupyter.server_extension.auth.AuthService, e.g. one that also accepts tokens from
        an identity provider. Built once at start with the same arguments as the default.
        Example: c.QubixExtension.auth_service_class = "mycompany.qubix.SsoAuthService"
        """,
    )

    settlement_backend = CaselessStrEnum(
        ["memory", "qubic"],
        default_value="memory",
        config=True,
        help="""Where QU enters and leaves the ledger. "memory" (default): a simulated Qubic
        chain in this process, for demos and development; POST wallet/deposit funds a wallet
        and nothing reaches the network. "qubic": the Qubic network through qubic_rpc_url,
        deposits watched at per-user identities, payouts sent from the platform wallet whose
        seed is in qubic_platform_seed_file.
        Example: c.QubixExtension.settlement_backend = "qubic"
        """,
    )

    settlement_interval = Float(
        5.0,
        config=True,
        help="""Seconds between settlement rounds (credit new deposits, send and confirm
        payouts; with the memory backend each round is also one tick of the simulated chain).
        0 runs no rounds in this process (another process of the market runs them). Must be
        >= 0. Example: c.QubixExtension.settlement_interval = 2.0
        """,
    )

    qubic_rpc_url = Unicode(
        "",
        config=True,
        help="""Qubic RPC gateway serving /live/v1 and /query/v1, for the "qubic" settlement
        backend, e.g. "https://rpc.qubic.org" (or your own node's gateway). Required with it.
        """,
    )

    qubic_platform_seed_file = Unicode(
        "",
        config=True,
        help="""Path of a file that holds the platform wallet's seed (55 lowercase letters, the
        first line), for the "qubic" settlement backend: payouts are signed with it, so keep the
        file readable by the server only. Required with it.
        Example: c.QubixExtension.qubic_platform_seed_file = "/run/secrets/qubix-platform-seed"
        """,
    )

    qubic_deposit_seed_file = Unicode(
        "",
        config=True,
        help="""Path of a file that holds a secret (its first line) from which each user's
        deposit identity is derived, for the "qubic" settlement backend; the operator can
        re-derive a deposit identity's seed from it to move what was deposited. Empty (default):
        users have no deposit identity until the operator assigns one.
        """,
    )

    assign_timeout_seconds = Float(
        30.0,
        config=True,
        help="""Seconds a new job may wait for an online, available provider that meets its
        constraints; after that it fails as "unassignable" and its escrow is refunded whole.
        The assigner retries waiting jobs about once a second, and at once when a provider
        becomes free. Must be > 0. Example: c.QubixExtension.assign_timeout_seconds = 60
        """,
    )

    max_reassignments = Int(
        2,
        config=True,
        help="""Times a job moves to another provider when its provider is lost (worker gone,
        hardware fault) before it fails with a full refund. 0 never reassigns.
        Example: c.QubixExtension.max_reassignments = 3
        """,
    )

    max_result_bytes = Int(
        1024 * 1024,
        config=True,
        help="""Largest job result the market keeps, in bytes of compact JSON (default 1 MiB).
        A worker that reports a larger one is answered 413 payload_too_large; the job fails,
        is charged the time it used, and the rest of its escrow is refunded. Must be > 0.
        Example: c.QubixExtension.max_result_bytes = 16777216
        """,
    )

    agent_market_url = Unicode(
        "",
        config=True,
        help="""The market this Jupyter's agent shares the machine with (JupyterLab's Share my
        GPU), e.g. "https://market.example/". Empty (default): this server's own market (role
        both). Example: c.QubixExtension.agent_market_url = "https://qubix.example/"
        """,
    )

    agent_seed_file = Unicode(
        "",
        config=True,
        help="""Path of the agent's wallet seed file: the wallet that signs in to the market and
        is paid for shared GPU time. Created (owner-only) on first share when missing. Empty
        (default): {jupyter data dir}/qubix/agent-seed.
        """,
    )

    agent_heartbeat_interval = Float(
        5.0,
        config=True,
        help="""Seconds between the heartbeats of the agent's workers to the market.""",
    )

    #: Pings of the events WebSocket (not a trait: tests and embedders may replace it).
    event_heartbeat = HeartbeatPolicy()

    #: True when database_url is the embedded default nobody configured.
    _embedded_database = False

    @default("database_url")
    def _default_database_url(self) -> str:
        self._embedded_database = not os.environ.get("QUBIX_DATABASE_URL")
        return default_database_url()

    @validate("platform_fee_bps")
    def _valid_fee(self, proposal: dict) -> int:  # type: ignore[type-arg]
        value = proposal["value"]
        if not 0 <= value <= 10_000:
            raise TraitError(f"platform_fee_bps must be within 0..10000, not {value}")
        return value  # type: ignore[no-any-return]

    @validate(
        "heartbeat_flush_interval",
        "metrics_sample_seconds",
        "metrics_retention_hours",
        "heartbeat_interval",
        "max_body_bytes",
        "assign_timeout_seconds",
        "max_result_bytes",
        "worker_ttl_seconds",
        "token_ttl_seconds",
        "challenge_ttl_seconds",
    )
    def _positive(self, proposal: dict) -> float:  # type: ignore[type-arg]
        value = proposal["value"]
        if value <= 0:
            raise TraitError(f"{proposal['trait'].name} must be > 0, not {value}")
        return value  # type: ignore[no-any-return]

    @validate("settlement_interval")
    def _valid_interval(self, proposal: dict) -> float:  # type: ignore[type-arg]
        value = proposal["value"]
        if value < 0:
            raise TraitError(f"settlement_interval must be >= 0 (0: no rounds), not {value}")
        return value  # type: ignore[no-any-return]

    @validate("max_reassignments")
    def _reassignments(self, proposal: dict) -> int:  # type: ignore[type-arg]
        value = proposal["value"]
        if value < 0:
            raise TraitError(f"max_reassignments must be >= 0, not {value}")
        return value  # type: ignore[no-any-return]

    @validate("rate_limit_per_minute")
    def _non_negative(self, proposal: dict) -> int:  # type: ignore[type-arg]
        value = proposal["value"]
        if value < 0:
            raise TraitError(f"rate_limit_per_minute must be >= 0 (0: off), not {value}")
        return value  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ start

    def _prepare_database(self) -> None:
        url = self.database_url
        if self._embedded_database:
            before = migrate.current_revision(url)
            migrate.upgrade(url)
            after = migrate.current_revision(url)
            if before != after:
                self.log.info("QUBIX embedded database %s: %s → %s", url, before or "new", after)
        else:
            _ensure_current_now(url)

    @staticmethod
    def _secret(path: str, trait: str) -> str | None:
        if not path:
            return None
        try:
            with open(os.path.expanduser(path), encoding="utf-8") as file:
                return file.readline().strip()
        except OSError as exc:
            raise SettlementNotConfigured(
                f"QubixExtension.{trait}: cannot read {path}: {exc.strerror}", field=trait
            ) from exc

    def _settlement_backend(self, ledger: Ledger, sessionmaker: object) -> SettlementBackend:
        if self.settlement_backend == "memory":
            return make_backend("memory", ledger=ledger)
        if not self.qubic_rpc_url:
            raise SettlementNotConfigured(
                "the qubic settlement backend needs QubixExtension.qubic_rpc_url",
                field="qubic_rpc_url",
            )
        return make_backend(
            "qubic",
            ledger=ledger,
            store=SettlementStore(sessionmaker),  # type: ignore[arg-type]
            rpc_url=self.qubic_rpc_url,
            platform_seed=self._secret(self.qubic_platform_seed_file, "qubic_platform_seed_file"),
            deposit_seed=self._secret(self.qubic_deposit_seed_file, "qubic_deposit_seed_file"),
        )

    def initialize_settings(self) -> None:
        try:
            self._prepare_database()
        except Exception as exc:
            # Jupyter logs a failed extension as a warning and serves on without it; say why
            # in the operator's words first.
            self.log.error("QUBIX market not started: %s", getattr(exc, "message", exc))
            raise
        engine = make_engine(self.database_url)
        sessionmaker = make_sessionmaker(engine)
        ledger = Ledger(sessionmaker, platform_fee_bps=self.platform_fee_bps)
        self.routes = routes_for(self.role, ROUTES)
        self.events = EventHub(
            authorize=ChannelOwnership(sessionmaker), resume=self._previous_hub_state()
        )
        try:
            policy = LivenessPolicy(
                heartbeat_interval=self.heartbeat_interval,
                metrics_sample_seconds=self.metrics_sample_seconds,
                flush_interval=self.heartbeat_flush_interval,
            )
        except InvalidLivenessPolicy as exc:
            self.log.error("QUBIX market not started: %s", exc)
            raise
        heartbeats = HeartbeatBuffer(
            sessionmaker,
            self.events,
            policy,
            retention=dt.timedelta(hours=self.metrics_retention_hours),
        )
        try:
            backend = self._settlement_backend(ledger, sessionmaker)
        except Exception as exc:
            self.log.error("QUBIX market not started: %s", getattr(exc, "message", exc))
            raise
        settlement = SettlementService(backend, self.events)
        jobs = JobService(
            sessionmaker,
            ledger,
            self.events,
            assign_timeout_seconds=self.assign_timeout_seconds,
            max_result_bytes=self.max_result_bytes,
            max_reassignments=self.max_reassignments,
        )
        services = Services(
            role=self.role,
            engine=engine,
            sessionmaker=sessionmaker,
            ledger=ledger,
            auth=self.auth_service_class(
                AuthStore(sessionmaker),
                token_ttl_seconds=self.token_ttl_seconds,
                challenge_ttl_seconds=self.challenge_ttl_seconds,
            ),
            wallets=WalletService(sessionmaker, ledger),
            health=HealthService(engine),
            rate_limiter=RateLimiter(self.rate_limit_per_minute),
            idempotency=IdempotencyStore(sessionmaker),
            events=self.events,
            settlement=settlement,
            jobs=jobs,
            metrics=MarketMetrics(sessionmaker, self.events, settlement_backend=backend.name),
            liveness=heartbeats,
            max_body_bytes=self.max_body_bytes,
            allowed_origins=tuple(self.allowed_origins),
            scheduler=SchedulerDirectory(self.scheduler_address),
        )
        if self.role in AGENT:
            services = dataclasses.replace(services, agent=self._agent())
        self.services = services
        self.execution = self._execution(services)
        if self.role in MARKET and self.serverapp is not None:
            # On the server's loop once it runs: a server that is only initialized and started
            # (pytest-jupyter, embedders) never calls the extension's start hook.
            loop = self.serverapp.io_loop
            loop.add_callback(self._start_loop, heartbeats.start)
            loop.add_callback(self._start_loop, jobs.start)
            if self.execution is not None:
                loop.add_callback(self._start_execution, self.execution)
            if self.settlement_interval > 0:
                loop.add_callback(self._start_loop, settlement.start, self.settlement_interval)
        base_url = self.serverapp.base_url if self.serverapp else "/"
        document = openapi_document(self.routes, base_url)
        if self.role in MARKET:
            add_events_to(document)
        self.settings.update(
            {SERVICES: services, OPENAPI: document, EVENTS: self.events, EXECUTION: self.execution}
        )
        self.log.info(
            "QUBIX %s on %s (%s)", self.role, engine.url.render_as_string(), engine.dialect.name
        )

    def _agent(self) -> AgentService:
        seed_file = self.agent_seed_file or os.path.join(jupyter_data_dir(), "qubix", "agent-seed")

        def market_url() -> str:
            if self.agent_market_url:
                return self.agent_market_url
            # Loopback: the workers and the agent run on this machine, beside this server.
            server = self.serverapp
            return f"http://127.0.0.1:{server.port}{server.base_url}" if server else ""

        return AgentService(
            market_url=market_url,
            seed_file=Path(os.path.expanduser(seed_file)),
            heartbeat_interval_s=self.agent_heartbeat_interval,
            market_is_this_server=lambda: not self.agent_market_url,
        )

    def _security(self) -> object | None:
        files = (self.scheduler_tls_ca_file, self.scheduler_tls_cert_file)
        if not any(files):
            return None
        from distributed import Security

        ca, cert = (os.path.expanduser(f) for f in files)
        key = os.path.expanduser(self.scheduler_tls_key_file) or None
        return Security(
            tls_ca_file=ca,
            tls_scheduler_cert=cert,
            tls_scheduler_key=key,
            tls_client_cert=cert,
            tls_client_key=key,
            require_encryption=True,
        )

    def _execution(self, services: Services) -> ExecutionService | None:
        if self.role not in MARKET or not self.execute_jobs:
            return None
        if not self.scheduler_address and not self.scheduler_listen:
            return None
        return ExecutionService(
            services.jobs,
            services.liveness,
            services.sessionmaker,
            services.auth,
            services.scheduler,
            listen=self.scheduler_listen,
            external_address=self.scheduler_address,
            contact_address=self.scheduler_contact_address or None,
            security=self._security(),  # type: ignore[arg-type]
            worker_ttl_s=self.worker_ttl_seconds,
            max_result_bytes=self.max_result_bytes,
        )

    def _start_loop(self, start: Callable[..., None], *args: Any) -> None:
        """Start a background loop (liveness, the assigner, settlement) unless the extension
        was stopped before the server's loop came to it: its stop found nothing to stop then,
        and the loop would run on a disposed engine."""
        if not self._stopping:
            start(*args)

    async def _start_execution(self, execution: ExecutionService) -> None:
        if self._stopping:
            return  # stopped before the loop came to it
        # Kept so that a stop waits for it: a start still reconciling when the engine is
        # disposed would go on to open a connection that nobody closes.
        self._execution_starting = asyncio.current_task()
        try:
            await execution.start()
        except Exception as exc:  # the API serves on; jobs wait for a scheduler
            self.log.error("QUBIX scheduler not started: %s", exc)
        finally:
            self._execution_starting = None

    def initialize_handlers(self) -> None:
        table = by_path(self.routes)
        # The worker-token paths first: tornado tries patterns in order, and these take the
        # market's busiest traffic. No other path of the table matches theirs (tested in
        # test_openapi), so the order changes nothing else.
        workers = {path: methods for path, methods in table.items() if serves_on_tornado(methods)}
        for path, methods in workers.items():
            self.handlers.append((API_PREFIX + path, WorkerRouteHandler, {"routes": methods}))
        for path, methods in table.items():
            if path not in workers:
                self.handlers.append((API_PREFIX + path, RouteHandler, {"routes": methods}))
        if self.role in MARKET:
            self.handlers.append(
                (API_PREFIX + EVENTS_PATH, EventsHandler, {"heartbeat": self.event_heartbeat})
            )
        self.handlers.append((url_path_join(API_PREFIX, "(.*)"), NotFoundHandler))

    def _previous_hub_state(self) -> HubState | None:
        if self.role not in MARKET:
            return None
        try:
            state = _take_hub_state_now(self.database_url)
        except Exception as exc:  # clients then get a RESYNC: worse, not wrong
            self.log.warning("QUBIX events: the previous hub state is unusable: %s", exc)
            return None
        if state is not None:
            self.log.info("QUBIX events: resuming after seq %d", state.head)
        return state

    async def _hand_over_events(self, events: EventHub, services: Services) -> None:
        """Save the stopped hub's state for the next process (see ``db.event_store``)."""
        state = events.state()
        try:
            await save_hub_state(services.sessionmaker, state.head, state.floor, list(state.frames))
        except Exception as exc:
            self.log.warning("QUBIX events: could not save the hub state: %s", exc)

    async def stop_extension(self) -> None:
        self._stopping = True
        await periodic.finish(self._execution_starting)
        services = getattr(self, "services", None)
        if services is not None and services.agent is not None:
            await services.agent.close()  # its workers drain while the market still answers
        if services is not None:
            await services.liveness.stop()  # writes the heartbeats still buffered
            await services.jobs.stop()
        execution = getattr(self, "execution", None)
        if execution is not None:
            await execution.stop()
        events = getattr(self, "events", None)
        if events is not None:
            events.flush()  # a pending coalesced update is buffered, so it is handed over
            events.close()  # every WebSocket gets 1001 going_away
        services = getattr(self, "services", None)
        if events is not None and services is not None and self.role in MARKET:
            await self._hand_over_events(events, services)
        if services is not None:
            await services.settlement.stop()
            await services.engine.dispose()
