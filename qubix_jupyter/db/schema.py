"""The complete metadata: every module that declares tables is imported here."""

from __future__ import annotations

from importlib import import_module

from .models import Base

# Tables declared outside models.py (by the settlement store) join the same metadata.
for _module in ("qubix_jupyter.db.settlement_models",):
    try:
        import_module(_module)
    except ModuleNotFoundError as exc:  # pragma: no cover - only while that module is absent
        if exc.name != _module:
            raise

metadata = Base.metadata
