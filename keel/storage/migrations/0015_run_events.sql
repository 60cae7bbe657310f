-- The run events a model call running as a local activity announced with its first deltas
-- (LlmStepInput.events, keel/storage/deltas.py): every event of the run up to the step the call answers,
-- exactly as the workflow's `events` query serves them. The workflow answers that query only between
-- workflow tasks, and such a call runs inside one: a viewer that joins while the model answers reads the
-- run's events here instead. Pruned with run_deltas; a finished run's events are in its history.
CREATE TABLE run_events (
    agent_run_id text        NOT NULL,
    seq          integer     NOT NULL,
    body         text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (agent_run_id, seq)
);
CREATE INDEX run_events_created_at ON run_events (created_at);
