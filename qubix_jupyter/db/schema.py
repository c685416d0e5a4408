"""The complete metadata: every module that declares tables is imported here."""

from __future__ import annotations

from . import auth_models  # noqa: F401  (registers the login challenge and token tables)
from . import settlement_models  # noqa: F401  (registers the settlement tables)
from .models import Base

metadata = Base.metadata
