-- Conversation messages and tool results of every run, kept out of Temporal history.
-- seq orders a run's conversation: the input first, then each reply and tool result as the run goes.
CREATE TABLE run_messages (
    agent_run_id text        NOT NULL,
    seq          integer     NOT NULL,
    body         jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_run_id, seq)
);
