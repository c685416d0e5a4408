"""Long ``IN (…)`` lists in pieces: ids per statement well inside SQLite's and PostgreSQL's
limits on bound parameters."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")

#: Ids per ``IN (…)`` list.
CHUNK = 500


def chunks(items: Sequence[T]) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]
