"""Job execution through the market against raw Dask, on a throwaway PostgreSQL.

Starts ``qubix serve`` (jobs executed on the embedded scheduler) on a fresh PostgreSQL cluster,
two CPU providers through :class:`ProviderLauncher` (``qubix provide``), and measures

* ``roundtrip``: a no-op ``python`` job, submit → result through the market API in one exchange
  (``POST jobs/create?wait=``, answered when the job ends, as ``qubix.run`` does; in the idle
  phase also ``two_calls``: the create, then ``GET jobs/{id}/result?wait=``, and ``health``:
  ``GET health``, the HTTP round trip to the market with no database in it), against
  ``raw_execute``: the
  same no-op through the same runner task (``dispatch.execute``: the job's child process)
  submitted with ``client.submit`` to a plain scheduler and a worker started the way the
  launcher starts one, and ``raw_submit``: a bare
  ``client.submit`` of a no-op function (no child process);
* ``assign``: from the job's creation to its assignment (``assignedAt``) and to its start on the
  worker (``startedAt``), both on the market's clock, with the provider idle;
* ``sigstop``: the running provider SIGSTOPped (nanny, worker and the job's child) → the job
  completed on the other provider (target ≤ 20 s at the worker TTL given);
* ``sigkill``: the running provider SIGKILLed → the job completed elsewhere (target ≤ job + 2 s);
* ``provide``: :meth:`ProviderLauncher.start` → the provider listed online (target ≤ 5 s).

Prints one JSON line.

    python benchmarks/job_roundtrip.py [--jobs 50] [--job-seconds 2] [--worker-ttl 5] [--gap 0.3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from distributed import Client

from qubix_jupyter.api import decode_result, encode_python_job
from qubix_jupyter.client import MarketClient
from qubix_jupyter.dask_provider.dispatch import execute
from qubix_jupyter.dask_provider.gpu import HardwareReport
from qubix_jupyter.dask_provider.launcher import ProvideConfig, ProviderLauncher
from qubix_jupyter.dask_provider.runners import JobLimits
from qubix_jupyter.db import migrate
from qubix_jupyter.db.pg_cluster import PgCluster
from qubix_jupyter.market import payloads

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contextlib

from market_process import MarketServer, free_port

SEED_CONSUMER = "a" * 55
SEED_PROVIDERS = ("b" * 55, "c" * 55)
PRICE = 3600


def noop() -> None:
    return None


def sleepy(seconds: float) -> str:
    import time

    time.sleep(seconds)
    return "done"


def no_gpus(*_: Any, **__: Any) -> HardwareReport:
    return HardwareReport(source="none", gpus=())


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(p99 * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


def adds(figures: dict[str, Any]) -> dict[str, float]:
    """What the market's round trip took over the raw runner task, at p50 and p99."""
    return {
        q: round(figures["roundtrip"][q] - figures["raw_execute"][q], 2)
        for q in ("p50_ms", "p99_ms")
    }


def wait_for(what: str, check: Any, timeout: float = 120, interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(interval)
    raise RuntimeError(f"{what}: not within {timeout} s")


def provider_pids(launcher: ProviderLauncher) -> list[int]:
    """The provider's whole process tree: its nanny, the worker under it, the job's child."""
    [device] = launcher.devices
    assert device.process is not None
    found, queue = [], [device.process.pid]
    while queue:
        pid = queue.pop()
        found.append(pid)
        # Children are listed per thread that started them (a worker starts jobs from its own).
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                queue += [int(c) for c in (task / "children").read_text().split()]
    return found


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


class RawDask:
    """A plain scheduler and one worker (started as the launcher starts one), and a client.

    The market's scheduler admits no client but the market's own (its guard), so the baseline
    cannot share its scheduler; it runs on the same machine, its calls interleaved with the
    market's round trips so that both see the machine as it is at that moment.
    """

    def __init__(self, tmp: Path) -> None:
        port = free_port()
        env = {
            **os.environ,
            "DASK_DISTRIBUTED__WORKER__DAEMON": "False",
            "PYTHONWARNINGS": "ignore",
        }
        self._log = (tmp / "raw.log").open("ab")
        self._processes = [
            subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                 "--port", str(port), "--no-dashboard"],
                env=env, stdout=self._log, stderr=subprocess.STDOUT,
            ),
            subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", f"tcp://127.0.0.1:{port}",
                 "--nthreads", "1", "--no-dashboard"],
                env=env, stdout=self._log, stderr=subprocess.STDOUT,
            ),
        ]  # fmt: skip
        self.client = Client(f"tcp://127.0.0.1:{port}", timeout=60)
        self.client.wait_for_workers(1, timeout=60)
        self._limits = JobLimits(time_budget_s=60.0)
        self._count = 0

    def execute(self, payload: Any) -> float:
        """Seconds for ``client.submit`` of the runner task (its child process) → its result."""
        self._count += 1
        start = time.monotonic()
        self.client.submit(
            execute, f"raw-{self._count}", "python", payload, self._limits, pure=False
        ).result()
        return time.monotonic() - start

    def submit(self) -> float:
        """Seconds for ``client.submit`` of a bare no-op → its result."""
        start = time.monotonic()
        self.client.submit(noop, pure=False).result()
        return time.monotonic() - start

    def close(self) -> None:
        if self._log.closed:
            return
        self.client.close()
        for process in reversed(self._processes):
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._log.close()


class Bench:
    def __init__(self, server: MarketServer, ttl: float) -> None:
        self.server = server
        self.url = f"http://127.0.0.1:{server.port}/"
        self.consumer = MarketClient(self.url, seed=SEED_CONSUMER, retries=1)
        self.consumer.sign_in()
        self.consumer.deposit(10_000_000)
        self.launchers: list[ProviderLauncher] = []

    def provide(self, index: int) -> tuple[ProviderLauncher, float]:
        launcher = ProviderLauncher(
            ProvideConfig(
                market_url=self.url,
                seed=SEED_PROVIDERS[index],
                price_per_hour=PRICE + index,
                heartbeat_interval_s=1.0,
                machine=f"bench-{index}",
            ),
            detect=no_gpus,
        )
        start = time.monotonic()
        launcher.start()
        [device] = launcher.devices
        wait_for(
            "provider online",
            lambda: self.consumer.provider(device.worker_id).status == "online",
            interval=0.01,
        )
        return launcher, time.monotonic() - start

    def job(self, payload: Any, seconds: float = 0.01) -> str:
        created = self.consumer.create_job(
            "python", payload, compute_needed=seconds / 3600 + 0.01, max_price=PRICE * 2
        )
        assert created.job is not None
        return created.job.id

    def until(self, job_id: str, *statuses: str, timeout: float = 120) -> Any:
        return wait_for(
            f"job {job_id} {statuses}",
            lambda: (j := self.consumer.job(job_id)).status in statuses and j,
            timeout=timeout,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50, help="round trips of each kind")
    parser.add_argument("--job-seconds", type=float, default=2.0, help="the failover job's run")
    parser.add_argument("--worker-ttl", type=float, default=5.0, help="scheduler worker TTL")
    parser.add_argument(
        "--gap", type=float, default=0.3, help="seconds of quiet before each timed call"
    )
    args = parser.parse_args()

    scheduler_port = free_port()
    config = {
        "execute_jobs": True,
        "scheduler_listen": f"tcp://127.0.0.1:{scheduler_port}",
        "worker_ttl_seconds": args.worker_ttl,
        "heartbeat_interval": 1.0,
        "rate_limit_per_minute": 0,
    }
    figures: dict[str, Any] = {"jobs": args.jobs, "cpus": os.cpu_count()}
    with PgCluster() as cluster, tempfile.TemporaryDirectory() as tmp:
        url = cluster.create_database("jobs")
        migrate.upgrade(url)
        server = MarketServer(url, Path(tmp), config)
        server.start()
        bench = Bench(server, args.worker_ttl)
        try:
            cheap, provide_a = bench.provide(0)
            other, provide_b = bench.provide(1)
            figures["provide_s"] = [round(provide_a, 3), round(provide_b, 3)]
            cheap_id = cheap.devices[0].worker_id

            # ---- the market's round trip and its assignment times, against the same no-op
            # straight on Dask (the runner's child process, and a bare submit); twice:
            # back to back (each side's jobs in a row), and idle (interleaved, a quiet gap
            # before each call, so each finds its worker idle and its next child booted)
            payload = encode_python_job(noop, (), {})
            raw_payload = payloads.python_call_bytes(payload)
            raw = RawDask(Path(tmp))
            bench.until(bench.job(payload), "COMPLETED")  # warm-up, of both
            raw.execute(raw_payload)
            raw.submit()
            times = {"assigned": [], "started": [], "ran": [], "api": []}

            def market_roundtrip() -> float:
                """One exchange: the create's answer held until the job ends (``qubix.run``)."""
                start = time.monotonic()
                created = bench.consumer.create_job(
                    "python", payload, compute_needed=0.01, max_price=PRICE * 2, wait=60
                )
                seconds = time.monotonic() - start
                assert created.job is not None
                assert created.job.status == "COMPLETED", created
                assert decode_result(created.job.result) is None
                return timed(created.job.id, seconds)

            def two_calls() -> float:
                """The create, then ``GET jobs/{id}/result?wait=`` (``submit`` then ``result``)."""
                start = time.monotonic()
                job_id = bench.job(payload)
                answer = bench.consumer.job_result(job_id, wait=60)
                seconds = time.monotonic() - start
                assert answer.status == "COMPLETED", answer
                return seconds

            def timed(job_id: str, seconds: float) -> float:
                job = bench.consumer.job(job_id)  # its times, after the clock stopped
                times["assigned"].append((job.assigned_at - job.created_at).total_seconds())
                times["started"].append((job.started_at - job.created_at).total_seconds())
                times["ran"].append((job.completed_at - job.started_at).total_seconds())
                times["api"].append(seconds - (job.completed_at - job.created_at).total_seconds())
                return seconds

            roundtrip = [market_roundtrip() for _ in range(args.jobs)]
            raw_execute = [raw.execute(raw_payload) for _ in range(args.jobs)]
            raw_submit = [raw.submit() for _ in range(args.jobs)]

            def health() -> float:
                """``GET health``: the HTTP round trip to the market alone (no database)."""
                start = time.monotonic()
                assert bench.consumer.health().status == "ok"
                return time.monotonic() - start

            idle: dict[str, list[float]] = {
                "roundtrip": [], "raw_execute": [], "raw_submit": [], "two_calls": [], "health": []
            }  # fmt: skip
            for _ in range(args.jobs):
                for name, call in (
                    ("raw_execute", lambda: raw.execute(raw_payload)),
                    ("raw_submit", raw.submit),
                    ("roundtrip", market_roundtrip),
                    ("two_calls", two_calls),
                    ("health", health),
                ):
                    time.sleep(args.gap)
                    idle[name].append(call())
            raw.close()  # before the failovers: those time the market alone

            figures["roundtrip"] = percentiles(roundtrip)
            figures["raw_execute"] = percentiles(raw_execute)
            figures["raw_submit"] = percentiles(raw_submit)
            figures["market_adds_ms"] = adds(figures)
            figures["idle"] = {name: percentiles(samples) for name, samples in idle.items()}
            figures["idle"]["gap_s"] = args.gap
            figures["idle"]["market_adds_ms"] = adds(figures["idle"])
            # Where the market's round trips (both phases) go, on its own clock: started →
            # completed is the run on the worker (the child process and the answer settled),
            # created → started the dispatch, the rest the API's (the two HTTP calls).
            figures["started_to_completed"] = percentiles(times["ran"])
            figures["api"] = percentiles(times["api"])
            figures["assign"] = {
                "created_to_assigned": percentiles(times["assigned"]),
                "created_to_started": percentiles(times["started"]),
            }

            # ---- failover: SIGSTOP, then SIGKILL, of the worker running the job
            slow = encode_python_job(sleepy, (args.job_seconds,), {})
            for sig, name in ((signal.SIGSTOP, "sigstop"), (signal.SIGKILL, "sigkill")):
                job_id = bench.job(slow, args.job_seconds)
                bench.until(job_id, "RUNNING")
                assert bench.consumer.job(job_id).worker_id == cheap_id
                pids = provider_pids(cheap)
                signal_all(pids, sig)
                start = time.monotonic()
                job = bench.until(job_id, "COMPLETED", "FAILED", timeout=180)
                figures[name] = {
                    "seconds": round(time.monotonic() - start, 3),
                    "status": job.status,
                    "completed_on_other": job.worker_id != cheap_id,
                }
                if sig == signal.SIGSTOP:
                    signal_all(pids, signal.SIGCONT)
                cheap.stop(timeout_s=10)
                signal_all(pids, signal.SIGKILL)  # what the drain left
                cheap, _ = bench.provide(0)
            figures["targets"] = {
                "market_adds_p50_ms": 5,
                "market_adds_p99_ms": 15,
                "assign_p99_ms": 1000,
                "sigstop_s": 20,
                "sigkill_s": args.job_seconds + 2,
                "provide_s": 5,
            }
        finally:
            if locals().get("raw") is not None:
                raw.close()
            for launcher in (locals().get("cheap"), locals().get("other")):
                if launcher is not None:
                    launcher.stop(timeout_s=10)
            bench.consumer.close()
            server.stop()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
