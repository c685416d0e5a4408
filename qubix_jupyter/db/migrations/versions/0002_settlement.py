"""Settlement: payout outbox and attempts, deposit addresses, chain scan state, source locks.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

NOW = sa.text("(CURRENT_TIMESTAMP)")
IN_FLIGHT = "status IN ('signed', 'broadcast')"


def upgrade() -> None:
    op.create_table(
        "chain_scan_state",
        sa.Column("identity", sa.String(length=60), nullable=False),
        sa.Column("last_scanned_tick", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("identity", name=op.f("pk_chain_scan_state")),
    )
    op.create_table(
        "settlement_locks",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("locked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_settlement_locks")),
    )
    op.create_table(
        "deposit_addresses",
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("identity", sa.String(length=60), nullable=False),
        sa.Column("start_tick", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_deposit_addresses_user_id_users"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_deposit_addresses")),
        sa.UniqueConstraint("identity", name=op.f("uq_deposit_addresses_identity")),
    )
    op.create_table(
        "payout_outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("payout_key", sa.String(length=150), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("source_identity", sa.String(length=60), nullable=False),
        sa.Column("destination_identity", sa.String(length=60), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "queued",
                "signed",
                "broadcast",
                "confirmed",
                "failed",
                name="payout_state",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("misses", sa.Integer(), nullable=False),
        sa.Column("delayed", sa.Boolean(), nullable=False),
        sa.Column("signed_tx", sa.LargeBinary(), nullable=True),
        sa.Column("tx_id", sa.String(length=60), nullable=True),
        sa.Column("target_tick", sa.BigInteger(), nullable=True),
        sa.Column("confirmed_tick", sa.BigInteger(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            f"NOT ({IN_FLIGHT}) OR (signed_tx IS NOT NULL AND tx_id IS NOT NULL "
            "AND target_tick IS NOT NULL)",
            name=op.f("ck_payout_outbox_in_flight_has_transaction"),
        ),
        sa.CheckConstraint(
            "amount > 0 AND amount <= 1000000000000000", name=op.f("ck_payout_outbox_amount_range")
        ),
        sa.CheckConstraint(
            "attempts >= 0 AND misses >= 0", name=op.f("ck_payout_outbox_counters_non_negative")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_payout_outbox_user_id_users"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payout_outbox")),
        sa.UniqueConstraint("payout_key", name=op.f("uq_payout_outbox_payout_key")),
    )
    op.create_index(
        op.f("ix_payout_outbox_source_identity_status_id"),
        "payout_outbox",
        ["source_identity", "status", "id"],
        unique=False,
    )
    op.create_index(op.f("ix_payout_outbox_tx_id"), "payout_outbox", ["tx_id"], unique=False)
    op.create_index(
        op.f("ix_payout_outbox_user_id_created_at"),
        "payout_outbox",
        ["user_id", "created_at"],
        unique=False,
    )
    # At most one transaction in flight per source, enforced by the database itself.
    op.create_index(
        "uq_payout_outbox_in_flight_source",
        "payout_outbox",
        ["source_identity"],
        unique=True,
        postgresql_where=sa.text(IN_FLIGHT),
        sqlite_where=sa.text(IN_FLIGHT),
    )
    op.create_table(
        "payout_attempts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("payout_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("tx_id", sa.String(length=60), nullable=False),
        sa.Column("target_tick", sa.BigInteger(), nullable=False),
        sa.Column("outcome", sa.String(length=20), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["payout_id"],
            ["payout_outbox.id"],
            name=op.f("fk_payout_attempts_payout_id_payout_outbox"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payout_attempts")),
        sa.UniqueConstraint(
            "payout_id", "attempt", name=op.f("uq_payout_attempts_payout_id_attempt")
        ),
        sa.UniqueConstraint("tx_id", name=op.f("uq_payout_attempts_tx_id")),
    )


def downgrade() -> None:
    op.drop_table("payout_attempts")
    op.drop_index(
        "uq_payout_outbox_in_flight_source",
        table_name="payout_outbox",
        postgresql_where=sa.text(IN_FLIGHT),
        sqlite_where=sa.text(IN_FLIGHT),
    )
    op.drop_index(op.f("ix_payout_outbox_user_id_created_at"), table_name="payout_outbox")
    op.drop_index(op.f("ix_payout_outbox_tx_id"), table_name="payout_outbox")
    op.drop_index(op.f("ix_payout_outbox_source_identity_status_id"), table_name="payout_outbox")
    op.drop_table("payout_outbox")
    op.drop_table("deposit_addresses")
    op.drop_table("settlement_locks")
    op.drop_table("chain_scan_state")
