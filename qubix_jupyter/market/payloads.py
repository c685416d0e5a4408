"""How bytes travel inside the API's JSON: a ``python`` job's input and a pickled result.

``qubix.submit`` sends ``inputData = {"kind": "python", "payload": <base64 of the cloudpickled
(function, args, kwargs)>}``; the market hands the bytes to the ``python`` runner. A result
that is not JSON comes back as ``{"kind": "pickle", "payload": <base64 of the pickle>}``.
Pure encoding, no unpickling here: only the consumer unpickles its own results.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from .errors import QubixError

PYTHON = "python"
PICKLE = "pickle"


class InvalidPayload(QubixError):
    """An ``inputData`` or result that does not have the documented shape."""

    code = "invalid_payload"
    status = 422


def _wrap(kind: str, data: bytes) -> dict[str, str]:
    return {"kind": kind, "payload": base64.b64encode(bytes(data)).decode("ascii")}


def _unwrap(kind: str, value: Any) -> bytes:
    if not isinstance(value, dict) or value.get("kind") != kind:
        raise InvalidPayload(f'expected {{"kind": "{kind}", "payload": <base64>}}')
    text = value.get("payload")
    if not isinstance(text, str):
        raise InvalidPayload("payload must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidPayload("payload is not valid base64") from None


def python_input(pickled_call: bytes) -> dict[str, str]:
    """``inputData`` of a python job from the cloudpickled ``(function, args, kwargs)``."""
    return _wrap(PYTHON, pickled_call)


def python_call_bytes(input_data: Any) -> bytes:
    """The cloudpickled call inside a python job's ``inputData`` (InvalidPayload otherwise)."""
    return _unwrap(PYTHON, input_data)


def pickled_result(data: bytes) -> dict[str, str]:
    """A result as JSON, from the runner's pickled bytes."""
    return _wrap(PICKLE, data)


def is_pickled_result(result: Any) -> bool:
    return isinstance(result, dict) and result.get("kind") == PICKLE and "payload" in result


def pickled_result_bytes(result: Any) -> bytes:
    return _unwrap(PICKLE, result)
