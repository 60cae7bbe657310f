-- Live token deltas of every LLM call, as they were streamed (keel/storage/deltas.py): the log a client that
-- reconnects replays. (step, attempt, n) orders a run's deltas; one row is one published batch of text.
-- A row with empty text opens a retried attempt. The final reply is in run_messages, so these rows may be
-- deleted once a run has finished: a replay then sends each reply in one piece.
CREATE TABLE run_deltas (
    agent_run_id text        NOT NULL,
    step         integer     NOT NULL,
    attempt      integer     NOT NULL,
    n            integer     NOT NULL,
    reply_seq    integer     NOT NULL,
    text         text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (agent_run_id, step, attempt, n)
);
