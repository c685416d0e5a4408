"""Typed domain errors.

Each error carries a stable machine-readable ``code``, the HTTP ``status`` the API maps it to,
and ``details`` safe to show to the client. The server maps them to the error body of
DESIGN.md §6 in one place; nothing here knows about HTTP beyond the number.
"""

from __future__ import annotations

from typing import Any


class QubixError(Exception):
    """Base of every error a client can cause or be told about."""

    code = "qubix_error"
    status = 400

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class InvalidAmount(QubixError):
    """An amount that is not a positive integer number of QU within int64."""

    code = "invalid_amount"
    status = 422


class AmountTooLarge(InvalidAmount):
    code = "amount_too_large"


class InsufficientFunds(QubixError):
    code = "insufficient_funds"
    status = 402


class UnknownAccount(QubixError):
    code = "unknown_account"
    status = 404


class UnknownJob(QubixError):
    code = "unknown_job"
    status = 404


class UnknownUser(QubixError):
    code = "unknown_user"
    status = 404


class InvalidState(QubixError):
    """The operation is not allowed in the entity's current state (e.g. charging a finished job)."""

    code = "invalid_state"
    status = 409


class IdempotencyConflict(QubixError):
    """An idempotency key reused with different parameters."""

    code = "idempotency_conflict"
    status = 409


class SchemaOutOfDate(QubixError):
    """The database schema is not at the revision this code needs."""

    code = "schema_out_of_date"
    status = 503
