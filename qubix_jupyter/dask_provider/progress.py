"""``qubix.progress(fraction)``: how a running job tells the market how far it has come.

Inside a job's child process the runner installs a reporter that writes to the pipe back to
the worker; anywhere else (a notebook trying its code locally) ``progress`` does nothing, so the
same code runs in both places.
"""

from __future__ import annotations

import math
from collections.abc import Callable

_reporter: Callable[[float], None] | None = None


def install(reporter: Callable[[float], None] | None) -> None:
    global _reporter
    _reporter = reporter


def progress(fraction: float) -> None:
    """Report that the running job is ``fraction`` (0.0–1.0) done; values outside are clamped."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise TypeError("progress takes a number between 0 and 1")
    if not math.isfinite(fraction):
        raise ValueError("progress takes a finite number between 0 and 1")
    if _reporter is not None:
        _reporter(min(1.0, max(0.0, float(fraction))))
