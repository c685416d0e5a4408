"""Query strings into a route's query model: each bad parameter is a 422 that names it."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import ValidationFailed


def _is_list(model: type[BaseModel], name: str) -> bool:
    annotation = model.model_fields[name].annotation
    return typing.get_origin(annotation) is list


def parse_query(model: type[BaseModel], arguments: dict[str, list[bytes]]) -> BaseModel:
    """``?a=1&b=x,y&b=z`` → ``model(a="1", b=["x", "y", "z"])``.

    A list field may repeat or hold a comma list; any other field may appear once. Unknown
    parameters are refused by the model (``extra="forbid"``), not ignored.
    """
    data: dict[str, Any] = {}
    errors: list[dict[str, Any]] = []
    for name, raw_values in arguments.items():
        try:
            values = [raw.decode("utf-8") for raw in raw_values]
        except UnicodeDecodeError:
            errors.append({"loc": [name], "msg": "not UTF-8", "type": "unicode_error"})
            continue
        if name in model.model_fields and _is_list(model, name):
            data[name] = [part for value in values for part in value.split(",")]
        elif len(values) > 1:
            errors.append(
                {"loc": [name], "msg": "may be given only once", "type": "repeated_parameter"}
            )
        else:
            data[name] = values[0]
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        errors += exc.errors(include_url=False, include_input=False, include_context=False)
    if errors:
        raise ValidationFailed("query parameters do not match the schema", errors=errors)
    return parsed
