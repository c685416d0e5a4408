"""Running one job on the provider's machine: in a child process, within its limits.

Consumer code is foreign code (README, trust model), so a job never runs in the worker itself:
:func:`run_job` starts a fresh interpreter (multiprocessing ``spawn``) that lowers its own data
limit, looks up the job's kind among the ``qubix.job_kinds`` entry points, runs it and sends back
the pickled result, progress along the way, or the failure as text. The worker only waits on a
pipe, so a job that crashes, loops forever or eats memory costs the job, never the worker.

The result stays pickled bytes all the way to the consumer: the worker and the market never
unpickle what consumer code produced.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from . import progress as progress_module
from .errors import (
    JobCodeFailed,
    JobExecutionError,
    JobProcessDied,
    MemoryLimitExceeded,
    ResultTooLarge,
    TimeBudgetExceeded,
    UnknownJobKind,
)

ENTRY_POINT_GROUP = "qubix.job_kinds"
DEFAULT_MAX_RESULT_BYTES = 64 * 2**20
#: How long a stopped child gets to exit before it is killed, and how often the parent checks
#: whether the job should stop while it waits for the pipe.
_GRACE_S = 2.0
_POLL_S = 0.2
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_ORPHANED_EXIT = 70

#: A kind: called in the child with the job's payload; returns the result (pickled by the runner).
Kind = Callable[[Any], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class JobLimits:
    #: Wall-clock seconds from the child's start; the job is killed at the deadline.
    time_budget_s: float
    #: The child's data segment limit (RLIMIT_DATA) in bytes; None: no limit of ours.
    memory_limit_bytes: int | None = None
    #: Largest pickled result sent back; a larger one is refused (ResultTooLarge, 413).
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES

    def __post_init__(self) -> None:
        if not self.time_budget_s > 0:
            raise ValueError("a job's time budget must be positive")
        if self.memory_limit_bytes is not None and self.memory_limit_bytes <= 0:
            raise ValueError("a memory limit must be positive (None: no limit)")
        if self.max_result_bytes <= 0:
            raise ValueError("the result size cap must be positive")


@dataclasses.dataclass(frozen=True, slots=True)
class JobResult:
    """What a finished job produced: its result, pickled, and how long it ran."""

    data: bytes
    seconds: float


def job_kinds() -> dict[str, importlib.metadata.EntryPoint]:
    """The registered kinds by name (the built-ins and any installed package's)."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def load_kind(name: str) -> Kind:
    entry = job_kinds().get(name)
    if entry is None:
        raise UnknownJobKind(
            f"no runner for job kind {name!r}", kind=name, known=sorted(job_kinds())
        )
    kind: Kind = entry.load()
    return kind


# ---------------------------------------------------------------------------- the child


def _limit_memory(limit: int | None) -> None:
    if limit is None:
        return
    import resource

    # RLIMIT_DATA (not RLIMIT_AS): it counts what the job allocates (heap and private anonymous
    # mappings) but not the address space that CUDA and BLAS libraries reserve without using.
    _soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))


def _die_with(parent: int, limits: JobLimits) -> None:
    """End this child when its worker dies or its budget is long past, even unattended.

    The worker enforces the budget while it lives; a worker killed outright (SIGKILL, OOM
    killer) cannot, and consumer code must not outlive it on the provider's machine.
    """
    if sys.platform == "linux":
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # no prctl here: the watchdog below still holds
            pass
    deadline = time.monotonic() + limits.time_budget_s + 2 * _GRACE_S

    def watch() -> None:
        while os.getppid() == parent and time.monotonic() < deadline:
            time.sleep(_POLL_S * 5)
        os._exit(_ORPHANED_EXIT)

    threading.Thread(target=watch, name="qubix-job-watchdog", daemon=True).start()


def _child(conn: Connection, kind_name: str, payload: Any, limits: JobLimits, parent: int) -> None:
    """The job's process: every outcome becomes one final message on ``conn``."""
    _die_with(parent, limits)
    progress_module.install(lambda fraction: conn.send(("progress", fraction)))
    try:
        _limit_memory(limits.memory_limit_bytes)
        kind = load_kind(kind_name)
        result = kind(payload)
        import cloudpickle

        data = cloudpickle.dumps(result)
        del result
        if len(data) > limits.max_result_bytes:
            conn.send(("too_large", len(data)))
        else:
            conn.send(("result", data))
    except MemoryError:
        conn.send(("memory", traceback.format_exc()))
    except JobExecutionError as exc:
        conn.send(("typed", exc))
    except BaseException as exc:  # consumer code: whatever it raises is the job's failure
        conn.send(("error", type(exc).__name__, str(exc)[:2000], traceback.format_exc()))
    finally:
        conn.close()


# ---------------------------------------------------------------------------- the parent


def _stop(process: multiprocessing.process.BaseProcess) -> None:
    process.terminate()
    process.join(_GRACE_S)
    if process.is_alive():
        process.kill()
        process.join()


def run_job(
    kind: str,
    payload: Any,
    limits: JobLimits,
    *,
    on_progress: Callable[[float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> JobResult:
    """Run ``payload`` as a job of ``kind`` in a child process; blocks until it ends.

    ``on_progress`` gets each reported fraction that moves forward (never one that goes back).
    ``should_stop`` is asked while waiting; True stops the child (a cancelled job) and raises
    JobProcessDied with ``details["stopped"] = True``. Failures raise the typed errors of
    :mod:`.errors`; the consumer's exception comes back as JobCodeFailed with its traceback.
    """
    if kind not in job_kinds():
        raise UnknownJobKind(
            f"no runner for job kind {kind!r}", kind=kind, known=sorted(job_kinds())
        )
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_child,
        args=(sender, kind, payload, limits, os.getpid()),
        name=f"qubix-job-{kind}",
        daemon=True,
    )
    started = time.monotonic()
    deadline = started + limits.time_budget_s
    process.start()
    sender.close()  # the child holds the only writing end: EOF means it is gone
    last = -1.0
    final: tuple[Any, ...] | None = None
    try:
        while final is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _stop(process)
                raise TimeBudgetExceeded(
                    f"the job ran past its time budget of {limits.time_budget_s:g} s and was "
                    "stopped",
                    timeBudgetSeconds=limits.time_budget_s,
                )
            if should_stop is not None and should_stop():
                _stop(process)
                raise JobProcessDied("the job was stopped", stopped=True)
            if not receiver.poll(min(remaining, _POLL_S)):
                continue
            try:
                message = receiver.recv()
            except EOFError:
                break
            if message[0] == "progress":
                if message[1] > last:
                    last = message[1]
                    if on_progress is not None:
                        on_progress(last)
            else:
                final = message
    finally:
        receiver.close()
        if process.is_alive():
            process.join(_GRACE_S)
            if process.is_alive():
                _stop(process)
    seconds = time.monotonic() - started
    if final is None:
        process.join()
        raise JobProcessDied(
            f"the job's process ended without an answer (exit status {process.exitcode})",
            exitCode=process.exitcode,
        )
    match final:
        case ("result", bytes() as data):
            return JobResult(data=data, seconds=seconds)
        case ("too_large", int() as size):
            raise ResultTooLarge(
                f"the job's result is {size} bytes pickled, over the cap of "
                f"{limits.max_result_bytes} bytes; return less (or write it elsewhere)",
                size=size,
                limit=limits.max_result_bytes,
            )
        case ("memory", str() as trace):
            raise MemoryLimitExceeded(
                f"the job ran out of memory under its limit of {limits.memory_limit_bytes} bytes",
                limit=limits.memory_limit_bytes,
                traceback=trace,
            )
        case ("typed", JobExecutionError() as error):
            raise error
        case ("error", str() as name, str() as text, str() as trace):
            raise JobCodeFailed(f"the job raised {name}: {text}", exception=name, traceback=trace)
    raise JobProcessDied("the job's process sent an answer that is not understood")
