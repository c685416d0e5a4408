"""The heartbeat ingest benchmark still runs: tiny parameters, one JSON line of figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_the_heartbeat_benchmark_prints_one_json_line_of_figures() -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "heartbeat_ingest.py"
    out = subprocess.run(
        [
            sys.executable,
            str(script),
            "--seconds",
            "1",
            "--processes",
            "1",
            "--providers",
            "3",
            "--rate",
            "20",
            "--warmup",
            "0.5",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    [line] = out.splitlines()
    result = json.loads(line)
    assert result["providers"] == 3
    for phase in ("warmup", "heartbeat", "baseline_health"):
        assert result[phase]["answered"] > 0
        assert {"per_second", "p50_ms", "p99_ms", "errors"} <= set(result[phase])
    assert result["heartbeat"]["errors"] == 0
    # every registered provider's heartbeats reached the database
    assert result["staleness_at_end"]["providers"] == 3
    assert result["staleness_at_end"]["never_or_offline"] == 0
