"""The market-server benchmarks still run: each, with tiny parameters, prints one JSON line of
figures that say what they measured. No timing is asserted here; the figures are in
docs/benchmarks.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    [line] = out.splitlines()
    return json.loads(line)  # type: ignore[no-any-return]


@pytest.mark.postgres
def test_the_search_benchmark_measures_capped_and_exact_totals() -> None:
    result = _run("marketplace_search.py", "--providers", "300", "--queries", "20")
    assert (result["providers"], result["queries"], result["count_cap"]) == (300, 20, 10_000)
    for figures in ("search_ms", "search_exact_total_ms", "pk_lookup_ms"):
        assert {"p50", "p95", "p99", "max"} <= set(result[figures])
    assert isinstance(result["meets_target"], bool)


@pytest.mark.postgres
def test_the_websocket_clients_benchmark_delivers_every_event_to_every_client() -> None:
    result = _run(
        "ws_clients.py",
        *("--clients", "12", "--processes", "2", "--events", "2", "--interval", "0.1"),
    )
    for side in ("market", "baseline"):
        figures = result[side]
        assert (figures["connected"], figures["missed"], figures["error_frames"]) == (12, 0, 0)
        assert figures["deliveries"] == 12 * 2
        assert {"p50", "p99", "max"} <= set(figures["receive_latency_ms"])
        assert figures["rss_after_mib"] > 0
    assert set(result["meets_target"]) == {"latency", "memory"}


@pytest.mark.postgres
def test_the_reconnect_benchmark_resumes_every_client_without_loss() -> None:
    result = _run("ws_reconnect.py", "--clients", "12", "--processes", "2", "--events", "2")
    assert result["connected_before_restart"] == 12
    assert result["resubscribed"] == 12
    assert (result["missed_events"], result["duplicate_events"], result["resyncs"]) == (0, 0, 0)
    assert result["events"] == 6
    assert result["baseline_server_restart_s"] > 0


@pytest.mark.postgres
def test_the_wakeup_benchmark_times_each_round_trip_after_its_pause_and_warm() -> None:
    result = _run("idle_wakeup.py", "--rounds", "3", "--gaps", "0", "0.01")
    assert result["rounds"] == 3
    for kind in ("tcp_ping_pong", "postgres_insert"):
        assert set(result[kind]) == {"0.0", "0.01"}
        for figures in result[kind].values():
            for side in ("after_gap_ms", "warm_ms"):
                assert 0 < figures[side]["p50"] <= figures[side]["max"]
