"""Error answers → exceptions: each status family its class, the market's body kept whole."""

from __future__ import annotations

import pytest

from qubix_jupyter.client import errors


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, errors.BadRequest),
        (401, errors.Unauthorized),
        (402, errors.InsufficientFunds),
        (403, errors.Forbidden),
        (404, errors.NotFound),
        (405, errors.MethodNotAllowed),
        (409, errors.Conflict),
        (413, errors.PayloadTooLarge),
        (422, errors.ValidationFailed),
        (429, errors.RateLimited),
        (500, errors.ServerError),
        (502, errors.ServerError),
        (503, errors.ServiceUnavailable),
        (418, errors.MarketError),
    ],
)
def test_each_status_has_its_exception_carrying_the_body(status: int, cls: type):
    body = {"error": {"code": "some_code", "message": "what happened", "details": {"a": 1}}}
    error = errors.error_from_response(status, body)
    assert type(error) is cls
    assert isinstance(error, errors.MarketError)
    assert (error.status, error.code, error.message, error.details) == (
        status,
        "some_code",
        "what happened",
        {"a": 1},
    )
    assert error.body == body


def test_rate_limited_carries_retry_after_and_a_foreign_body_keeps_its_text():
    limited = errors.error_from_response(
        429, {"error": {"code": "rate_limited", "message": "slow down"}}, retry_after="7"
    )
    assert isinstance(limited, errors.RateLimited)
    assert limited.retry_after == 7.0
    assert errors.error_from_response(429, None, retry_after="soon").retry_after is None  # type: ignore[attr-defined]
    proxy = errors.error_from_response(502, "<html>Bad Gateway</html>", reason="Bad Gateway")
    assert (proxy.code, proxy.message) == ("http_error", "Bad Gateway")
    assert proxy.details == {"body": "<html>Bad Gateway</html>"}


def test_a_websocket_error_frame_is_the_same_exception():
    frame = {
        "type": "error",
        "status": 403,
        "channel": "job:j-1",
        "error": {"code": "channel_forbidden", "message": "not yours", "details": {}},
    }
    error = errors.error_from_frame(frame)
    assert isinstance(error, errors.Forbidden)
    assert error.code == "channel_forbidden"
