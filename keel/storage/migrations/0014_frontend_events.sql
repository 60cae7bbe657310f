-- Frontend telemetry (POST /api/telemetry, api/telemetry.py): what a person saw of a run in the browser —
-- time to first token, stalls, reconnects and resumes, errors shown, time to an approval decision — one row
-- per event, as the client reported it, for the run viewer. Only the run's owner (or an admin) can report
-- on a run, and rows are read only with the run's timeline.
CREATE TABLE frontend_events (
    id           bigserial   PRIMARY KEY,
    agent_run_id text        NOT NULL,
    user_id      text,                    -- who reported it (null under KEEL_AUTH=none)
    kind         text        NOT NULL,    -- ttft, stall, reconnect, error, decision
    value_ms     double precision,        -- the duration measured, when the kind has one
    detail       text,                    -- what the client said about it (an error's text, a decision)
    client       text,                    -- which frontend: chat-page, nextjs, or what it called itself
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX frontend_events_run ON frontend_events (agent_run_id, received_at);
