-- Webhook deliveries (keel/webhooks.py): one row per (run, event, endpoint), keyed by the delivery's
-- webhook-id, written by the worker's deliver_webhook activity at each attempt. A redelivery sends the same
-- webhook-id again and updates the same row. `input` is the delivery workflow's input, to send it again.
CREATE TABLE webhook_deliveries (
    id               text        PRIMARY KEY,  -- the webhook-id header
    agent_run_id     text        NOT NULL,
    user_id          text,                     -- the run's user, for owner checks
    event_type       text        NOT NULL,     -- run.completed, run.waiting_for_approval, ...
    endpoint         text        NOT NULL,
    status           text        NOT NULL DEFAULT 'pending',  -- pending, delivered, failed, refused
    attempts         integer     NOT NULL DEFAULT 0,
    last_status_code integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    next_attempt_at  timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    input            jsonb       NOT NULL
);
CREATE INDEX webhook_deliveries_run ON webhook_deliveries (agent_run_id, created_at);
CREATE INDEX webhook_deliveries_status ON webhook_deliveries (status, created_at DESC);
