-- Runs started server to server (POST /api/runs). A caller's own metadata about a run, shown in its state
-- and its webhooks; and the Idempotency-Key of the request that started it: per user, a key names one
-- run and one request body (its SHA-256) until it expires (KEEL_IDEMPOTENCY_TTL_HOURS), on every gateway.
ALTER TABLE agent_runs ADD COLUMN metadata jsonb;

CREATE TABLE idempotency_keys (
    -- The authenticated user's id ('' when the gateway runs without authentication).
    user_key      text        NOT NULL,
    key           text        NOT NULL,
    body_sha256   text        NOT NULL,
    agent_run_id  text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_key, key)
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
