-- Which runs a chat started, newest last: the gateway finds a chat's active run here.
CREATE TABLE chat_runs (
    chat_id      text        NOT NULL,
    agent_run_id text        NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chat_id, agent_run_id)
);
CREATE INDEX chat_runs_latest ON chat_runs (chat_id, started_at DESC);
