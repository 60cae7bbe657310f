-- Authentication and isolation (api/auth.py). API keys are stored hashed: `prefix` finds the row, the
-- SHA-256 of the whole key proves it; the key itself is shown once, when it is issued (`keel api-key`).
CREATE TABLE api_keys (
    prefix       text        PRIMARY KEY,
    key_sha256   text        NOT NULL,
    user_id      text        NOT NULL,
    admin        boolean     NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    last_used_at timestamptz
);
-- A chat belongs to the user who started it.
ALTER TABLE chat_runs ADD COLUMN user_id text;
