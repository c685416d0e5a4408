"""Persistence: SQLAlchemy 2 typed models, async engine and sessions, the ledger, migrations."""
