"""Job rules without I/O: the time budget, what escrow a job holds, progress, time charged.

* ``computeNeeded`` arrives in hours as a JSON number; the market keeps whole seconds. The hours
  are read as the decimal the client wrote (``0.1`` is 360 s, not 360.00000000000006 s rounded
  up to 361), to the microsecond, and rounded **up** to a whole second, within 1 s .. 7 days.
* While a job waits for a provider its escrow is the most it may cost at its ``maxPrice``;
  once assigned, the most it may cost at the provider's price, and the excess goes back.
* Stored progress only increases and stays within 0..100 (seed Property 7).
* A job is charged for the seconds the market measured, rounded up, never more than its budget.
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal, InvalidOperation

from .errors import QubixError
from .money import SECONDS_PER_HOUR, escrow_for

MIN_COMPUTE_SECONDS = 1
MAX_COMPUTE_SECONDS = 7 * 24 * SECONDS_PER_HOUR
MAX_PROGRESS = 100
_SECOND = dt.timedelta(seconds=1)
_MICROSECOND = Decimal("0.000001")


class InvalidJob(QubixError):
    """A job request the market cannot take (its budget, kind or constraints)."""

    code = "invalid_job"
    status = 422


class ResultTooLarge(QubixError):
    """A job's result over the market's size cap; the job fails and is charged its time."""

    code = "payload_too_large"
    status = 413


def compute_seconds(hours: object) -> int:
    """``computeNeeded`` (hours: an int, a float as parsed from JSON, a Decimal or a numeric
    string) → whole seconds, rounded up, within ``MIN_COMPUTE_SECONDS..MAX_COMPUTE_SECONDS``."""
    if isinstance(hours, bool):
        raise InvalidJob("computeNeeded is a number of hours", field="computeNeeded")
    try:
        # repr of a float is the shortest decimal that reads back as it: the client's number.
        exact = Decimal(repr(hours) if isinstance(hours, float) else str(hours))
    except InvalidOperation:
        raise InvalidJob("computeNeeded is a number of hours", field="computeNeeded") from None
    if not exact.is_finite() or exact <= 0:
        raise InvalidJob("computeNeeded must be finite hours > 0", field="computeNeeded")
    limit = Decimal(MAX_COMPUTE_SECONDS) / SECONDS_PER_HOUR
    if exact > limit:
        raise InvalidJob(
            f"computeNeeded is at most {MAX_COMPUTE_SECONDS // SECONDS_PER_HOUR} hours",
            field="computeNeeded",
            max=float(limit),
        )
    # Rounded to the microsecond first: a client's hours = seconds / 3600, computed in binary
    # floating point, lands a hair above or below the whole second it means (error < 1e-10 s
    # within 7 days), and must not cost a second more.
    exact_seconds = (exact * SECONDS_PER_HOUR).quantize(_MICROSECOND, rounding=ROUND_HALF_EVEN)
    seconds = int(exact_seconds.to_integral_value(rounding=ROUND_CEILING))
    return max(seconds, MIN_COMPUTE_SECONDS)


def hours_of(seconds: int) -> float:
    """A budget in seconds as the API's ``computeNeeded`` (hours; not money, so a float)."""
    return seconds / SECONDS_PER_HOUR


def unassigned_escrow(max_price: int, seconds: int) -> int:
    """Escrow of a job waiting for a provider: ceil(maxPrice × seconds / 3600)."""
    return escrow_for(max_price, seconds)


def assigned_escrow(price_per_hour: int, seconds: int) -> int:
    """Escrow of an assigned job: ceil(price × seconds / 3600)."""
    return escrow_for(price_per_hour, seconds)


def excess_at_assignment(held: int, price_per_hour: int, seconds: int) -> int:
    """QU to give back when a job is assigned below its max price (never negative)."""
    return max(held - assigned_escrow(price_per_hour, seconds), 0)


def reported_progress(value: object) -> int:
    """A worker's progress report (any finite number) as a whole percent within 0..100."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidJob("progress is a finite number", field="progress")
    return int(min(max(math.floor(value), 0), MAX_PROGRESS))


def next_progress(stored: int, reported: object) -> int:
    """The progress to store after a report: it never goes down, and stays within 0..100."""
    return max(stored, reported_progress(reported))


def charged_seconds(started_at: dt.datetime, now: dt.datetime, *, budget_seconds: int) -> int:
    """Whole seconds from ``started_at`` to ``now``, rounded up, within 0..budget."""
    elapsed = _aware(now) - _aware(started_at)
    seconds = -(-elapsed // _SECOND) if elapsed > dt.timedelta(0) else 0
    return min(seconds, budget_seconds)


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)
