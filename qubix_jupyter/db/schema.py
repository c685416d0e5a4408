"""The complete metadata: every module that declares tables is imported here."""

from __future__ import annotations

from . import auth_models, settlement_models  # noqa: F401  (registers their tables)
from .models import Base

metadata = Base.metadata
