"""Initial schema: users, providers, jobs, the double-entry ledger, idempotency keys, metrics.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# The ledger's money-moving operations as PL/pgSQL functions: one round trip per operation
# on PostgreSQL. They follow the same steps as qubix_jupyter.db.ledger's Python path (used on
# SQLite), and the same property tests run against both.
LEDGER_FUNCTIONS = r"""
CREATE FUNCTION qubix_fail(p_code text, p_message text, p_details jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION USING ERRCODE = p_code, MESSAGE = p_message, DETAIL = p_details::text;
END $$;

CREATE FUNCTION qubix_claim(p_key text, p_operation text, p_hash text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
  prior idempotency_keys%ROWTYPE;
BEGIN
  -- The stored receipt of a request already made with this key, or NULL for a new request.
  SELECT * INTO prior FROM idempotency_keys WHERE key = p_key;
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  IF prior.operation <> p_operation OR prior.request_hash <> p_hash THEN
    PERFORM qubix_fail('QX005',
      format('idempotency key %L was already used for a different request', p_key),
      jsonb_build_object('key', p_key, 'operation', prior.operation));
  END IF;
  RETURN prior.response::jsonb || '{"replayed": true}'::jsonb;
END $$;

CREATE FUNCTION qubix_receipt(p_key text, p_operation text, p_hash text, p_amounts jsonb,
                              p_entries text[], p_job text, p_user text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
  r jsonb := jsonb_build_object(
    'operation', p_operation, 'idempotency_key', p_key, 'amounts', p_amounts,
    'entry_ids', to_jsonb(p_entries), 'job_id', p_job, 'user_id', p_user);
BEGIN
  -- The key is written once, with its receipt, as the operation's last step. A concurrent twin
  -- with the same key has been waiting on the same rows; whichever commits second finds the key
  -- taken here, is rolled back whole (QX007) and retried by the caller, which then replays.
  INSERT INTO idempotency_keys (key, operation, request_hash, response, created_at)
  VALUES (p_key, p_operation, p_hash, r::json, now())
  ON CONFLICT (key) DO NOTHING;
  IF NOT FOUND THEN
    PERFORM qubix_fail('QX007',
      format('idempotency key %L was used by a concurrent request; retry to replay it', p_key),
      jsonb_build_object('key', p_key));
  END IF;
  RETURN r || '{"replayed": false}'::jsonb;
END $$;

CREATE FUNCTION qubix_apply(p_key text, p_job text, p_tx_hash text, p_debits text[],
                            p_credits text[], p_amounts bigint[], p_types text[],
                            p_users text[]) RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
  d record;
  held bigint;
  ids text[];
BEGIN
  -- The net change of each account, applied in account-id order: every operation takes its row
  -- locks in that one order, so no two wait on each other in a cycle. The guards ride on the
  -- updates themselves: no row updated means the guard (or the account) failed.
  FOR d IN
    SELECT account, sum(delta)::bigint AS delta
    FROM (
      SELECT m.debit AS account, -m.amount AS delta
      FROM unnest(p_debits, p_amounts) AS m(debit, amount) WHERE m.amount > 0
      UNION ALL
      SELECT m.credit, m.amount
      FROM unnest(p_credits, p_amounts) AS m(credit, amount) WHERE m.amount > 0
    ) AS moves
    GROUP BY account ORDER BY account
  LOOP
    IF d.delta < 0 THEN
      UPDATE accounts SET balance = balance + d.delta
      WHERE id = d.account AND (kind = 'EXTERNAL' OR balance >= -d.delta);
    ELSE
      UPDATE accounts SET balance = balance + d.delta
      WHERE id = d.account AND balance <= 9223372036854775807 - d.delta;
    END IF;
    IF NOT FOUND THEN
      SELECT balance INTO held FROM accounts WHERE id = d.account;
      IF NOT FOUND THEN
        PERFORM qubix_fail('QX002', format('no ledger account %L', d.account),
                           jsonb_build_object('account', d.account));
      ELSIF d.delta < 0 THEN
        PERFORM qubix_fail('QX001',
          format('account %s holds %s QU, %s QU needed', d.account, held, -d.delta),
          jsonb_build_object('account', d.account, 'balance', held, 'needed', -d.delta));
      ELSE
        PERFORM qubix_fail('QX006',
          format('account %s would exceed the largest storable balance', d.account),
          jsonb_build_object('account', d.account, 'max', 9223372036854775807));
      END IF;
    END IF;
  END LOOP;
  WITH entries AS (
    INSERT INTO transactions (id, user_id, job_id, debit_account_id, credit_account_id, type,
                              amount, status, qubic_tx_hash, idempotency_key, created_at,
                              completed_at)
    SELECT gen_random_uuid()::text, m.who, p_job, m.debit, m.credit, m.kind, m.amount,
           'COMPLETED', p_tx_hash, p_key, now(), now()
    FROM unnest(p_debits, p_credits, p_amounts, p_types, p_users)
         WITH ORDINALITY AS m(debit, credit, amount, kind, who, n)
    WHERE m.amount > 0
    ORDER BY m.n
    RETURNING id
  )
  SELECT array_agg(id) INTO ids FROM entries;
  RETURN coalesce(ids, '{}');
END $$;

CREATE FUNCTION qubix_open_job(p_job text) RETURNS jobs
LANGUAGE plpgsql AS $$
DECLARE
  j jobs%ROWTYPE;
BEGIN
  -- Every operation on a job's escrow holds this row lock first, which is what lets the others
  -- read the escrow balance without locking the account row.
  SELECT * INTO j FROM jobs WHERE id = p_job FOR UPDATE;
  IF NOT FOUND THEN
    PERFORM qubix_fail('QX003', format('no job %L', p_job), jsonb_build_object('job_id', p_job));
  END IF;
  IF j.status IN ('COMPLETED', 'FAILED', 'CANCELLED') THEN
    PERFORM qubix_fail('QX004', format('job %s is %s; its escrow is settled', p_job, j.status),
                       jsonb_build_object('job_id', p_job, 'status', j.status));
  END IF;
  RETURN j;
END $$;

CREATE FUNCTION qubix_transfer(p_key text, p_hash text, p_operation text, p_user text,
                               p_amount bigint, p_tx_hash text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
  r jsonb := qubix_claim(p_key, p_operation, p_hash);
  wallet text := 'wallet:' || p_user;
  ids text[];
BEGIN
  IF r IS NOT NULL THEN
    RETURN r;
  END IF;
  IF p_operation = 'deposit' THEN
    ids := qubix_apply(p_key, NULL, p_tx_hash, ARRAY['external:qubic'], ARRAY[wallet],
                       ARRAY[p_amount], ARRAY['DEPOSIT'], ARRAY[p_user]);
  ELSE
    ids := qubix_apply(p_key, NULL, p_tx_hash, ARRAY[wallet], ARRAY['external:qubic'],
                       ARRAY[p_amount], ARRAY['WITHDRAWAL'], ARRAY[p_user]);
  END IF;
  RETURN qubix_receipt(p_key, p_operation, p_hash,
    jsonb_build_object('amount', p_amount,
                       'balance', (SELECT balance FROM accounts WHERE id = wallet)),
    ids, NULL, p_user);
END $$;

CREATE FUNCTION qubix_escrow(p_key text, p_hash text, p_operation text, p_job text,
                             p_amount bigint) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
  r jsonb := qubix_claim(p_key, p_operation, p_hash);
  j jobs%ROWTYPE;
  wallet text;
  escrow text := 'escrow:' || p_job;
  ids text[];
BEGIN
  IF r IS NOT NULL THEN
    RETURN r;
  END IF;
  j := qubix_open_job(p_job);
  wallet := 'wallet:' || j.user_id;
  IF p_operation = 'lock_escrow' THEN
    ids := qubix_apply(p_key, p_job, NULL, ARRAY[wallet], ARRAY[escrow], ARRAY[p_amount],
                       ARRAY['ESCROW_LOCK'], ARRAY[j.user_id]);
  ELSE
    ids := qubix_apply(p_key, p_job, NULL, ARRAY[escrow], ARRAY[wallet], ARRAY[p_amount],
                       ARRAY['ESCROW_RELEASE'], ARRAY[j.user_id]);
  END IF;
  RETURN qubix_receipt(p_key, p_operation, p_hash,
    jsonb_build_object('amount', p_amount,
                       'escrow', (SELECT balance FROM accounts WHERE id = escrow)),
    ids, p_job, j.user_id);
END $$;

CREATE FUNCTION qubix_settle(p_key text, p_hash text, p_operation text, p_job text,
                             p_seconds bigint, p_fee_bps integer, p_final_status text,
                             p_error text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
  r jsonb := qubix_claim(p_key, p_operation, p_hash);
  j jobs%ROWTYPE;
  owner text;
  escrow text := 'escrow:' || p_job;
  consumer text;
  held bigint;
  cost bigint := 0;
  fee bigint := 0;
  pay bigint := 0;
  ids text[];
BEGIN
  IF r IS NOT NULL THEN
    RETURN r;
  END IF;
  j := qubix_open_job(p_job);
  consumer := 'wallet:' || j.user_id;
  SELECT balance INTO held FROM accounts WHERE id = escrow;
  IF NOT FOUND THEN
    PERFORM qubix_fail('QX002', format('no ledger account %L', escrow),
                       jsonb_build_object('account', escrow));
  END IF;
  IF p_operation = 'refund' THEN
    ids := qubix_apply(p_key, p_job, NULL, ARRAY[escrow], ARRAY[consumer], ARRAY[held],
                       ARRAY['REFUND'], ARRAY[j.user_id]);
    r := jsonb_build_object('refund', held);
  ELSE
    IF j.provider_id IS NULL OR j.price_per_hour IS NULL THEN
      PERFORM qubix_fail('QX004',
        format('job %s has no provider and price yet; refund it instead', p_job),
        jsonb_build_object('job_id', p_job));
    END IF;
    SELECT user_id INTO owner FROM providers WHERE id = j.provider_id;
    -- ceil(price × seconds / 3600) in exact arithmetic, capped at the escrow; the fee rounds
    -- down so rounding favours the provider (the same rule as market.money.split_charge).
    cost := least(ceil(j.price_per_hour::numeric * p_seconds / 3600), held)::bigint;
    fee := floor(cost::numeric * p_fee_bps / 10000)::bigint;
    pay := cost - fee;
    ids := qubix_apply(p_key, p_job, NULL,
      ARRAY[escrow, escrow, escrow],
      ARRAY['wallet:' || owner, 'platform:fees', consumer],
      ARRAY[pay, fee, held - cost],
      ARRAY['EARNING', 'FEE', 'ESCROW_RELEASE'],
      ARRAY[owner, NULL, j.user_id]);
    r := jsonb_build_object('cost', cost, 'provider', pay, 'fee', fee, 'refund', held - cost);
  END IF;
  UPDATE jobs SET status = p_final_status, actual_cost = cost, completed_at = now(),
                  error = coalesce(p_error, error)
  WHERE id = p_job;
  IF j.provider_id IS NOT NULL THEN
    UPDATE providers SET total_jobs = total_jobs + 1, total_earnings = total_earnings + pay
    WHERE id = j.provider_id;
  END IF;
  RETURN qubix_receipt(p_key, p_operation, p_hash, r, ids, p_job, j.user_id);
END $$;
"""
DROP_FUNCTIONS = [
    "qubix_settle(text, text, text, text, bigint, integer, text, text)",
    "qubix_escrow(text, text, text, text, bigint)",
    "qubix_transfer(text, text, text, text, bigint, text)",
    "qubix_open_job(text)",
    "qubix_apply(text, text, text, text[], text[], bigint[], text[], text[])",
    "qubix_receipt(text, text, text, jsonb, text[], text, text)",
    "qubix_claim(text, text, text)",
    "qubix_fail(text, text, jsonb)",
]


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
            deferrable=True,
            initially="DEFERRED",
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
    op.create_index(op.f("ix_transactions_job_id"), "transactions", ["job_id"], unique=False)
    op.create_index(
        op.f("ix_transactions_qubic_tx_hash"),
        "transactions",
        ["qubic_tx_hash"],
        unique=False,
        postgresql_where=sa.text("qubic_tx_hash IS NOT NULL"),
        sqlite_where=sa.text("qubic_tx_hash IS NOT NULL"),
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
    if op.get_bind().dialect.name == "postgresql":
        op.execute(LEDGER_FUNCTIONS)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for signature in DROP_FUNCTIONS:
            op.execute(f"DROP FUNCTION {signature}")
    op.drop_index(op.f("ix_transactions_user_id_created_at"), table_name="transactions")
    op.drop_index(op.f("ix_transactions_qubic_tx_hash"), table_name="transactions")
    op.drop_index(op.f("ix_transactions_job_id"), table_name="transactions")

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
