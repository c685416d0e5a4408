"""The job execution benchmark still runs: tiny parameters, one JSON line of figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_the_job_roundtrip_benchmark_prints_one_json_line_of_figures() -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "job_roundtrip.py"
    run = subprocess.run(
        [sys.executable, str(script), "--jobs", "2", "--job-seconds", "0.5", "--worker-ttl", "3"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    # What the benchmark said (its traceback, the market's log) when it did not finish.
    assert run.returncode == 0, run.stderr[-6000:]
    [line] = run.stdout.splitlines()
    result = json.loads(line)
    assert result["jobs"] == 2
    for phase in ("roundtrip", "raw_execute", "raw_submit"):
        assert result[phase]["n"] == 2
        assert {"p50_ms", "p99_ms", "max_ms"} <= set(result[phase])
    assert result["started_to_completed"]["n"] == 4  # the market's jobs of both phases
    for phase in ("roundtrip", "raw_execute", "raw_submit", "two_calls", "health"):
        assert result["idle"][phase]["n"] == 2
    assert set(result["idle"]["market_adds_ms"]) == {"p50_ms", "p99_ms"}
    assert result["assign"]["created_to_assigned"]["n"] == 4  # both phases' market jobs
    # Both failovers end with the job done, on the provider that was not stopped.
    for failover in ("sigstop", "sigkill"):
        assert result[failover]["status"] == "COMPLETED"
        assert result[failover]["completed_on_other"] is True
    assert len(result["provide_s"]) == 2
