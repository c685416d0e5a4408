"""``qubix demo``: the whole market end to end, as a person runs it (a subprocess).

The market (``qubix serve``), two providers' Dask workers and the consumer are real processes on
a fresh database; the demo exits 0 only when every job completed, the money adds up and the
ledger audit holds, so the printed lines checked here are the demo's own checks made visible.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "QUBIX_DATABASE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "qubix_jupyter.cli", "demo", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )


def assert_whole_market_ran(done: subprocess.CompletedProcess[str]) -> None:
    out = done.stdout
    assert done.returncode == 0, f"demo failed:\n{out}\n{done.stderr}"
    # The marketplace table lists both providers, cheaper first, online.
    table = out.split("\nmarketplace\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert table[0].split() == ["PROVIDER", "GPU", "VRAM", "PRICE", "PERFORMANCE", "LOCATION",
                                "STATUS"]  # fmt: skip
    assert [row.split()[0] for row in table[1:]] == ["bob's", "alice's"]
    assert all(row.rstrip().endswith("online") for row in table[1:])
    # Progress arrived from the job channels before the results.
    progress = out.split("\nprogress", 1)[1].split("\nresults\n", 1)[0]
    assert re.search(r"python +\S+ +100 %", progress)
    assert re.search(r"cell +\S+ +100 %", progress)
    # Three results, each completed with its own output.
    results = out.split("\nresults\n", 1)[1].split("\n\n", 1)[0]
    assert re.search(r"benchmark +COMPLETED .* TFLOPS on (cpu|gpu:)", results)
    pi = re.search(r"python +COMPLETED .* estimate_pi\(200000\) = (\d\.\d+)", results)
    assert pi is not None
    assert abs(float(pi.group(1)) - 3.1416) < 0.05
    assert re.search(r"cell +COMPLETED .*step 5: total 55.*total = 55", results)
    # Both providers earned; the consumer paid exactly what the jobs cost; a payout confirmed.
    earned = [int(n) for n in re.findall(r"^  (?:alice|bob) +earned (\d+) QU", out, re.M)]
    assert len(earned) == 2
    assert all(n > 0 for n in earned)
    money = re.search(
        r"deposited (\d+) QU, escrowed (\d+) QU, jobs cost (\d+) QU, refunded (\d+) QU, "
        r"balance (\d+) QU",
        out,
    )
    assert money is not None
    deposited, escrowed, cost, refunded, balance = map(int, money.groups())
    assert cost > 0
    assert balance == deposited - cost
    assert refunded == escrowed - cost
    assert re.search(r"withdraws \d+ QU: payout confirmed", out)
    assert "audit ok" in out
    assert "VIOLATION" not in out
    assert re.search(r"demo finished in \d+\.\d s", out)
    # No log noise or warnings on the terminal.
    assert "WARNING" not in done.stdout + done.stderr
    assert " - INFO - " not in done.stdout + done.stderr


def test_demo_runs_the_whole_market_on_sqlite():
    assert_whole_market_ran(run_demo())


def test_demo_runs_the_whole_market_on_postgresql():
    assert_whole_market_ran(run_demo("--postgres"))


def test_demo_says_which_step_failed():
    # A database the market cannot open: the demo stops at once with the reason, exit 1.
    done = run_demo("--database-url", "sqlite:////nonexistent-dir/qubix.db")
    assert done.returncode == 1
    assert "demo FAILED" in done.stdout
    assert "cannot prepare the database sqlite:////nonexistent-dir/qubix.db" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
