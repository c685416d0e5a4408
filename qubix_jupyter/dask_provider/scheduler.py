"""The market's Dask scheduler: embedded on the server's event loop, guarded, and watched.

Only the market's own client may run code on the cluster (DESIGN.md §2). The scheduler listens
on a network address for the providers' workers and, inside the market process only, on an
``inproc://`` address for the market's client. :class:`SchedulerGuard` wraps the scheduler's
handlers so that a connection from the network may do only what a worker or nanny needs
(register, heartbeat, unregister …); everything that submits work, runs functions or installs
plugins answers an error to it, and a foreign ``Client`` is refused at ``register-client``. A
worker is admitted only with a valid worker token, which its preload
(:mod:`.worker_plugin`) presents in the worker's startup information.

:class:`MarketSchedulerPlugin` turns worker arrivals and departures into provider
online/offline callbacks, task transitions into job callbacks, the workers' ``qubix-progress``
events into progress callbacks, and the small results they relay on their stream
(``qubix-job-result``) into result callbacks.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import dask
from distributed import Client, Scheduler, Security
from distributed.comm import Comm
from distributed.core import error_message
from distributed.diagnostics.plugin import SchedulerPlugin

from .runners import JobResult

log = logging.getLogger(__name__)

#: The key of the worker's startup information that carries its worker token.
TOKEN_KEY = "qubix-worker-token"
#: The event topic on which workers relay job progress (``{"jobId", "fraction"}``).
PROGRESS_TOPIC = "qubix-progress"
#: The worker-stream message that carries a small result to the market's own scheduler as the
#: job's child returns it (``{"jobId", "key", "data", "seconds"}``): ahead of the task's end,
#: and of the market fetching the result from the worker after it.
RESULT_OP = "qubix-job-result"
#: Results up to this size are relayed (the stream is every message of the worker's); larger
#: ones come the usual way.
RELAY_MAX_BYTES = 64 * 1024
#: A silent worker is removed after this long (seconds; distributed's ``worker-ttl``).
DEFAULT_WORKER_TTL_S = 15.0

#: ``(worker name, worker token) → admitted?``; the market checks the token against the provider
#: the name (its ``workerId``) belongs to.
WorkerValidator = Callable[[str, str], "bool | Awaitable[bool]"]

#: What a connection from the network may ask of the scheduler: the worker's and nanny's own
#: calls. Everything else is the market client's alone.
NETWORK_HANDLERS = frozenset(
    {
        "register-worker",
        "register_nanny",
        "unregister",
        "heartbeat_worker",
        "who_has",
        "retire_workers",
        "set_resources",
        "log_event",
        "identity",
        "echo",
        "close",
    }
)


def is_inproc(comm: Comm) -> bool:
    """The market's own client: only code inside the market process can reach inproc://."""
    return str(comm.peer_address).startswith("inproc://")


def trust_certificate(common_name: str) -> Callable[[Comm], bool]:
    """For a scheduler outside the market process (TLS only): the market's client is the one
    whose verified client certificate has this subject common name; workers get other names."""

    def trusted(comm: Comm) -> bool:
        if is_inproc(comm):
            return True
        certificate = comm.extra_info.get("peercert") or {}
        subject = dict(pair for rdn in certificate.get("subject", ()) for pair in rdn)
        return bool(subject.get("commonName") == common_name)

    return trusted


def market_validator(market_url: str, *, timeout_s: float = 10.0) -> WorkerValidator:
    """For a scheduler outside the market process: ask the market, through ``GET scheduler``
    with the worker's token, which ``workerId`` the token stands for."""
    import httpx

    url = f"{market_url.rstrip('/')}/qubix/api/scheduler"

    async def valid(name: str, token: str) -> bool:
        try:
            async with httpx.AsyncClient(timeout=timeout_s) as client:
                answer = await client.get(url, headers={"Authorization": f"Bearer {token}"})
        except (httpx.HTTPError, OSError):
            log.warning("QUBIX scheduler: the market at %s did not answer; refusing %r", url, name)
            return False
        if answer.status_code != 200:
            return False
        try:
            return bool(answer.json().get("workerId") == name)
        except ValueError:
            return False

    return valid


def _signature_with_comm(handler: Callable[..., Any]) -> inspect.Signature:
    original = inspect.signature(handler)
    params = [p for name, p in original.parameters.items() if name != "comm"]
    comm = inspect.Parameter("comm", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return original.replace(parameters=[comm, *params])


class SchedulerGuard:
    """Wraps ``scheduler.handlers`` so the network may only do what workers do."""

    def __init__(
        self,
        scheduler: Scheduler,
        validate_worker: WorkerValidator,
        *,
        is_trusted: Callable[[Comm], bool] = is_inproc,
        network_handlers: Iterable[str] = NETWORK_HANDLERS,
    ) -> None:
        self._validate = validate_worker
        self._trusted = is_trusted
        allowed = frozenset(network_handlers)
        self.refused: list[tuple[str, str]] = []  # (op, peer): what the network was denied
        for op, handler in list(scheduler.handlers.items()):
            if op == "register-client":
                wrapped = self._guard_client(handler)
            elif op == "register-worker":
                wrapped = self._guard_worker(handler)
            elif op == "log_event":
                wrapped = self._guard_log_event(handler)
            elif op in allowed:
                continue
            else:
                wrapped = self._guard(op, handler)
            scheduler.handlers[op] = wrapped

    def _deny(self, op: str, comm: Comm) -> dict[str, Any]:
        self.refused.append((op, str(comm.peer_address)))
        log.warning("QUBIX scheduler refused %r from %s", op, comm.peer_address)
        return dict(
            error_message(
                PermissionError(f"{op!r} is reserved to the market on this scheduler"),
                status="uncaught-error",
            )
        )

    def _guard(self, op: str, handler: Callable[..., Any]) -> Callable[..., Any]:
        takes_comm = "comm" in inspect.signature(handler).parameters

        def guarded(comm: Comm, **msg: Any) -> Any:
            if not self._trusted(comm):
                return self._deny(op, comm)
            return handler(comm, **msg) if takes_comm else handler(**msg)

        guarded.__signature__ = _signature_with_comm(handler)  # type: ignore[attr-defined]
        guarded.__name__ = getattr(handler, "__name__", op)
        return guarded

    def _guard_log_event(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """Nannies log events here; job progress counts only from an admitted worker's stream."""

        def guarded(comm: Comm, **msg: Any) -> Any:
            topics = msg.get("topic")
            topics = [topics] if isinstance(topics, str) else list(topics or ())
            if PROGRESS_TOPIC in topics and not self._trusted(comm):
                return self._deny("log_event", comm)
            return handler(**msg)

        guarded.__signature__ = _signature_with_comm(handler)  # type: ignore[attr-defined]
        return guarded

    def _guard_client(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        async def guarded(comm: Comm, **msg: Any) -> Any:
            if not self._trusted(comm):
                self._deny("register-client", comm)
                # The client waits for stream-start; an error there makes it fail at once.
                await comm.write(
                    [{"op": "stream-start", "error": "only the market may connect a client here"}]
                )
                await comm.close()
                return None
            return await handler(comm, **msg)

        guarded.__signature__ = _signature_with_comm(handler)  # type: ignore[attr-defined]
        return guarded

    def _guard_worker(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        async def guarded(comm: Comm, **msg: Any) -> Any:
            name = str(msg.get("name"))
            token = (msg.get("extra") or {}).get(TOKEN_KEY)
            admitted = isinstance(token, str) and bool(token)
            if admitted:
                answer = self._validate(name, token)
                admitted = bool(await answer if inspect.isawaitable(answer) else answer)
            if not admitted:
                self.refused.append(("register-worker", str(comm.peer_address)))
                log.warning("QUBIX scheduler refused worker %r: no valid worker token", name)
                await comm.write(
                    {"status": "error", "message": f"worker {name!r} refused: invalid worker token"}
                )
                return None
            return await handler(comm, **msg)

        guarded.__signature__ = _signature_with_comm(handler)  # type: ignore[attr-defined]
        return guarded


# ---------------------------------------------------------------------------- the plugin


@dataclasses.dataclass(frozen=True, slots=True)
class SchedulerCallbacks:
    """What the market hears from the scheduler; each one optional, each called on its loop."""

    #: (worker name = workerId, worker address, resources) when a worker is admitted.
    worker_online: Callable[[str, str, dict[str, float]], None] | None = None
    #: (worker name, worker address) when a worker leaves or is lost (closed, killed, silent).
    worker_offline: Callable[[str, str], None] | None = None
    #: (task key, from state, to state) for every transition of the market's tasks.
    task_transition: Callable[[str, str, str], None] | None = None
    #: (job id, fraction 0–1, worker name) as the worker relays it.
    job_progress: Callable[[str, float, str], None] | None = None
    #: (job id, task key, worker name, result) when a worker relays a result (``RESULT_OP``).
    job_result: Callable[[str, str, str, JobResult], None] | None = None


class MarketSchedulerPlugin(SchedulerPlugin):
    name = "qubix-market"

    def __init__(self, callbacks: SchedulerCallbacks) -> None:
        self._callbacks = callbacks
        self._names: dict[str, str] = {}  # worker address → name, kept past its removal

    def _call(self, callback: Callable[..., None] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:  # one faulty listener must not stop the scheduler's bookkeeping
            log.exception("QUBIX scheduler callback %r failed", callback)

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        state = scheduler.workers[worker]
        name = str(state.name)
        self._names[worker] = name
        self._call(self._callbacks.worker_online, name, worker, dict(state.resources))

    def remove_worker(self, scheduler: Scheduler, worker: str, **kwargs: Any) -> None:
        name = self._names.pop(worker, worker)
        self._call(self._callbacks.worker_offline, name, worker)

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        self._call(self._callbacks.task_transition, str(key), start, finish)

    def log_event(self, topic: str, msg: Any) -> None:
        if topic != PROGRESS_TOPIC or not isinstance(msg, dict):
            return
        # The scheduler stamps a worker's own events with its address; anything else is not
        # an admitted worker's word.
        name = self._names.get(str(msg.get("worker")))
        job, fraction = msg.get("jobId"), msg.get("fraction")
        if name is not None and isinstance(job, str) and isinstance(fraction, int | float):
            self._call(self._callbacks.job_progress, job, float(fraction), name)

    def relayed_result(self, worker: str, **msg: Any) -> None:
        """A worker stream's ``RESULT_OP`` (only an admitted worker has a stream; the
        scheduler names the worker it came from)."""
        name = self._names.get(worker)
        job, key, data, seconds = (msg.get(k) for k in ("jobId", "key", "data", "seconds"))
        if (
            name is not None
            and isinstance(job, str)
            and isinstance(key, str)
            and isinstance(data, bytes)
            and len(data) <= RELAY_MAX_BYTES
            and isinstance(seconds, int | float)
        ):
            self._call(self._callbacks.job_result, job, key, name, JobResult(data, float(seconds)))


# ---------------------------------------------------------------------------- start / connect


@dataclasses.dataclass(slots=True)
class MarketScheduler:
    """The running scheduler (None when external) and the market's client of it."""

    client: Client
    #: Where providers' workers connect (``GET scheduler`` answers it).
    worker_address: str
    scheduler: Scheduler | None = None
    guard: SchedulerGuard | None = None

    async def close(self) -> None:
        await self.client.close()
        if self.scheduler is not None:
            await self.scheduler.close()


async def start_scheduler(
    validate_worker: WorkerValidator,
    callbacks: SchedulerCallbacks = SchedulerCallbacks(),
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    security: Security | None = None,
    worker_ttl_s: float = DEFAULT_WORKER_TTL_S,
    contact_address: str | None = None,
) -> MarketScheduler:
    """An embedded scheduler on the running event loop, guarded, with the market's client.

    ``security`` (a ``distributed.Security``) makes the network listener TLS; the market's client
    reaches the scheduler in-process. ``contact_address`` is what workers are told to dial when
    it differs from the listening address (behind NAT or a proxy).
    """
    protocol = "tls" if security is not None and security.require_encryption else "tcp"
    with dask.config.set({"distributed.scheduler.worker-ttl": f"{worker_ttl_s}s"}):
        scheduler = Scheduler(
            host=host,
            port=port,
            protocol=protocol,
            security=security,
            dashboard=False,
            # Its HTTP routes (metrics) on a free local port: 8787 may be anyone's.
            dashboard_address="127.0.0.1:0",
            validate=False,
        )
        guard = SchedulerGuard(scheduler, validate_worker)
        plugin = MarketSchedulerPlugin(callbacks)
        scheduler.add_plugin(plugin)
        scheduler.stream_handlers[RESULT_OP] = plugin.relayed_result
        await scheduler
    listen_args = (security or Security()).get_listen_args("scheduler")
    await scheduler.listen(
        "inproc://",
        allow_offload=False,
        handshake_overrides={"pickle-protocol": 4, "compression": None},
        **listen_args,
    )
    inproc = scheduler.listeners[-1].contact_address
    client = await Client(inproc, asynchronous=True, security=security)
    return MarketScheduler(
        client=client,
        worker_address=contact_address or scheduler.address,
        scheduler=scheduler,
        guard=guard,
    )


def dask_setup(scheduler: Scheduler) -> None:
    """``dask scheduler --preload qubix_jupyter.dask_provider.scheduler`` for an operator's own
    scheduler: guarded as the embedded one, with the market's client recognised by its TLS
    certificate (``QUBIX_MARKET_CERT_CN``) and workers checked with the market
    (``QUBIX_MARKET_URL``). Set ``DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL=15s`` too."""
    import os

    market = os.environ.get("QUBIX_MARKET_URL", "")
    common_name = os.environ.get("QUBIX_MARKET_CERT_CN", "")
    if not market or not common_name:
        raise RuntimeError(
            "the qubix scheduler preload needs QUBIX_MARKET_URL and QUBIX_MARKET_CERT_CN "
            "(the subject common name of the market's TLS client certificate)"
        )
    SchedulerGuard(scheduler, market_validator(market), is_trusted=trust_certificate(common_name))


async def connect_scheduler(
    address: str, *, security: Security | None = None, worker_address: str | None = None
) -> MarketScheduler:
    """The market's client of an external scheduler its operator runs (and guards)."""
    client = await Client(address, asynchronous=True, security=security)
    return MarketScheduler(client=client, worker_address=worker_address or address)
