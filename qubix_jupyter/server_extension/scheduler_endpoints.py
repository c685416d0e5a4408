"""The scheduler's address for providers' workers, and the worker-token check the scheduler asks.

``GET scheduler`` takes the worker token (``qubix provide`` calls it after quick-register), so
only a registered provider learns where to connect; the scheduler then admits the worker only
with that same token under its own ``workerId`` (:func:`worker_validator`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from pydantic import BaseModel, Field

from ..market.errors import QubixError
from .auth import AuthService
from .endpoints import Call
from .errors import Unauthorized
from .models import Response
from .route import Route


class SchedulerUnavailable(QubixError):
    """The market runs no scheduler now (not started yet, or stopped)."""

    code = "scheduler_unavailable"
    status = 503


class SchedulerResponse(Response):
    address: str = Field(description="the Dask scheduler workers connect to, e.g. tls://host:8786")
    workerId: str = Field(description="the name your worker must use (its workerId)")


async def scheduler_address(call: Call) -> BaseModel:
    address = call.services.scheduler.address
    if not address:
        raise SchedulerUnavailable("the market's scheduler is not running; try again shortly")
    return SchedulerResponse(address=address, workerId=call.calling_worker.worker_id)


def worker_validator(auth: AuthService) -> Callable[[str, str], Awaitable[bool]]:
    """For the scheduler: a worker named ``name`` may join only with its provider's live token."""

    async def valid(name: str, token: str) -> bool:
        try:
            owner = await auth.authenticate_worker(f"Bearer {token}")
        except Unauthorized:
            return False
        return owner.worker_id == name

    return valid


ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "scheduler",
        scheduler_address,
        "Where this provider's worker connects: the market's Dask scheduler",
        SchedulerResponse,
        auth="worker",
        tag="providers",
        errors=(401, 503),
    ),
)
