"""What the market answered when it said no, as exceptions a notebook can catch by kind.

Every error the market sends has the body ``{"error": {"code", "message", "details"}}``
(docs/market-server.md). :func:`error_from_response` turns it into the subclass of
:class:`MarketError` for its status, keeping the whole body, so ``except InsufficientFunds`` and
``err.code == "insufficient_funds"`` both work.
"""

from __future__ import annotations

from typing import Any


class MarketError(Exception):
    """The market refused a call: ``status``, ``code``, ``message``, ``details``, ``body``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})
        self.body = body


class BadRequest(MarketError):
    """400: the request could not be read (``invalid_json``)."""


class Unauthorized(MarketError):
    """401: no token, or an unknown, expired or revoked one; or a bad sign-in."""


class InsufficientFunds(MarketError):
    """402: the wallet cannot pay for this; nothing was locked or moved."""


class Forbidden(MarketError):
    """403: not yours (a job, provider or wallet of another user), or an origin not allowed."""


class NotFound(MarketError):
    """404: no such job, provider or endpoint."""


class MethodNotAllowed(MarketError):
    """405: the endpoint exists, not with this method (an older or newer market)."""


class Conflict(MarketError):
    """409: the state forbids it (a finished job, a worker id taken, an idempotency clash)."""


class PayloadTooLarge(MarketError):
    """413: a body or a result over the market's size limit."""


class ValidationFailed(MarketError):
    """422: a field is wrong; ``details["errors"]`` names each one."""


class RateLimited(MarketError):
    """429: too many calls; ``retry_after`` is the seconds the market asked to wait (or None)."""

    def __init__(self, *args: Any, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after


class ServerError(MarketError):
    """5xx: the market failed; the call may be retried later."""


class ServiceUnavailable(ServerError):
    """503: a dependency of the market (its database) is down."""


class MarketUnreachable(MarketError):
    """No answer at all: the market is down or the network failed (``status`` 0), after retries."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "unreachable", message)


class JobFailed(MarketError):
    """The job ended FAILED or CANCELLED: ``details`` holds the market's reason and traceback."""


class ResultTimeout(TimeoutError):
    """``Job.result(timeout)`` ran out of time; the job goes on running."""


_BY_STATUS: dict[int, type[MarketError]] = {
    400: BadRequest,
    401: Unauthorized,
    402: InsufficientFunds,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    413: PayloadTooLarge,
    422: ValidationFailed,
    429: RateLimited,
    503: ServiceUnavailable,
}


def error_class(status: int) -> type[MarketError]:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status >= 500:
        return ServerError
    return MarketError


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:  # an HTTP date: not sent by the market, so not worth parsing
        return None


def error_from_response(
    status: int, body: Any, *, retry_after: str | None = None, reason: str = ""
) -> MarketError:
    """The exception for an error answer; a body that is not the market's keeps its text."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or "error")
        message = str(error.get("message") or reason or code)
        details = error.get("details") if isinstance(error.get("details"), dict) else {}
    else:  # a proxy's page, or not the market at all
        code = "http_error"
        message = reason or f"HTTP {status}"
        details = {"body": body} if body not in (None, "") else {}
    cls = error_class(status)
    if cls is RateLimited:
        return RateLimited(
            status, code, message, details, body, retry_after=_retry_after(retry_after)
        )
    return cls(status, code, message, details, body)


def error_from_frame(frame: dict[str, Any]) -> MarketError:
    """An ``{"type": "error", "status", "error": {…}}`` frame of the events WebSocket."""
    status = frame.get("status")
    return error_from_response(status if isinstance(status, int) else 400, frame)
