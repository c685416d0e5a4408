"""A job's create and its end, each one PL/pgSQL call on PostgreSQL.

``qubix_create_job`` inserts a job with its escrow account, locks its escrow from the consumer's
wallet, and gives it the best free matching provider (the escrow above that provider's price
back to the wallet): what ``JobService.create`` did in a dozen statements, in one. The order of
the offers is ``market.matching.preference``: cheapest, then the highest measured performance
(unmeasured last), then never assigned, then least recently assigned, then id (byte order).

``qubix_end_job`` settles a job through ``qubix_settle`` and, in the same call, stores its result
and frees its provider, so the end, the money, the result and the free provider commit together.

Both run the ledger's own functions for the money, so their rules, receipts and idempotency keys
are the ledger's. SQLite runs the same steps in Python (``JobService``); the tests run both.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

FUNCTIONS = r"""
CREATE FUNCTION qubix_create_job(
    p_job text, p_user text, p_model_type text, p_seconds integer, p_max_price bigint,
    p_input json, p_constraints json, p_escrow bigint, p_lock_key text, p_lock_hash text,
    p_models text[], p_min_vram double precision, p_release_key text,
    p_created timestamptz, p_now timestamptz) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
  j jobs%ROWTYPE;
  offer providers%ROWTYPE;
  fresh providers%ROWTYPE;
  taken providers%ROWTYPE;
  receipt jsonb;
  held bigint;
  cost bigint;
  excess bigint;
  locked bigint := 0;
  released bigint := 0;
BEGIN
  INSERT INTO jobs (id, user_id, model_type, compute_seconds, input_data, constraints, max_price,
                    status, progress, reassignments, estimated_cost, created_at)
  VALUES (p_job, p_user, p_model_type, p_seconds, p_input, p_constraints, p_max_price,
          'PENDING', 0, 0, p_escrow, p_created)
  ON CONFLICT (id) DO NOTHING;
  IF NOT FOUND THEN
    -- A retried create: the job as it stands (the caller reads it).
    SELECT * INTO j FROM jobs WHERE id = p_job;
    IF j.status <> 'PENDING' THEN
      RETURN jsonb_build_object('fresh', false);
    END IF;
  ELSE
    INSERT INTO accounts (id, kind, job_id, balance, created_at)
    VALUES ('escrow:' || p_job, 'ESCROW', p_job, 0, p_created);
  END IF;
  IF p_escrow > 0 THEN
    receipt := qubix_escrow(p_lock_key, p_lock_hash, 'lock_escrow', p_job, p_escrow);
    IF NOT (receipt->>'replayed')::boolean THEN
      locked := p_escrow;
    END IF;
  END IF;
  SELECT * INTO j FROM jobs WHERE id = p_job FOR UPDATE;
  SELECT balance INTO held FROM accounts WHERE id = 'escrow:' || p_job;
  IF held >= j.estimated_cost THEN
    -- The cheapest offers that pass the filter, in the matcher's order; each is locked and
    -- looked at again (free, matching, no open job) before it is taken, as the Python path does.
    FOR offer IN
      SELECT * FROM providers
      WHERE is_listed AND is_online AND is_available AND current_job_id IS NULL
        AND price_per_hour <= p_max_price
        AND (p_min_vram IS NULL OR gpu_vram >= p_min_vram)
        AND (p_models IS NULL OR lower(gpu_model COLLATE "C") = ANY (p_models))
        AND NOT EXISTS (SELECT 1 FROM jobs o WHERE o.provider_id = providers.id
                          AND o.status IN ('ASSIGNED', 'RUNNING'))
      ORDER BY price_per_hour, performance_tflops IS NULL, performance_tflops DESC,
               last_assigned_at IS NOT NULL, last_assigned_at, id COLLATE "C"
      LIMIT 200
    LOOP
      SELECT * INTO fresh FROM providers WHERE id = offer.id FOR UPDATE;
      CONTINUE WHEN NOT FOUND OR fresh.current_job_id IS NOT NULL
        OR NOT (fresh.is_listed AND fresh.is_online AND fresh.is_available)
        OR fresh.price_per_hour > p_max_price
        OR (p_min_vram IS NOT NULL AND NOT fresh.gpu_vram >= p_min_vram)
        OR (p_models IS NOT NULL AND NOT lower(fresh.gpu_model COLLATE "C") = ANY (p_models))
        OR EXISTS (SELECT 1 FROM jobs o WHERE o.provider_id = fresh.id
                     AND o.status IN ('ASSIGNED', 'RUNNING'));
      taken := fresh;
      EXIT;
    END LOOP;
  END IF;
  IF taken.id IS NOT NULL THEN
    cost := ceil(taken.price_per_hour::numeric * j.compute_seconds / 3600)::bigint;
    UPDATE jobs SET status = 'ASSIGNED', provider_id = taken.id,
                    price_per_hour = taken.price_per_hour, estimated_cost = cost,
                    assigned_at = p_now
    WHERE id = p_job;
    UPDATE providers SET is_available = false, current_job_id = p_job, last_assigned_at = p_now
    WHERE id = taken.id;
    excess := greatest(held - cost, 0);
    IF excess > 0 THEN
      -- The request hash is the ledger's (ledger.request_hash): the same JSON, sorted keys.
      receipt := qubix_escrow(p_release_key,
        encode(sha256(convert_to(
          format('{"amount": %s, "job_id": %s, "operation": "release_escrow"}',
                 excess, to_json(p_job)::text), 'UTF8')), 'hex'),
        'release_escrow', p_job, excess);
      IF NOT (receipt->>'replayed')::boolean THEN
        released := excess;
      END IF;
    END IF;
  END IF;
  RETURN jsonb_build_object('fresh', true, 'locked', locked, 'released', released,
                            'provider', taken.id);
END $$;

CREATE FUNCTION qubix_end_job(p_key text, p_hash text, p_operation text, p_job text,
                              p_seconds bigint, p_fee_bps integer, p_final_status text,
                              p_error text, p_keep_result boolean, p_result json) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
  r jsonb := qubix_settle(p_key, p_hash, p_operation, p_job, p_seconds, p_fee_bps,
                          p_final_status, p_error);
  freed text;
BEGIN
  IF (r->>'replayed')::boolean THEN
    RETURN r;
  END IF;
  IF p_keep_result THEN
    UPDATE jobs SET result = p_result WHERE id = p_job;
  END IF;
  UPDATE providers SET current_job_id = NULL, is_available = true
  WHERE current_job_id = p_job
  RETURNING id INTO freed;
  RETURN r || jsonb_build_object('freed', freed);
END $$;
"""
DROP_FUNCTIONS = [
    "qubix_end_job(text, text, text, text, bigint, integer, text, text, boolean, json)",
    "qubix_create_job(text, text, text, integer, bigint, json, json, bigint, text, text, text[], "
    "double precision, text, timestamptz, timestamptz)",
]


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FUNCTIONS)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for signature in DROP_FUNCTIONS:
            op.execute(f"DROP FUNCTION IF EXISTS {signature}")
