"""Running one job on the provider's machine: in a child process, within its limits.

Consumer code is foreign code (README, trust model), so a job never runs in the worker itself:
:func:`run_job` hands it to a fresh interpreter (``python -c``, importing only this module) that
lowers its own data limit, looks up the job's kind among the ``qubix.job_kinds`` entry points,
runs it and sends back the pickled result, progress along the way, or the failure as text. The
worker only waits on a pipe, so a job that crashes, loops forever or eats memory costs the job,
never the worker.

An interpreter takes a tenth of a second or more to start, longer than many jobs run. So a
worker keeps one child started ahead (:class:`Standby`): it has booted, imported the runner and
the installed kinds, and waits for a job. A job takes it, and the next one is started at once in
the background. A child still runs exactly one job and exits; none is ever reused, so no job sees
what another left behind.

The result stays pickled bytes all the way to the consumer: the worker and the market never
unpickle what consumer code produced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import os
import signal
import socket
import subprocess
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


def load_kind(
    name: str, registered: dict[str, importlib.metadata.EntryPoint] | None = None
) -> Kind:
    """The kind's function; ``registered``: the kinds as read earlier (read again on a miss)."""
    entry = (registered or {}).get(name)
    if entry is None:
        registered = job_kinds()
        entry = registered.get(name)
    if entry is None:
        raise UnknownJobKind(
            f"no runner for job kind {name!r}", kind=name, known=sorted(registered)
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


class _Deadline:
    """When the child must be gone at the latest: none while it waits, set when a job arrives."""

    def __init__(self) -> None:
        self.at: float | None = None


def _die_with(parent: int) -> _Deadline:
    """End this child when its worker dies or its job's budget is long past, even unattended.

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
    deadline = _Deadline()

    def watch() -> None:
        while os.getppid() == parent and (deadline.at is None or time.monotonic() < deadline.at):
            time.sleep(_POLL_S * 5)
        os._exit(_ORPHANED_EXIT)

    threading.Thread(target=watch, name="qubix-job-watchdog", daemon=True).start()
    return deadline


def job_child_main() -> None:
    """The job's process (``python -c``): its pipe's descriptor and its worker's pid in argv."""
    fd, parent = int(sys.argv[1]), int(sys.argv[2])
    _child(Connection(fd), parent)


def _child(conn: Connection, parent: int) -> None:
    """Boot, wait for one job, and answer it with one final message."""
    deadline = _die_with(parent)
    import cloudpickle  # what every result is sent back with; loaded before the job arrives

    registered = job_kinds()
    for entry in registered.values():  # installed code, not the job's: loaded while waiting
        with contextlib.suppress(Exception):  # a kind that cannot load says so when asked for
            entry.load()
    try:
        kind_name, payload, limits, path = conn.recv()
    except (EOFError, OSError):  # the worker closed this standby without a job
        return
    sys.path[:] = path  # where the worker finds modules, the job's pickles find them too
    deadline.at = time.monotonic() + limits.time_budget_s + 2 * _GRACE_S
    progress_module.install(lambda fraction: conn.send(("progress", fraction)))
    try:
        _limit_memory(limits.memory_limit_bytes)
        kind = load_kind(kind_name, registered)
        result = kind(payload)
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
        # What is left is the interpreter's teardown: it yields the CPU to the answer's way to
        # the consumer (the worker, the market), which it would otherwise compete with.
        with contextlib.suppress(OSError):
            os.nice(19)


# ---------------------------------------------------------------------------- the parent


_Process = subprocess.Popen[bytes]
_Started = tuple[_Process, Connection]
#: The child imports this module and nothing of the worker's (multiprocessing's ``spawn`` would
#: import the worker's ``__main__``, all of Dask, before the job could start).
_CHILD_CODE = "from qubix_jupyter.dask_provider.runners import job_child_main; job_child_main()"


def _spawn() -> _Started:
    """A fresh interpreter running :func:`_child`, and our end of its pipe."""
    ours, theirs = socket.socketpair()
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", _CHILD_CODE, str(theirs.fileno()), str(os.getpid())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()  # the child holds the only other end: EOF means it is gone
    return process, Connection(ours.detach())


def _wait(process: _Process, timeout: float | None) -> bool:
    """Whether it has exited within ``timeout`` seconds."""
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def _stop(process: _Process) -> None:
    process.terminate()
    if not _wait(process, _GRACE_S):
        process.kill()
        process.wait()


def _reap(process: _Process) -> None:
    """Give it the grace period to exit, then stop it."""
    if not _wait(process, _GRACE_S):
        _stop(process)


def _discard(started: _Started) -> None:
    """Close a child that took no job: it sees the pipe close and exits."""
    process, conn = started
    conn.close()
    _reap(process)


#: The next standby child is started this long after the job that took the last one ended: its
#: result is on its way to the consumer then, and the child's start (an interpreter and its
#: imports, tens of ms of CPU) would compete with it for the machine's cores.
REFILL_AFTER_JOB_S = 0.05
#: …or once that job has run this long: a long job's idle CPU starts the next child.
REFILL_DURING_JOB_S = 1.0


class Standby:
    """One child started ahead of the next job.

    Children are started from this object's own thread, which lives as long as it does: Linux
    sends the parent-death signal when the *thread* that started a child ends, and a task's
    thread may end while the child it started waits. :meth:`take` hands the waiting child over
    (None when none is ready yet: the caller starts one itself); the next one is started
    :data:`REFILL_AFTER_JOB_S` after that job ends (:meth:`job_ended`), or
    :data:`REFILL_DURING_JOB_S` after it was taken, whichever comes first; at once when none
    was ready (jobs back to back).
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._ready: _Started | None = None
        self._closed = False
        #: When the next child is to be started (None: one is being started, or ready).
        self._due: float | None = time.monotonic()
        self._thread = threading.Thread(target=self._fill, name="qubix-job-standby", daemon=True)
        self._thread.start()

    def _next_due(self) -> bool:
        """Wait (holding the lock) until a child is due or the standby closed; True if due."""
        while not self._closed:
            if self._ready is None and self._due is not None:
                left = self._due - time.monotonic()
                if left <= 0:
                    self._due = None
                    return True
                self._changed.wait(left)
            else:
                self._changed.wait()
        return False

    def _fill(self) -> None:
        while True:
            with self._changed:
                if not self._next_due():
                    return
            started = _spawn()
            with self._changed:
                if self._closed or self._ready is not None:
                    spare = started
                else:
                    self._ready, self._due, spare = started, None, None
            if spare is not None:
                _discard(spare)

    def take(self) -> _Started | None:
        with self._changed:
            ready, self._ready = self._ready, None
            # A job runs from now: the next child waits for its end (or a long run). A job
            # that found none ready came right after another (a burst): the next one starts
            # at once, so that the job after it finds one.
            if self._due is not None or ready is not None:
                self._due = time.monotonic() + (0 if ready is None else REFILL_DURING_JOB_S)
            self._changed.notify()
        if ready is not None and ready[0].poll() is not None:  # it died waiting (the OOM killer)
            _discard(ready)
            return None
        return ready

    def job_ended(self) -> None:
        """The job of the last :meth:`take` has ended: the next child starts shortly."""
        with self._changed:
            due = time.monotonic() + REFILL_AFTER_JOB_S
            if self._ready is None and (self._due is None or due < self._due):
                self._due = due
                self._changed.notify()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            ready, self._ready = self._ready, None
            self._changed.notify()
        if ready is not None:
            _discard(ready)
        self._thread.join(_GRACE_S * 5)


_standby: Standby | None = None
_standby_lock = threading.Lock()


def standby() -> Standby:
    """This process's :class:`Standby`, started on first use (a worker starts it at setup)."""
    global _standby
    with _standby_lock:
        if _standby is None:
            _standby = Standby()
        return _standby


def close_standby() -> None:
    global _standby
    with _standby_lock:
        found, _standby = _standby, None
    if found is not None:
        found.close()


def run_job(
    kind: str,
    payload: Any,
    limits: JobLimits,
    *,
    on_progress: Callable[[float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    warm: bool = True,
) -> JobResult:
    """Run ``payload`` as a job of ``kind`` in a child process; blocks until it ends.

    ``on_progress`` gets each reported fraction that moves forward (never one that goes back).
    ``should_stop`` is asked while waiting; True stops the child (a cancelled job) and raises
    JobProcessDied with ``details["stopped"] = True``. Failures raise the typed errors of
    :mod:`.errors`; the consumer's exception comes back as JobCodeFailed with its traceback,
    a kind nobody registered as UnknownJobKind. ``warm``: take this process's standby child when
    one is ready (and leave the next one started); False starts a child for this job only.
    """
    started = time.monotonic()
    deadline = started + limits.time_budget_s
    process, receiver = (standby().take() if warm else None) or _spawn()
    try:
        receiver.send((kind, payload, limits, list(sys.path)))
    except OSError as exc:  # it died before it could take the job
        _discard((process, receiver))
        raise JobProcessDied(
            f"the job's process ended before it took the job (exit status {process.returncode})",
            exitCode=process.returncode,
        ) from exc
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
            except (EOFError, OSError):  # it is gone (a reset pipe included)
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
        if warm and _standby is not None:
            _standby.job_ended()
        if final is None:
            _reap(process)
        else:  # it has answered: let it exit (a few ms of teardown) without waiting here
            threading.Thread(target=_reap, args=(process,), name="qubix-job-reap").start()
    seconds = time.monotonic() - started
    if final is None:
        process.wait()
        raise JobProcessDied(
            f"the job's process ended without an answer (exit status {process.returncode})",
            exitCode=process.returncode,
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
