"""`qubix demo`: the whole market end to end on the embedded defaults.

It starts a real market (``qubix serve`` in a child process on a fresh temporary SQLite file, or
on PostgreSQL; the embedded scheduler, the memory settlement backend), shares this machine as two
providers with wallets of their own (the GPU if there is one, the CPU otherwise, at different
prices so the matcher's choice shows), signs a consumer in with a seed and funds the wallet
through the simulated chain, then runs a ``benchmark`` job, a Python function and a notebook
``cell`` on the providers' Dask workers, streaming their progress from the job channels. It ends
with the results, each provider's earnings, the consumer's balance and refunds, and the ledger
audit recomputed from every entry: the money of the real jobs. Everything the users do goes over
HTTP and the events WebSocket; only the final audit, the operator's check, opens the database.

Any failed step (a job that fails, an audit violation, a timeout) ends the demo with a message
that says which, and a non-zero exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from .dask_provider.gpu import detect_gpus
from .dask_provider.kinds import benchmark_payload, cell_payload
from .dask_provider.launcher import MarketRefused, ProvideConfig, ProviderLauncher, SharedDevice
from .settlement.keys import KeyPair
from .settlement.wallet import generate_seed, write_seed_file

FEE_BPS = 250  # 2.5 % platform fee
DEPOSIT = 2_000  # QU the consumer deposits
MAX_PRICE = 9_000  # QU per GPU-hour the consumer accepts
HOURS = 0.02  # each job's time budget: 72 s, escrowed at the max price
#: (name, price per hour, location) of the two offers; the cheaper one is matched first.
OFFERS = (("alice", 7_200, "EU-West"), ("bob", 3_600, "US-East"))
#: Generous: these only tell a stuck step from a slow one (a busy 2-core machine is slow).
STARTUP_TIMEOUT_S = 90.0
JOBS_TIMEOUT_S = 90.0
#: A job no provider takes in this long fails "unassignable" (and is refunded) before the
#: demo gives up waiting, so the demo can say why.
ASSIGN_TIMEOUT_S = 45.0
WORKER_ENV = {
    # The workers' own logs stay out of the demo's output; failures still reach the market.
    "DASK_LOGGING__DISTRIBUTED": "error",
    "PYTHONWARNINGS": "ignore",
}

CELL_SOURCE = """\
total = 0
for step in range(1, 6):
    total += step * step
    progress(step / 5)
    print(f"step {step}: total {total}")
total
"""


class DemoFailed(Exception):
    """A step of the demo did not do what it should; the message says which."""


def estimate_pi(samples: int) -> float:
    """The demo's Python job: a Monte Carlo π that reports its progress as it goes."""
    import random

    import qubix_jupyter as qubix

    rng = random.Random(2024)
    inside = 0
    chunk = samples // 5
    for done in range(chunk, samples + 1, chunk):
        inside += sum(rng.random() ** 2 + rng.random() ** 2 <= 1 for _ in range(chunk))
        qubix.progress(done / samples)
        time.sleep(0.2)  # slow enough for the progress to be seen arriving
    return 4 * inside / samples


# ---------------------------------------------------------------------------- the market


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MarketProcess:
    """``qubix serve`` in a child process with the demo's market config; its log to a file."""

    def __init__(self, database_url: str, workdir: Path) -> None:
        self.database_url = database_url
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = workdir / "market.log"
        self.env = dict(os.environ, PYTHONWARNINGS="ignore")
        self.env.pop("QUBIX_DATABASE_URL", None)
        for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR"):
            self.env[name] = str(workdir / name.lower())
            Path(self.env[name]).mkdir(parents=True, exist_ok=True)
        config = {
            "ServerApp": {"log_level": "WARN"},
            "QubixExtension": {
                "platform_fee_bps": FEE_BPS,
                "settlement_backend": "memory",
                "settlement_interval": 1.0,
                "assign_timeout_seconds": ASSIGN_TIMEOUT_S,
            },
        }
        config_file = Path(self.env["JUPYTER_CONFIG_DIR"]) / "jupyter_server_config.json"
        config_file.write_text(json.dumps(config))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "qubix_jupyter.cli", "serve", "--port", str(self.port)]
        command += ["--database-url", self.database_url]
        if os.geteuid() == 0:
            command.append("--allow-root")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DemoFailed(f"the market exited at start:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "qubix/api/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        raise DemoFailed(
            f"the market did not answer in {STARTUP_TIMEOUT_S:g} s; its log:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # a graceful stop: buffers flushed
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join("    " + line for line in text[-lines:])


class DemoLauncher(ProviderLauncher):
    """A provider of the demo: its workers keep their logs to themselves."""

    def worker_env(self, device: SharedDevice) -> dict[str, str]:
        return {**super().worker_env(device), **WORKER_ENV}


# ---------------------------------------------------------------------------- output


class Printer:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.started = time.monotonic()

    def __call__(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def step(self, text: str) -> None:
        self(f"[{self.elapsed:5.1f} s] {text}")

    def table(
        self, header: Sequence[str], rows: Sequence[Sequence[object]], indent: str = "  "
    ) -> None:
        widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
        for row in (header, *rows):
            cells = [str(c).ljust(w) for c, w in zip(row, widths, strict=True)]
            self((indent + "  ".join(cells)).rstrip())


def _bar(percent: int, width: int = 20) -> str:
    filled = round(width * percent / 100)
    return "█" * filled + "░" * (width - filled)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No library logs or warnings in the demo's output (the market's go to its log file)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            logging.disable(previous)


# ---------------------------------------------------------------------------- the demo


def run_demo(
    database_url: str | None = None, *, postgres: bool = False, out: TextIO | None = None
) -> bool:
    """Run the demo; True when every job completed and the ledger audit holds."""
    say = Printer(out if out is not None else sys.stdout)
    with _quiet(), tempfile.TemporaryDirectory(prefix="qubix-demo-") as tmp:
        try:
            if postgres:
                from .db.pg_cluster import PgCluster

                with PgCluster() as cluster:
                    url = cluster.create_database("qubix_demo")
                    _run(url, "PostgreSQL (throwaway cluster)", Path(tmp), say)
            else:
                url = database_url or f"sqlite:///{Path(tmp) / 'market.db'}"
                where = "SQLite (temporary file)" if database_url is None else _safe(url)
                _run(url, where, Path(tmp), say)
        except DemoFailed as exc:
            say(f"\ndemo FAILED after {say.elapsed:.1f} s: {exc}")
            return False
        except Exception as exc:  # a step broke in a way of its own: still say which, briefly
            say(f"\ndemo FAILED after {say.elapsed:.1f} s: {type(exc).__name__}: {exc}")
            return False
    say(f"\ndemo finished in {say.elapsed:.1f} s")
    return True


def _safe(url: str) -> str:
    """The URL without its password."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rsplit('@', 1)[-1]}"


def _run(url: str, where: str, tmp: Path, say: Printer) -> None:
    from .db import migrate

    say(f"QUBIX demo — the market end to end on {where}")
    say()
    try:
        migrate.upgrade(url)
    except Exception as exc:  # whatever the driver raises, the person needs the reason
        raise DemoFailed(f"cannot prepare the database {_safe(url)}: {exc}") from exc
    market = MarketProcess(url, tmp)
    launchers: list[tuple[str, DemoLauncher]] = []
    try:
        market.start()
        say.step(f"market up at {market.url} (memory settlement, fee {FEE_BPS / 100:g} %)")
        _start_providers(market, tmp, launchers, say)
        _market_session(market, url, launchers, say)
    except MarketRefused as exc:
        raise DemoFailed(f"{exc.message}\n  the market's log:\n{market.log_tail()}") from exc
    finally:
        # Every provider drains at once: each worker's graceful close takes a few seconds.
        drains = [
            threading.Thread(target=launcher.stop, kwargs={"timeout_s": 10})
            for _, launcher in launchers
        ]
        for drain in drains:
            drain.start()
        for drain in drains:
            drain.join()
        market.stop()
        say.step("providers drained, market stopped")


def _start_providers(
    market: MarketProcess, tmp: Path, launchers: list[tuple[str, DemoLauncher]], say: Printer
) -> None:
    """Start the two providers, each added to ``launchers`` first so that it is always drained."""
    report = detect_gpus()
    gpus = [g.index for g in report.gpus]
    say.step(f"this machine: {report.label}")
    for number, (name, price, location) in enumerate(OFFERS):
        seed = generate_seed()
        write_seed_file(tmp / f"{name}.seed", seed)
        # The first provider shares the first GPU (if any), the second the next one or the CPU.
        share = gpus[number : number + 1]
        launcher = DemoLauncher(
            ProvideConfig(
                market_url=market.url,
                seed=seed,
                price_per_hour=price,
                name=f"{name}'s {'GPU' if share else 'CPU'}",
                location=location,
                gpus=share,
                machine=f"qubix-demo-{name}-{tmp.name}",
            )
        )
        launchers.append((name, launcher))
        try:
            devices = launcher.start()
        except MarketRefused as exc:
            if "scheduler_unavailable" not in exc.message:
                raise
            launcher.register()  # listed, though no worker can join: the jobs will wait
            say.step(f"provider {name}: the market runs no scheduler, no worker started")
            continue
        for device in devices:
            label = device.gpu.model if device.gpu is not None else "its CPU"
            say.step(f"provider {name} shares {label} at {price} QU/h as {device.worker_id}")


def _market_session(
    market: MarketProcess, url: str, launchers: list[tuple[str, DemoLauncher]], say: Printer
) -> None:
    from .api import submit
    from .client import MarketClient, MarketError

    seed = generate_seed()
    consumer = MarketClient(market.url, seed=seed)
    providers = {
        name: MarketClient(market.url, seed=launcher.config.seed) for name, launcher in launchers
    }
    names = {d.worker_id: name for name, launcher in launchers for d in launcher.devices}
    running = {d.worker_id for _, launcher in launchers for d in launcher.devices if d.process}
    try:
        consumer.sign_in()
        say.step(f"consumer carol signed in as {KeyPair.from_seed(seed).identity[:20]}…")
        deposit = consumer.deposit(DEPOSIT)
        start_balance = consumer.balance().balance
        say.step(f"carol deposits {DEPOSIT} QU on the simulated chain: balance {start_balance} QU")
        if start_balance != DEPOSIT:
            raise DemoFailed(f"the deposit credited {start_balance} QU, not {DEPOSIT}: {deposit}")
        _wait_online(consumer, running, say)

        say("\nmarketplace")
        offers = consumer.providers(availability="all", sort_by="price").items
        say.table(
            ("PROVIDER", "GPU", "VRAM", "PRICE", "PERFORMANCE", "LOCATION", "STATUS"),
            [
                (
                    o.name or o.worker_id,
                    o.gpu_model or "CPU",
                    f"{o.gpu_vram:g} GB" if o.gpu_vram else "—",
                    f"{o.price_per_hour} QU/h",
                    f"{o.performance_tflops:.2f} TFLOPS" if o.performance_tflops else "—",
                    o.location or "—",
                    o.status,
                )
                for o in offers
            ],
        )

        # Listening before the jobs exist: their channels are joined from this point on, so
        # what a job says before its channel is joined is replayed, not lost.
        with consumer.events("wallet") as subscription:
            subscription.wait_subscribed("wallet", timeout=30)
            since = subscription.positions["wallet"]

            say(f"\njobs (each escrows {MAX_PRICE} QU/h × {HOURS * 3600:g} s, the rest comes back)")
            jobs: dict[str, str] = {}
            created = consumer.create_job(
                "benchmark",
                benchmark_payload(size=384, repeats=3),
                compute_needed=HOURS,
                max_price=MAX_PRICE,
            )
            assert created.job is not None
            jobs[created.job.id] = "benchmark"
            function_job = submit(
                estimate_pi, 200_000, max_price=MAX_PRICE, hours=HOURS, client=consumer
            )
            jobs[function_job.id] = "python"
            created = consumer.create_job(
                "cell",
                cell_payload(CELL_SOURCE, ["total"]),
                compute_needed=HOURS,
                max_price=MAX_PRICE,
            )
            assert created.job is not None
            jobs[created.job.id] = "cell"
            for job_id, kind in jobs.items():
                say.step(f"submitted {kind:<9} job {job_id}")

            say("\nprogress (from the job channels, as it arrives)")
            finished = _stream(consumer, subscription, since, jobs, names, say)

        say("\nresults")
        _results(consumer, jobs, finished, names, say)

        say("\nmoney")
        rows = []
        for name, client in providers.items():
            earned = client.earnings().total
            rows.append((name, f"earned {earned} QU", f"wallet {client.balance().balance} QU"))
        say.table(("PROVIDER", "EARNINGS", "BALANCE"), rows)
        _payout(providers, say)
        returned = consumer.transactions(type=["ESCROW_RELEASE", "REFUND"], limit=100).items
        refunds = sum(abs(t.amount) for t in returned)
        balance = consumer.balance().balance
        spent = sum(finished[j].actual_cost or 0 for j in jobs)
        locks = consumer.transactions(type="ESCROW_LOCK", limit=100).items
        escrowed = sum(abs(t.amount) for t in locks)  # debits of the wallet are negative
        say(f"  carol: deposited {DEPOSIT} QU, escrowed {escrowed} QU, jobs cost {spent} QU, "
            f"refunded {refunds} QU, balance {balance} QU")  # fmt: skip
        if balance != DEPOSIT - spent or refunds != escrowed - spent:
            raise DemoFailed(
                f"carol's money does not add up: balance {balance}, escrowed {escrowed}, "
                f"spent {spent}, refunded {refunds}"
            )
    except MarketError as exc:
        raise DemoFailed(f"the market answered {exc}") from exc
    finally:
        consumer.close()
        for client in providers.values():
            client.close()
    _audit(url, say)


def _payout(providers: dict[str, Any], say: Printer) -> None:
    """The best-paid provider withdraws the earnings: a payout the simulated chain confirms."""
    name, client = max(providers.items(), key=lambda item: item[1].balance().balance)
    amount = client.balance().balance
    if amount <= 0:
        return
    client.withdraw(amount)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        payout = client.withdrawals()[0]
        if payout.status in ("confirmed", "failed"):
            break
        time.sleep(0.3)
    if payout.status != "confirmed":
        raise DemoFailed(f"{name}'s payout of {amount} QU is {payout.status}: {payout.last_error}")
    say.step(f"{name} withdraws {amount} QU: payout confirmed in tick {payout.confirmed_tick}, "
             f"tx {(payout.qubic_tx_hash or '')[:16]}…")  # fmt: skip


def _wait_online(consumer: Any, workers: set[str], say: Printer) -> None:
    if not workers:
        return
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        online = {o.worker_id for o in consumer.providers().items if o.is_online}
        if workers <= online:
            say.step(f"{len(workers)} workers joined the scheduler; the providers are online")
            return
        time.sleep(0.3)
    say.step("not every provider came online; the jobs may wait for one")


def _stream(
    consumer: Any,
    subscription: Any,
    since: int,
    jobs: dict[str, str],
    names: dict[str, str],
    say: Printer,
) -> dict[str, Any]:
    """Print the jobs' events until each is finished (polled too, in case a frame is missed).

    ``since``: the events' position before the jobs were created; each job channel replays
    from there."""
    events: queue.Queue[Any] = queue.Queue()
    finished: dict[str, Any] = {}
    shown: dict[str, int] = {}
    assigned: set[str] = set()
    ended: set[str | None] = set()
    subscription.on_event(events.put)
    for job_id in jobs:
        subscription.subscribe(f"job:{job_id}", since_seq=since)
    deadline = time.monotonic() + JOBS_TIMEOUT_S
    next_poll = 0.0
    while len(finished) < len(jobs):
        if time.monotonic() > deadline:
            waiting = {jobs[j]: consumer.job(j).status for j in jobs if j not in finished}
            raise DemoFailed(
                f"jobs not finished after {JOBS_TIMEOUT_S:g} s: "
                + ", ".join(f"{k} {s}" for k, s in waiting.items())
                + " (is the market's scheduler running and dispatching jobs?)"
            )
        with contextlib.suppress(queue.Empty):
            ended.add(_show(events.get(timeout=0.5), jobs, names, shown, assigned, say))
        if time.monotonic() >= next_poll:
            next_poll = time.monotonic() + 2.0
            for job_id in jobs:
                if job_id not in finished:
                    info = consumer.job(job_id)
                    if info.worker_id and job_id not in assigned:
                        assigned.add(job_id)
                        where = names.get(info.worker_id, info.worker_id)
                        say.step(f"{jobs[job_id]:<9} on {where} at {info.price_per_hour} QU/h")
                    if info.terminal:
                        finished[job_id] = info
    # A job done within moments may be seen finished before its frames are shown.
    grace = time.monotonic() + 2.0
    while not ended >= set(jobs) and time.monotonic() < grace:
        with contextlib.suppress(queue.Empty):
            ended.add(_show(events.get(timeout=0.1), jobs, names, shown, assigned, say))
    return finished


def _show(
    event: Any,
    jobs: dict[str, str],
    names: dict[str, str],
    shown: dict[str, int],
    assigned: set[str],
    say: Printer,
) -> str | None:
    """Print one event of the jobs'; returns the job's id when the event ended it."""
    data = event.data if isinstance(event.data, dict) else {}
    job_id = str(data.get("jobId") or data.get("id") or (event.channel or "").removeprefix("job:"))
    kind = jobs.get(job_id)
    if kind is None:
        return None
    if event.type == "JOB_PROGRESS":
        percent = int(data.get("progress") or 0)
        if percent > shown.get(job_id, -1):
            shown[job_id] = percent
            say.step(f"{kind:<9} {_bar(percent)} {percent:3d} %")
    elif event.type == "JOB_REASSIGNED" or (
        event.type == "JOB_ASSIGNED" and job_id not in assigned
    ):
        assigned.add(job_id)
        nested = data.get("job")
        job: dict[str, Any] = nested if isinstance(nested, dict) else data
        worker = job.get("workerId")
        price = job.get("pricePerHour")
        where = names.get(str(worker), str(worker))
        say.step(f"{kind:<9} on {where}" + (f" at {price} QU/h" if price else ""))
    elif event.type in ("JOB_COMPLETED", "JOB_FAILED"):
        say.step(f"{kind:<9} {event.type.removeprefix('JOB_').lower()}")
        return job_id
    return None


def _results(
    consumer: Any,
    jobs: dict[str, str],
    finished: dict[str, Any],
    names: dict[str, str],
    say: Printer,
) -> None:
    from .api import decode_result

    rows = []
    failures = []
    for job_id, kind in jobs.items():
        info = finished[job_id]
        if info.status != "COMPLETED":
            failures.append(f"{kind} job {job_id} {info.status}: {info.error}")
            continue
        value = decode_result(consumer.job_result(job_id).result)
        if kind == "benchmark":
            size = f"{value['size']}², {value['dtype']}"
            shown = f"{value['tflops']:.3f} TFLOPS on {value['device']} ({size})"
        elif kind == "python":
            shown = f"estimate_pi(200000) = {value:.4f}"
        else:
            last = value["stdout"].strip().splitlines()[-1] if value["stdout"].strip() else ""
            shown = f"stdout “{last}” …, total = {value['variables'].get('total')}"
        rows.append(
            (
                kind,
                info.status,
                names.get(str(info.worker_id), str(info.worker_id)),
                f"{info.actual_cost} QU",
                shown,
            )
        )
    if rows:
        say.table(("JOB", "STATUS", "PROVIDER", "COST", "RESULT"), rows)
    if failures:
        raise DemoFailed("; ".join(failures))


def _audit(url: str, say: Printer) -> None:
    """The operator's check, straight from the database: the five invariants over every entry."""
    from .db.engine import make_engine, make_sessionmaker
    from .db.ledger import audit

    async def check() -> Any:
        engine = make_engine(url)
        try:
            async with make_sessionmaker(engine)() as session:
                return await audit(session)
        finally:
            await engine.dispose()

    report = asyncio.run(check())
    say("\nledger audit (recomputed from every entry in the database)")
    say(f"  accounts {report.accounts}, entries {report.entries}")
    say(f"  internal total {report.internal_total} == deposits {report.deposits} "
        f"- withdrawals {report.withdrawals}")  # fmt: skip
    for violation in report.violations:
        say(f"  VIOLATION: {violation}")
    if not report.ok:
        raise DemoFailed(f"the ledger audit found {len(report.violations)} violation(s)")
    say("  audit ok: balances match entries, no QU created or lost, nothing negative,")
    say("  no escrow left on finished jobs, every key applied once")
