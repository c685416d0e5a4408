"""Which provider takes a job: the constraints a job sets, and the order offers are tried in.

Pure domain, no I/O. The job service loads the candidate offers and asks :func:`choose_provider`;
:func:`decide_assignment` adds the clock: a pending job is assigned as soon as an offer matches,
and fails as ``unassignable`` once it has waited ``timeout`` without one (seed Property 6).

Order among matching offers (DESIGN.md §5):

1. cheapest ``price_per_hour`` first;
2. then higher measured performance (TFLOP/s); an unmeasured offer ranks below every measured one;
3. then least recently assigned, a never-assigned offer first (fairness between equal offers);
4. then ``id``, so the choice is deterministic.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Iterable
from typing import Any, Protocol

from .errors import QubixError
from .marketplace import MAX_FILTER_VALUES, MAX_GPU_MODEL_LENGTH, Offer, fold_model
from .money import require_amount

#: The error a job fails with when no offer took it in time.
UNASSIGNABLE = "unassignable"


class InvalidConstraints(QubixError):
    code = "invalid_constraints"
    status = 422


class Candidate(Offer, Protocol):
    """An offer as the matcher sees it: a provider row, or anything shaped like one."""

    @property
    def last_assigned_at(self) -> dt.datetime | None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class JobConstraints:
    """What a job asks of its provider.

    ``gpu_models``: any of these models (compared as the marketplace compares them: ASCII
    case-insensitive, otherwise exact); empty: any GPU. ``min_vram``: GB per GPU, at least;
    None: any. ``max_price``: integer QU per GPU-hour, at most.
    """

    max_price: int
    gpu_models: tuple[str, ...] = ()
    min_vram: float | None = None
    folded_models: frozenset[str] = dataclasses.field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        require_amount(self.max_price, name="max_price", allow_zero=True)
        if len(self.gpu_models) > MAX_FILTER_VALUES:
            raise InvalidConstraints(
                f"at most {MAX_FILTER_VALUES} GPU models", field="gpuModel", max=MAX_FILTER_VALUES
            )
        for model in self.gpu_models:
            if not isinstance(model, str) or not 0 < len(model) <= MAX_GPU_MODEL_LENGTH:
                raise InvalidConstraints(
                    f"a GPU model is 1 to {MAX_GPU_MODEL_LENGTH} characters", field="gpuModel"
                )
        if self.min_vram is not None and (
            isinstance(self.min_vram, bool)
            or not isinstance(self.min_vram, int | float)
            or not math.isfinite(self.min_vram)
            or self.min_vram < 0
        ):
            raise InvalidConstraints("minVram is a finite number of GB ≥ 0", field="minVram")
        object.__setattr__(self, "folded_models", frozenset(map(fold_model, self.gpu_models)))

    def accepts(self, offer: Offer) -> bool:
        """Whether ``offer`` may take the job now: listed, online, free, and within the limits."""
        if not (offer.is_listed and offer.is_online and offer.is_available):
            return False
        if self.folded_models and fold_model(offer.gpu_model) not in self.folded_models:
            return False
        if self.min_vram is not None and not offer.gpu_vram >= self.min_vram:
            return False
        return offer.price_per_hour <= self.max_price

    def to_json(self) -> dict[str, Any]:
        """As a job row stores it (``jobs.constraints``)."""
        return {"gpuModels": list(self.gpu_models), "minVram": self.min_vram}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None, *, max_price: int) -> JobConstraints:
        data = data or {}
        return cls(
            max_price=max_price,
            gpu_models=tuple(data.get("gpuModels") or ()),
            min_vram=data.get("minVram"),
        )


_NEVER = dt.datetime.min.replace(tzinfo=dt.UTC)


def _aware(moment: dt.datetime) -> dt.datetime:
    # SQLite hands timestamps back without their offset; every one the market stores is UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def preference(offer: Candidate) -> tuple[Any, ...]:
    """Sort key: the offer to try first sorts first (see the module's order)."""
    perf = offer.performance_tflops
    last = offer.last_assigned_at
    return (
        offer.price_per_hour,
        perf is None,
        -perf if perf is not None else 0.0,
        last is not None,
        _NEVER if last is None else _aware(last),
        offer.id,
    )


def rank(constraints: JobConstraints, offers: Iterable[Candidate]) -> list[Candidate]:
    """The offers that may take the job, best first."""
    return sorted((o for o in offers if constraints.accepts(o)), key=preference)


def choose_provider(constraints: JobConstraints, offers: Iterable[Candidate]) -> Candidate | None:
    """The offer that takes the job, or None when none may."""
    ranked = rank(constraints, offers)
    return ranked[0] if ranked else None


@dataclasses.dataclass(frozen=True, slots=True)
class Assign:
    provider: Candidate


@dataclasses.dataclass(frozen=True, slots=True)
class Fail:
    """No offer matched within the timeout: fail the job ``unassignable`` with a full refund."""

    error: str = UNASSIGNABLE


@dataclasses.dataclass(frozen=True, slots=True)
class Wait:
    """Nothing matches yet, and the job may still wait until ``deadline``."""

    deadline: dt.datetime


Decision = Assign | Fail | Wait


def decide_assignment(
    constraints: JobConstraints,
    offers: Iterable[Candidate],
    *,
    created_at: dt.datetime,
    now: dt.datetime,
    timeout: dt.timedelta,
) -> Decision:
    """What to do with a pending job at ``now``: assign it, fail it, or let it wait.

    A matching offer always wins, even past the deadline: a job is failed only when nothing
    could take it, never because the sweep ran late.
    """
    chosen = choose_provider(constraints, offers)
    if chosen is not None:
        return Assign(chosen)
    deadline = _aware(created_at) + timeout
    if _aware(now) >= deadline:
        return Fail()
    return Wait(deadline)
