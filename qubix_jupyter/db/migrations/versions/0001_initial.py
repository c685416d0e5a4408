"""Initial schema: users, providers, jobs, the double-entry ledger, idempotency keys, metrics.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("operation", sa.String(length=40), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("response", sa.JSON(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_idempotency_keys")),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("qubic_address", sa.String(length=60), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("username", sa.String(length=100), nullable=True),
        sa.Column(
            "role",
            sa.Enum(
                "CONSUMER",
                "PROVIDER",
                "BOTH",
                name="role",
                native_enum=False,
                create_constraint=True,
                length=20,
            ),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
        sa.UniqueConstraint("qubic_address", name=op.f("uq_users_qubic_address")),
    )
    op.create_table(
        "providers",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("worker_id", sa.String(length=128), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("qubic_address", sa.String(length=60), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=True),
        sa.Column(
            "type",
            sa.Enum(
                "BROWSER",
                "NATIVE",
                name="provider_type",
                native_enum=False,
                create_constraint=True,
                length=20,
            ),
            nullable=False,
        ),
        sa.Column("gpu_vendor", sa.String(length=64), nullable=True),
        sa.Column("gpu_model", sa.String(length=128), nullable=False),
        sa.Column("gpu_vram", sa.Float(), nullable=False),
        sa.Column("gpu_count", sa.Integer(), nullable=False),
        sa.Column("driver_version", sa.String(length=64), nullable=True),
        sa.Column("cuda_capability", sa.String(length=16), nullable=True),
        sa.Column("cpu_model", sa.String(length=128), nullable=False),
        sa.Column("cpu_cores", sa.Integer(), nullable=False),
        sa.Column("ram_total", sa.Float(), nullable=False),
        sa.Column("performance_tflops", sa.Float(), nullable=True),
        sa.Column("location", sa.String(length=100), nullable=True),
        sa.Column("price_per_hour", sa.BigInteger(), nullable=False),
        sa.Column("is_online", sa.Boolean(), nullable=False),
        sa.Column("is_available", sa.Boolean(), nullable=False),
        sa.Column("is_listed", sa.Boolean(), nullable=False),
        sa.Column("current_job_id", sa.String(length=36), nullable=True),
        sa.Column("total_earnings", sa.BigInteger(), nullable=False),
        sa.Column("total_jobs", sa.Integer(), nullable=False),
        sa.Column("uptime", sa.Integer(), nullable=False),
        sa.Column(
            "registered_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.Column("last_heartbeat", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_assigned_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("price_per_hour >= 0", name=op.f("ck_providers_price_non_negative")),
        sa.CheckConstraint("total_earnings >= 0", name=op.f("ck_providers_earnings_non_negative")),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_providers_user_id_users"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_providers")),
        sa.UniqueConstraint("worker_id", name=op.f("uq_providers_worker_id")),
    )
    op.create_index(op.f("ix_providers_gpu_model"), "providers", ["gpu_model"], unique=False)
    op.create_index(op.f("ix_providers_gpu_vram"), "providers", ["gpu_vram"], unique=False)
    op.create_index(
        op.f("ix_providers_is_online_is_available_price_per_hour"),
        "providers",
        ["is_online", "is_available", "price_per_hour"],
        unique=False,
    )
    op.create_index(op.f("ix_providers_location"), "providers", ["location"], unique=False)
    op.create_index(
        op.f("ix_providers_performance_tflops"), "providers", ["performance_tflops"], unique=False
    )
    op.create_index(op.f("ix_providers_user_id"), "providers", ["user_id"], unique=False)

    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("provider_id", sa.String(length=36), nullable=True),
        sa.Column("model_type", sa.String(length=64), nullable=False),
        sa.Column("compute_seconds", sa.Integer(), nullable=False),
        sa.Column("input_data", sa.JSON(), nullable=False),
        sa.Column("constraints", sa.JSON(), nullable=False),
        sa.Column("max_price", sa.BigInteger(), nullable=False),
        sa.Column("price_per_hour", sa.BigInteger(), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "PENDING",
                "ASSIGNED",
                "RUNNING",
                "COMPLETED",
                "FAILED",
                "CANCELLED",
                name="job_status",
                native_enum=False,
                create_constraint=True,
                length=20,
            ),
            nullable=False,
        ),
        sa.Column("progress", sa.Integer(), nullable=False),
        sa.Column("reassignments", sa.Integer(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("estimated_cost", sa.BigInteger(), nullable=False),
        sa.Column("actual_cost", sa.BigInteger(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "actual_cost IS NULL OR actual_cost >= 0", name=op.f("ck_jobs_actual_cost_non_negative")
        ),
        sa.CheckConstraint("compute_seconds > 0", name=op.f("ck_jobs_compute_positive")),
        sa.CheckConstraint("estimated_cost >= 0", name=op.f("ck_jobs_estimated_cost_non_negative")),
        sa.CheckConstraint("max_price >= 0", name=op.f("ck_jobs_max_price_non_negative")),
        sa.CheckConstraint(
            "progress >= 0 AND progress <= 100", name=op.f("ck_jobs_progress_range")
        ),
        sa.ForeignKeyConstraint(
            ["provider_id"],
            ["providers.id"],
            name=op.f("fk_jobs_provider_id_providers"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_jobs_user_id_users"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(
        op.f("ix_jobs_provider_id_status"), "jobs", ["provider_id", "status"], unique=False
    )
    op.create_index(
        op.f("ix_jobs_status_created_at"), "jobs", ["status", "created_at"], unique=False
    )
    op.create_index(
        op.f("ix_jobs_user_id_created_at"), "jobs", ["user_id", "created_at"], unique=False
    )

    op.create_table(
        "provider_metrics",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("provider_id", sa.String(length=36), nullable=False),
        sa.Column("cpu_percent", sa.Float(), nullable=False),
        sa.Column("ram_percent", sa.Float(), nullable=False),
        sa.Column("gpu_percent", sa.Float(), nullable=True),
        sa.Column("gpu_temp", sa.Float(), nullable=True),
        sa.Column("gpu_mem_used", sa.Float(), nullable=True),
        sa.Column(
            "timestamp",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["provider_id"],
            ["providers.id"],
            name=op.f("fk_provider_metrics_provider_id_providers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_metrics")),
    )
    op.create_index(
        op.f("ix_provider_metrics_provider_id_timestamp"),
        "provider_metrics",
        ["provider_id", "timestamp"],
        unique=False,
    )

    op.create_table(
        "accounts",
        sa.Column("id", sa.String(length=80), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "WALLET",
                "ESCROW",
                "PLATFORM",
                "EXTERNAL",
                name="account_kind",
                native_enum=False,
                create_constraint=True,
                length=20,
            ),
            nullable=False,
        ),
        sa.Column("user_id", sa.String(length=36), nullable=True),
        sa.Column("job_id", sa.String(length=36), nullable=True),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "kind = 'EXTERNAL' OR balance >= 0",
            name=op.f("ck_accounts_internal_balance_non_negative"),
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_accounts_job_id_jobs"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_accounts_user_id_users"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
    )
    op.create_index(op.f("ix_accounts_job_id"), "accounts", ["job_id"], unique=False)
    op.create_index(op.f("ix_accounts_user_id"), "accounts", ["user_id"], unique=False)

    op.create_table(
        "transactions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=True),
        sa.Column("job_id", sa.String(length=36), nullable=True),
        sa.Column("debit_account_id", sa.String(length=80), nullable=False),
        sa.Column("credit_account_id", sa.String(length=80), nullable=False),
        sa.Column(
            "type",
            sa.Enum(
                "PAYMENT",
                "EARNING",
                "REFUND",
                "ESCROW_LOCK",
                "ESCROW_RELEASE",
                "DEPOSIT",
                "WITHDRAWAL",
                "FEE",
                name="entry_type",
                native_enum=False,
                create_constraint=True,
                length=20,
            ),
            nullable=False,
        ),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "PENDING",
                "COMPLETED",
                "FAILED",
                name="entry_status",
                native_enum=False,
                create_constraint=True,
                length=20,
            ),
            nullable=False,
        ),
        sa.Column("qubic_tx_hash", sa.String(length=60), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("amount > 0", name=op.f("ck_transactions_amount_positive")),
        sa.CheckConstraint(
            "debit_account_id <> credit_account_id", name=op.f("ck_transactions_distinct_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["credit_account_id"],
            ["accounts.id"],
            name=op.f("fk_transactions_credit_account_id_accounts"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["debit_account_id"],
            ["accounts.id"],
            name=op.f("fk_transactions_debit_account_id_accounts"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["idempotency_key"],
            ["idempotency_keys.key"],
            name=op.f("fk_transactions_idempotency_key_idempotency_keys"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_transactions_job_id_jobs"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_transactions_user_id_users"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transactions")),
    )
    op.create_index(
        op.f("ix_transactions_credit_account_id"),
        "transactions",
        ["credit_account_id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_transactions_debit_account_id"), "transactions", ["debit_account_id"], unique=False
    )
    op.create_index(
        op.f("ix_transactions_idempotency_key"), "transactions", ["idempotency_key"], unique=False
    )
    op.create_index(op.f("ix_transactions_job_id"), "transactions", ["job_id"], unique=False)
    op.create_index(
        op.f("ix_transactions_qubic_tx_hash"), "transactions", ["qubic_tx_hash"], unique=False
    )
    op.create_index(
        op.f("ix_transactions_user_id_created_at"),
        "transactions",
        ["user_id", "created_at"],
        unique=False,
    )

    # The two system accounts every ledger needs: platform fees and the outside world (the
    # chain, the only account allowed below zero).
    accounts = sa.table(
        "accounts", sa.column("id", sa.String), sa.column("kind", sa.String), sa.column("balance")
    )
    op.bulk_insert(
        accounts,
        [
            {"id": "platform:fees", "kind": "PLATFORM", "balance": 0},
            {"id": "external:qubic", "kind": "EXTERNAL", "balance": 0},
        ],
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_transactions_user_id_created_at"), table_name="transactions")
    op.drop_index(op.f("ix_transactions_qubic_tx_hash"), table_name="transactions")
    op.drop_index(op.f("ix_transactions_job_id"), table_name="transactions")
    op.drop_index(op.f("ix_transactions_idempotency_key"), table_name="transactions")
    op.drop_index(op.f("ix_transactions_debit_account_id"), table_name="transactions")
    op.drop_index(op.f("ix_transactions_credit_account_id"), table_name="transactions")

    op.drop_table("transactions")
    op.drop_index(op.f("ix_accounts_user_id"), table_name="accounts")
    op.drop_index(op.f("ix_accounts_job_id"), table_name="accounts")

    op.drop_table("accounts")
    op.drop_index(op.f("ix_provider_metrics_provider_id_timestamp"), table_name="provider_metrics")

    op.drop_table("provider_metrics")
    op.drop_index(op.f("ix_jobs_user_id_created_at"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_status_created_at"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_provider_id_status"), table_name="jobs")

    op.drop_table("jobs")
    op.drop_index(op.f("ix_providers_user_id"), table_name="providers")
    op.drop_index(op.f("ix_providers_performance_tflops"), table_name="providers")
    op.drop_index(op.f("ix_providers_location"), table_name="providers")
    op.drop_index(
        op.f("ix_providers_is_online_is_available_price_per_hour"), table_name="providers"
    )
    op.drop_index(op.f("ix_providers_gpu_vram"), table_name="providers")
    op.drop_index(op.f("ix_providers_gpu_model"), table_name="providers")

    op.drop_table("providers")
    op.drop_table("users")
    op.drop_table("idempotency_keys")
