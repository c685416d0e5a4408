"""Job runners in real child processes: every kind, every limit, every way a job can fail."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from qubix_jupyter.dask_provider import kinds, runners
from qubix_jupyter.dask_provider.errors import (
    InvalidPayload,
    JobCodeFailed,
    MemoryLimitExceeded,
    ResultTooLarge,
    TimeBudgetExceeded,
    UnknownJobKind,
)
from qubix_jupyter.dask_provider.runners import JobLimits, job_kinds, load_kind, run_job

LIMITS = JobLimits(time_budget_s=60)


def _square_plus(x: int, *, plus: int) -> int:
    return x * x + plus


def test_python_job_returns_its_result_pickled() -> None:
    result = run_job("python", kinds.python_payload(_square_plus, 7, plus=1), LIMITS)
    assert pickle.loads(result.data) == 50
    assert result.seconds > 0


def test_python_job_reports_progress_forward_only() -> None:
    def work() -> str:
        import qubix_jupyter as qubix

        for fraction in (0.25, 0.1, 0.5, 1.0):  # 0.1 goes back: not relayed
            qubix.progress(fraction)
        return "done"

    seen: list[float] = []
    result = run_job("python", kinds.python_payload(work), LIMITS, on_progress=seen.append)
    assert pickle.loads(result.data) == "done"
    assert seen == [0.25, 0.5, 1.0]


def test_cell_job_returns_stdout_stderr_output_and_variables() -> None:
    source = (
        "import sys\n"
        "total = sum(range(10))\n"
        "print('hello', total)\n"
        "print('careful', file=sys.stderr)\n"
        "progress(0.5)\n"
        "{'total': total}\n"
    )
    payload = kinds.cell_payload(source, ["total", "nowhere"])
    result = pickle.loads(run_job("cell", payload, LIMITS).data)
    assert result["stdout"] == "hello 45\n"
    assert result["stderr"] == "careful\n"
    assert result["output"] == "{'total': 45}"
    assert result["variables"] == {"total": 45}
    assert result["missing"] == ["nowhere"]


def test_cell_without_a_trailing_expression_has_no_output() -> None:
    result = pickle.loads(run_job("cell", kinds.cell_payload("x = 1"), LIMITS).data)
    assert result["output"] is None
    assert result["stdout"] == ""


def test_cell_that_does_not_parse_is_an_invalid_payload() -> None:
    with pytest.raises(InvalidPayload, match="does not parse"):
        run_job("cell", kinds.cell_payload("def broken(:"), LIMITS)


def test_benchmark_measures_numpy_gemm() -> None:
    payload = kinds.benchmark_payload(size=256, repeats=2, device="cpu")
    seen: list[float] = []
    result = pickle.loads(run_job("benchmark", payload, LIMITS, on_progress=seen.append).data)
    assert result["tflops"] > 0
    assert result["size"] == 256
    assert result["dtype"] == "float32"
    assert result["device"] == "cpu"
    assert seen == [0.5, 1.0]


def test_benchmark_on_gpu_uses_cupy_when_present() -> None:
    pytest.importorskip("cupy")
    if kinds._cupy() is None:
        pytest.skip("no CUDA device on this machine")
    result = pickle.loads(run_job("benchmark", kinds.benchmark_payload(device="gpu"), LIMITS).data)
    assert result["device"].startswith("gpu:")
    assert result["tflops"] > 0


def test_benchmark_refuses_a_bad_payload() -> None:
    with pytest.raises(InvalidPayload, match="size"):
        run_job("benchmark", {"size": 10**9}, LIMITS)


def test_exception_comes_back_as_a_traceback() -> None:
    def fails() -> None:
        raise KeyError("missing-thing")

    with pytest.raises(JobCodeFailed) as caught:
        run_job("python", kinds.python_payload(fails), LIMITS)
    assert caught.value.details["exception"] == "KeyError"
    assert "Traceback (most recent call last)" in caught.value.details["traceback"]
    assert "missing-thing" in caught.value.details["traceback"]


def test_a_job_past_its_time_budget_is_stopped() -> None:
    def forever() -> None:
        import time

        while True:
            time.sleep(0.05)

    with pytest.raises(TimeBudgetExceeded) as caught:
        run_job("python", kinds.python_payload(forever), JobLimits(time_budget_s=1.5))
    assert caught.value.details["timeBudgetSeconds"] == 1.5


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_DATA counts mmap only on Linux")
def test_a_job_over_its_memory_limit_fails_typed() -> None:
    def hungry() -> int:
        return len(bytearray(2 * 2**30))

    limits = JobLimits(time_budget_s=60, memory_limit_bytes=512 * 2**20)
    with pytest.raises(MemoryLimitExceeded) as caught:
        run_job("python", kinds.python_payload(hungry), limits)
    assert caught.value.details["limit"] == 512 * 2**20
    # The same job fits without the limit's pressure when it asks for little.
    small = run_job("python", kinds.python_payload(lambda: len(bytearray(2**20))), limits)
    assert pickle.loads(small.data) == 2**20


def test_an_oversize_result_is_refused() -> None:
    limits = JobLimits(time_budget_s=60, max_result_bytes=10_000)
    with pytest.raises(ResultTooLarge) as caught:
        run_job("python", kinds.python_payload(lambda: b"x" * 20_000), limits)
    assert caught.value.status == 413
    assert caught.value.details["size"] > 10_000
    fits = run_job("python", kinds.python_payload(lambda: b"x" * 100), limits)
    assert pickle.loads(fits.data) == b"x" * 100


def test_a_process_that_dies_is_a_typed_failure_not_a_dead_parent() -> None:
    from qubix_jupyter.dask_provider.errors import JobProcessDied

    def dies() -> None:
        import os

        os._exit(3)

    with pytest.raises(JobProcessDied) as caught:
        run_job("python", kinds.python_payload(dies), LIMITS)
    assert caught.value.details["exitCode"] == 3


def test_kinds_come_from_the_entry_point_group() -> None:
    registered = job_kinds()
    assert {"python", "cell", "benchmark"} <= set(registered)
    assert load_kind("cell") is kinds.run_cell
    with pytest.raises(UnknownJobKind) as caught:
        run_job("no-such-kind", None, LIMITS)
    assert "python" in caught.value.details["known"]


def test_limits_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="time budget"):
        JobLimits(time_budget_s=0)
    with pytest.raises(ValueError, match="memory"):
        JobLimits(time_budget_s=1, memory_limit_bytes=0)


_ORPHAN_PARENT = """
import sys
from qubix_jupyter.dask_provider.kinds import python_payload
from qubix_jupyter.dask_provider.runners import JobLimits, run_job

def forever(path):
    import os, time
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(0.05)

run_job("python", python_payload(forever, sys.argv[1]), JobLimits(time_budget_s=300))
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return not any(line.startswith("State:\tZ") for line in status)
    except FileNotFoundError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_job_does_not_outlive_its_killed_worker(tmp_path) -> None:
    import signal
    import subprocess
    import time

    marker = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN_PARENT, str(marker)])
    try:
        deadline = time.monotonic() + 60
        while not (marker.exists() and marker.read_text()):
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
        child = int(marker.read_text())
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
        deadline = time.monotonic() + 30
        while _alive(child):
            assert time.monotonic() < deadline, "the job outlived its worker"
            time.sleep(0.05)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def _children(pid: int) -> set[int]:
    """The job children of ``pid``: its spawned interpreters, not multiprocessing helpers."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                if b"job_child_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.add(int(child))
    return found


def _wait_for(what: str, check, timeout: float = 60):  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.02)
    return found


def _identity() -> tuple[int, float, bool]:
    import builtins
    import os

    import psutil

    leaked = hasattr(builtins, "qubix_left_behind")
    builtins.qubix_left_behind = True  # type: ignore[attr-defined]
    return os.getpid(), psutil.Process().create_time(), leaked


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_job_takes_a_child_started_ahead_and_no_child_runs_two_jobs() -> None:
    import time

    runners.close_standby()
    before = _children(os.getpid())
    try:
        runners.standby()
        _wait_for("no standby child started", lambda: _children(os.getpid()) - before)
        time.sleep(0.2)  # it is handed over once its start returned, a moment after it appears
        asked = time.time()
        first_pid, first_created, first_leaked = pickle.loads(
            run_job("python", kinds.python_payload(_identity), LIMITS).data
        )
        assert first_created < asked  # started before the job was asked for: the warm child
        assert not first_leaked
        second_pid, _created, second_leaked = pickle.loads(
            run_job("python", kinds.python_payload(_identity), LIMITS).data
        )
        assert second_pid != first_pid
        assert not second_leaked  # a fresh interpreter: nothing of the last job is left
        cold_pid, _created, cold_leaked = pickle.loads(
            run_job("python", kinds.python_payload(_identity), LIMITS, warm=False).data
        )
        assert cold_pid not in (first_pid, second_pid)
        assert not cold_leaked
    finally:
        runners.close_standby()


@dataclasses.dataclass
class _Taken:
    """A fresh standby whose first child a job has just taken (``first``, its pid)."""

    standby: runners.Standby
    first: int
    before: set[int]

    def started(self) -> set[int]:
        """Children started since, the taken one left out."""
        return _children(os.getpid()) - self.before - {self.first}


@pytest.fixture
def taken() -> Iterator[_Taken]:
    import time

    runners.close_standby()
    before = _children(os.getpid())
    handed = None
    try:
        standby = runners.standby()
        [first] = _wait_for("no standby child started", lambda: _children(os.getpid()) - before)
        time.sleep(0.2)  # handed over once its start returned, a moment after it appears
        handed = standby.take()
        assert handed is not None
        assert handed[0].pid == first
        yield _Taken(standby, first, before)
    finally:
        if handed is not None:
            runners._discard(handed)
        runners.close_standby()


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_the_next_child_starts_once_the_job_that_took_one_ends(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """A child's start does not compete with the job that took the last one: the next starts
    after that job ends (or once it has run ``REFILL_DURING_JOB_S``)."""
    import time

    monkeypatch.setattr(runners, "REFILL_DURING_JOB_S", 60.0)
    job: _Taken = request.getfixturevalue("taken")
    time.sleep(runners.REFILL_AFTER_JOB_S * 10)
    assert not job.started()  # none started while the job runs
    job.standby.job_ended()
    _wait_for("no child started after the job ended", job.started)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_job_that_found_no_child_ready_has_the_next_one_started_at_once(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """Jobs back to back: the one that had to start its own child leaves the next one
    starting while it runs, so the job after it finds one."""
    monkeypatch.setattr(runners, "REFILL_DURING_JOB_S", 60.0)
    monkeypatch.setattr(runners, "REFILL_AFTER_JOB_S", 30.0)
    job: _Taken = request.getfixturevalue("taken")
    job.standby.job_ended()
    assert job.standby.take() is None  # the next job came before one was due
    _wait_for("no child started for the job after the one that found none", job.started, 2)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_long_job_has_the_next_child_started_while_it_runs(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    import time

    monkeypatch.setattr(runners, "REFILL_DURING_JOB_S", 0.5)
    job: _Taken = request.getfixturevalue("taken")
    took = time.monotonic()
    _wait_for("no child started while the job ran", job.started)
    assert time.monotonic() - took >= 0.4  # taken a moment before ``took``


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_closing_the_standby_ends_its_waiting_child() -> None:
    runners.close_standby()
    before = _children(os.getpid())
    runners.standby()
    [waiting] = _wait_for("no standby child started", lambda: _children(os.getpid()) - before)
    runners.close_standby()
    _wait_for("the standby child outlived its close", lambda: not _alive(waiting))


_STANDBY_PARENT = """
import sys, time
from qubix_jupyter.dask_provider import runners

runners.standby()
print("ready", flush=True)
time.sleep(300)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_waiting_child_does_not_outlive_its_killed_worker() -> None:
    import signal
    import subprocess

    parent = subprocess.Popen(
        [sys.executable, "-c", _STANDBY_PARENT], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline().strip() == "ready"
        [waiting] = _wait_for("no standby child started", lambda: _children(parent.pid))
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
        _wait_for("the waiting child outlived its worker", lambda: not _alive(waiting), 30)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.stdout.close()
