"""The complete metadata: every module that declares tables is imported here."""

from __future__ import annotations

from sqlalchemy import MetaData

from . import auth_models, event_store, settlement_models  # noqa: F401  (registers their tables)
from .models import Base

metadata = Base.metadata


def exists_on(item: object, dialect: str) -> bool:
    """Whether a schema item (an index made ``.ddl_if(dialect=…)``) is created on ``dialect``."""
    condition = getattr(item, "_ddl_if", None)
    if condition is None or condition.dialect is None:
        return True
    if isinstance(condition.dialect, str):
        return condition.dialect == dialect
    return dialect in condition.dialect


def metadata_for(dialect: str) -> MetaData:
    """The schema as ``dialect`` has it: a copy without the indexes made for other dialects.

    Alembic's comparison does not read ``ddl_if``; compare against this, or it reports
    PostgreSQL-only indexes as missing from SQLite (and warns that it cannot compare expression
    indexes there).
    """
    copy = MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.sorted_tables:
        twin = table.to_metadata(copy)
        foreign = {index.name for index in table.indexes if not exists_on(index, dialect)}
        for index in [i for i in twin.indexes if i.name in foreign]:
            twin.indexes.discard(index)
    return copy
