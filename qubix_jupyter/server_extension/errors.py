"""Errors of the HTTP boundary, as typed :class:`QubixError` s with their status.

The handlers map every ``QubixError`` to ``{"error": {"code", "message", "details"}}`` in one place
(:meth:`~.handlers.QubixAPIHandler.write_qubix_error`); these are the ones only the API raises.
"""

from __future__ import annotations

from ..market.errors import QubixError


class InvalidJSON(QubixError):
    code = "invalid_json"
    status = 400


class ValidationFailed(QubixError):
    code = "validation_failed"
    status = 422


class Unauthorized(QubixError):
    """No token, an unknown, expired or revoked token, or a failed wallet signature."""

    code = "unauthorized"
    status = 401


class InvalidChallenge(Unauthorized):
    code = "invalid_challenge"


class InvalidSignature(Unauthorized):
    code = "invalid_signature"


class Forbidden(QubixError):
    code = "forbidden"
    status = 403


class NotFound(QubixError):
    code = "not_found"
    status = 404


class MethodNotAllowed(QubixError):
    code = "method_not_allowed"
    status = 405


class PayloadTooLarge(QubixError):
    code = "payload_too_large"
    status = 413


class RateLimited(QubixError):
    code = "rate_limited"
    status = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many requests: retry after {retry_after} s", retryAfter=retry_after)
        self.retry_after = retry_after


class ServiceUnavailable(QubixError):
    code = "service_unavailable"
    status = 503


class DatabaseUnavailable(ServiceUnavailable):
    """The market's database did not answer (down, restarting, out of connections): the request
    may be retried, after ``retry_after`` seconds."""

    code = "database_unavailable"

    def __init__(self, retry_after: int = 1) -> None:
        super().__init__(
            f"the market's database does not answer: retry after {retry_after} s",
            retryAfter=retry_after,
        )
        self.retry_after = retry_after
