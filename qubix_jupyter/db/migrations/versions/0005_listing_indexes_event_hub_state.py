"""Covering, partial indexes for the marketplace listing (PostgreSQL only); the event hub's
hand-over between two processes of the market (``event_hub_state``).

Each leads with the availability cell and holds every filter column, so the search reads a page's
keys and its capped count from the index alone. SQLite has no INCLUDE and keeps the plain
indexes of 0001.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

INCLUDE = ["gpu_model", "gpu_vram", "location"]
PERFORMANCE = sa.text("performance_tflops DESC NULLS LAST")


def upgrade() -> None:
    op.create_table(
        "event_hub_state",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("head_seq", sa.BigInteger(), nullable=False),
        sa.Column("floor_seq", sa.BigInteger(), nullable=False),
        sa.Column("frames", sa.JSON(), nullable=False),
        sa.Column(
            "saved_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_event_hub_state")),
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    op.create_index(
        "ix_providers_listed_cell_price",
        "providers",
        ["is_online", "is_available", "price_per_hour", PERFORMANCE, "id"],
        postgresql_include=INCLUDE,
        postgresql_where=sa.text("is_listed"),
    )
    op.create_index(
        "ix_providers_listed_cell_performance",
        "providers",
        ["is_online", "is_available", PERFORMANCE, "price_per_hour", "id"],
        postgresql_include=INCLUDE,
        postgresql_where=sa.text("is_listed"),
    )
    op.create_index("ix_providers_lower_gpu_model", "providers", [sa.text("lower(gpu_model)")])


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_providers_lower_gpu_model", table_name="providers")
        op.drop_index("ix_providers_listed_cell_performance", table_name="providers")
        op.drop_index("ix_providers_listed_cell_price", table_name="providers")
    op.drop_table("event_hub_state")
