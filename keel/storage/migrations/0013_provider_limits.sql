-- Provider limits (keel/storage/provider_limits.py): every worker accounts its LLM calls here, so the limits
-- of KEEL_PROVIDER_LIMITS hold for all of them together.
-- One row per granted call: its time (when it was granted, moved to when the request left), its tokens
-- (the estimate, replaced by the reported usage when the call ends) and its lease on a concurrency slot,
-- which ends when the call releases it or by itself at expires_at (a worker that died mid-call).
-- Rows older than the one-minute window and no longer leased are deleted as new calls are granted.
CREATE TABLE provider_calls (
    lease_id    text        PRIMARY KEY,
    pattern     text        NOT NULL,
    priority    text        NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    tokens      integer     NOT NULL DEFAULT 0,
    expires_at  timestamptz NOT NULL,
    released_at timestamptz
);
CREATE INDEX provider_calls_window ON provider_calls (pattern, at);
-- Per pattern: `cooldown_until`, set by a 429 or a provider's rate-limit headers (no call of the pattern is
-- granted before it, whoever asks), and `interactive_waiting_until`, kept ahead by interactive callers
-- that wait (batch callers are not granted meanwhile, so a freed slot goes to the interactive caller).
CREATE TABLE provider_limit_state (
    pattern                   text        PRIMARY KEY,
    cooldown_until            timestamptz,
    cooldown_reason           text        NOT NULL DEFAULT '',
    interactive_waiting_until timestamptz,
    updated_at                timestamptz NOT NULL DEFAULT now()
);
