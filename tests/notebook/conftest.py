"""The notebook tests use the client tests' real market (``qubix serve`` in a subprocess)."""

from __future__ import annotations

from ..client.conftest import (  # noqa: F401  (fixtures, found by pytest here)
    GPU,
    SEED_ALICE,
    SEED_BOB,
    Market,
    alice,
    bob,
    market,
    signed_in,
)
