"""When to try again: exponential backoff with full jitter, pure and seedable.

The n-th wait (n = 0, 1, …) is drawn uniformly from ``[0, min(cap, first · factor**n)]``
("full jitter": many clients dropped by one server restart spread their reconnects instead of
arriving together). With the defaults the first retry comes within 250 ms and no two attempts
are more than ``cap`` (2 s) plus one failed attempt's duration apart, so a client tries again
within 5 s of the server coming back (seed Property 10) as long as a failed attempt gives up
within ``MAX_ATTEMPT_SECONDS``.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator

#: How long one connect attempt may take before it counts as failed (the connect timeout).
MAX_ATTEMPT_SECONDS = 2.5


@dataclasses.dataclass(frozen=True)
class Backoff:
    first: float = 0.25
    factor: float = 2.0
    cap: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.cap or self.factor < 1:
            raise ValueError("need 0 < first <= cap and factor >= 1")

    def ceiling(self, attempt: int) -> float:
        """The largest wait before retry number ``attempt`` (0-based)."""
        # compare exponents first: factor**attempt overflows long before a client gives up
        if self.factor == 1 or attempt < 64:
            return min(self.cap, self.first * self.factor ** min(attempt, 64))
        return self.cap

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The waits before each retry of one outage; restart it after a success."""
        rng = rng or random.Random()
        attempt = 0
        while True:
            yield rng.uniform(0.0, self.ceiling(attempt))
            attempt += 1
