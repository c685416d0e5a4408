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
from .qubic import QubicBackend

BACKENDS = ("memory", "qubic")


def make_backend(name: str = "memory", **config: Any) -> SettlementBackend:
    """Build the backend called ``name`` from keyword configuration.

    ``memory``: ``ledger`` plus the options of :class:`MemoryBackend`.
    ``qubic``: ``ledger``, ``store``, ``live_url``, ``query_url`` (or ``rpc_url``, or ``rpc``),
    ``platform_seed`` plus the options of :class:`~.qubic.QubicBackend`.

    Settlement imports no database code: the caller (the composition root: the server extension,
    the CLI, a test) builds the ``ledger`` and the ``store``
    (``qubix_jupyter.db.settlement_store.SettlementStore(sessionmaker)``) and passes them in.
    """
    if name == "memory":
        return MemoryBackend(**config)
    if name == "qubic":
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
    "QubicBackend",
    "SettlementBackend",
    "SettlementError",
    "SettlementNotConfigured",
    "SimulatedChain",
    "UnknownPayout",
    "make_backend",
]
