"""The embedded market for notebooks: ``qubix embedded`` and :func:`embedded_market`.

One command starts, on this machine, everything a notebook user needs to try the market: a real
market (``qubix serve`` on a SQLite file under the embedded home, the embedded scheduler, the
memory settlement backend, so deposits are simulated), two local providers sharing this
machine's GPU or CPU at different prices with wallets of their own, and a wallet for the user
(``you.seed``, mode 0600). It runs until SIGTERM; the home keeps the database and the wallets
across restarts.

``qubix embedded --background`` (what Binder's ``start`` runs) and ``qubix.embedded_market()``
(what the quickstart notebooks call) are the same launch: either finds the market already
running under the home, or starts ``qubix embedded`` detached from the caller and waits until
the providers are online. The home is ``$QUBIX_EMBEDDED_HOME``, else ``~/.qubix/embedded``;
``market.json`` there says where the running market is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, TextIO

HOME_ENV = "QUBIX_EMBEDDED_HOME"
DEFAULT_HOME = Path("~/.qubix/embedded")
STATE_FILE = "market.json"
LOG_FILE = "embedded.log"
USER_SEED_FILE = "you.seed"
#: (name, price per hour, location) of the two local providers; the cheaper is matched first.
PROVIDERS = (("alice", 7_200, "EU-West"), ("bob", 3_600, "US-East"))
#: Generous: a fresh market and two Dask workers on a busy small machine take a while.
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class EmbeddedMarket:
    """A running embedded market: where it answers and the user's wallet for it."""

    url: str
    seed_file: str
    home: str
    pid: int
    providers: tuple[dict[str, Any], ...] = ()

    def connect(self) -> Any:
        """``qubix.connect`` to this market with the user's wallet (signed in, the default)."""
        from .api import connect

        return connect(self.url, seed_file=self.seed_file)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> bool:
        return stop(self.home, timeout=timeout)

    def __str__(self) -> str:
        offers = ", ".join(f"{p['name']} at {p['pricePerHour']} QU/h" for p in self.providers)
        return f"QUBIX embedded market at {self.url} (providers: {offers or 'none'})"


def home_dir(home: str | os.PathLike[str] | None = None) -> Path:
    chosen = home if home is not None else os.environ.get(HOME_ENV) or DEFAULT_HOME
    return Path(chosen).expanduser().resolve()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "qubix/api/health", timeout=2) as answer:
            return bool(answer.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running(home: str | os.PathLike[str] | None = None) -> EmbeddedMarket | None:
    """The market running under ``home``, if its process lives and it answers; else None."""
    path = home_dir(home) / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not _alive(int(state["pid"])) or not _answers(state["url"]):
        return None
    return EmbeddedMarket(
        url=state["url"],
        seed_file=state["seedFile"],
        home=str(home_dir(home)),
        pid=int(state["pid"]),
        providers=tuple(state.get("providers", ())),
    )


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def embedded_market(
    home: str | os.PathLike[str] | None = None,
    *,
    start: bool = True,
    timeout: float = START_TIMEOUT_S,
) -> EmbeddedMarket:
    """The embedded market under ``home``: the running one, else one started in the background.

    It outlives the caller (a notebook's kernel may restart; ``qubix embedded --stop`` ends it).
    RuntimeError if it cannot start in ``timeout`` seconds, with the end of its log; LookupError
    when none runs and ``start`` is False.
    """
    found = running(home)
    if found is not None:
        return found
    if not start:
        raise LookupError(f"no embedded market runs under {home_dir(home)}")
    folder = home_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STATE_FILE).unlink(missing_ok=True)  # a stale one, from a market since ended
    log_path = folder / LOG_FILE
    command = [sys.executable, "-m", "qubix_jupyter.cli", "embedded", "--home", str(folder)]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not ended with the caller's process group
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the embedded market exited ({process.returncode}) at start:\n"
                f"{_log_tail(log_path)}"
            )
        found = running(folder)
        if found is not None:
            return found
        time.sleep(0.3)
    raise RuntimeError(
        f"the embedded market was not ready in {timeout:g} s; its log:\n{_log_tail(log_path)}"
    )


def stop(home: str | os.PathLike[str] | None = None, *, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop the market running under ``home`` (its providers drain first); False if none ran."""
    path = home_dir(home) / STATE_FILE
    try:
        pid = int(json.loads(path.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return False
    if not _alive(pid):
        path.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child: reap it
                break
        time.sleep(0.2)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    return True


def _seed_of(path: Path) -> str:
    from .settlement.wallet import generate_seed, read_seed_file, write_seed_file

    if not path.exists():
        write_seed_file(path, generate_seed())
    return read_seed_file(path)


def serve(home: str | os.PathLike[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the embedded market in this process until SIGTERM or SIGINT (``qubix embedded``)."""
    from .dask_provider.gpu import detect_gpus
    from .dask_provider.launcher import ProvideConfig
    from .db import migrate
    from .demo import DemoLauncher, MarketProcess, _quiet

    say = out if out is not None else sys.stdout
    folder = home_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    state_path = folder / STATE_FILE
    state_path.unlink(missing_ok=True)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    database_url = f"sqlite:///{folder / 'market.db'}"
    migrate.upgrade(database_url)
    user_seed_file = folder / USER_SEED_FILE
    _seed_of(user_seed_file)
    market = MarketProcess(database_url, folder)
    launchers: list[Any] = []
    providers: list[dict[str, Any]] = []
    with _quiet():
        try:
            market.start()
            print(f"market up at {market.url}", file=say, flush=True)
            gpus = [g.index for g in detect_gpus().gpus]
            for number, (name, price, location) in enumerate(PROVIDERS):
                share = gpus[number : number + 1]
                launcher = DemoLauncher(
                    ProvideConfig(
                        market_url=market.url,
                        seed=_seed_of(folder / f"{name}.seed"),
                        price_per_hour=price,
                        name=f"{name}'s {'GPU' if share else 'CPU'}",
                        location=location,
                        gpus=share,
                        # Distinct from the user's own share of this machine.
                        machine=f"qubix-embedded-{name}",
                    )
                )
                launchers.append(launcher)
                for device in launcher.start():
                    providers.append(
                        {"name": name, "workerId": device.worker_id, "pricePerHour": price,
                         "location": location}
                    )  # fmt: skip
                    print(f"provider {name} online soon as {device.worker_id}", file=say,
                          flush=True)  # fmt: skip
            _wait_online(market.url, user_seed_file, {p["workerId"] for p in providers}, stopping)
            state = {
                "url": market.url,
                "pid": os.getpid(),
                "seedFile": str(user_seed_file),
                "databaseUrl": database_url,
                "providers": providers,
            }
            partial = state_path.with_suffix(".tmp")
            partial.write_text(json.dumps(state, indent=2))
            partial.replace(state_path)  # readers never see half a file
            print(f"QUBIX embedded market: {market.url} (your wallet: {user_seed_file})",
                  file=say, flush=True)  # fmt: skip
            while not stopping.wait(1.0):
                if market.process is None or market.process.poll() is not None:
                    print(f"the market stopped:\n{market.log_tail()}", file=say, flush=True)
                    return 1
            return 0
        finally:
            state_path.unlink(missing_ok=True)
            drains = [
                threading.Thread(target=launcher.stop, kwargs={"timeout_s": 10})
                for launcher in launchers
            ]
            for drain in drains:
                drain.start()
            for drain in drains:
                drain.join()
            market.stop()


def _wait_online(url: str, seed_file: Path, workers: set[str], stopping: threading.Event) -> None:
    from .client import MarketClient, MarketError

    deadline = time.monotonic() + START_TIMEOUT_S
    with MarketClient(url, seed_file=str(seed_file), retries=1) as client:
        while time.monotonic() < deadline and not stopping.is_set():
            with contextlib.suppress(MarketError):
                online = {o.worker_id for o in client.providers().items if o.is_online}
                if workers <= online:
                    return
            time.sleep(0.3)
    raise RuntimeError(f"the providers {sorted(workers)} did not come online")
