"""Settlement backends: ``memory`` (the default, a simulated chain) and ``qubic`` (the network).

``make_backend(name, **config)`` builds one; see docs/settlement.md for the configuration.
"""

from __future__ import annotations

from typing import Any

from .base import (
    ChainStatus,
    DepositCredit,
    InvalidDestination,
    PayoutState,
    PayoutStatus,
    SettlementBackend,
    SettlementError,
    SettlementNotConfigured,
    UnknownPayout,
)
from .memory import MemoryBackend, SimulatedChain

BACKENDS = ("memory", "qubic")


def make_backend(name: str = "memory", **config: Any) -> SettlementBackend:
    """Build the backend called ``name`` from keyword configuration.

    ``memory``: ``ledger`` plus the options of :class:`MemoryBackend`.
    ``qubic``: ``ledger``, ``sessionmaker``, ``live_url``, ``query_url`` (or ``rpc``),
    ``platform_seed`` plus the options of :class:`~.qubic.QubicBackend`.
    """
    if name == "memory":
        return MemoryBackend(**config)
    if name == "qubic":
        # Imported here: it pulls in the database layer, which imports this package's base.
        from .qubic import QubicBackend

        return QubicBackend.from_config(**config)
    raise SettlementNotConfigured(
        f"unknown settlement backend {name!r}; choose one of {', '.join(BACKENDS)}",
        backend=name,
    )


__all__ = [
    "BACKENDS",
    "ChainStatus",
    "DepositCredit",
    "InvalidDestination",
    "MemoryBackend",
    "PayoutState",
    "PayoutStatus",
    "SettlementBackend",
    "SettlementError",
    "SettlementNotConfigured",
    "SimulatedChain",
    "UnknownPayout",
    "make_backend",
]
