-- Run records: what an operator reads when something went wrong. One row per run, one per LLM call
-- attempt, one per tool call attempt; all joined by agent_run_id (= the Temporal workflow id).
--
-- Every write is an upsert that merges: a column is only overwritten by a value that is known, and a
-- status only moves forward (see keel/storage/run_records.py), so writes may arrive twice or out of order (a retried
-- activity, the outbox replaying after a PostgreSQL outage) and the row still ends up right.
CREATE TABLE agent_runs (
    id                text        PRIMARY KEY,  -- agent_run_id
    temporal_run_id   text,
    chat_id           text,
    user_id           text,
    purpose_slug      text        NOT NULL DEFAULT '',
    status            text        NOT NULL DEFAULT 'running',
    -- The workflow's event count when `status` was written: an older status never overwrites a newer one.
    status_version    integer     NOT NULL DEFAULT 0,
    step_count        integer     NOT NULL DEFAULT 0,
    model             text,       -- the route (or fallback chain) the run asked for
    model_route       text,       -- the route that answered its last LLM call
    started_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    error_type        text,
    error_message     text,
    detail            text,       -- why a run ended when it is not a plain completion
    input_summary     text,
    output_summary    text,
    prompt_tokens     bigint,
    completion_tokens bigint,
    cost_usd          double precision,
    unpriced_calls    integer,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX agent_runs_started ON agent_runs (started_at DESC);
CREATE INDEX agent_runs_status ON agent_runs (status, started_at DESC);
CREATE INDEX agent_runs_purpose ON agent_runs (purpose_slug, started_at DESC);
CREATE INDEX agent_runs_user ON agent_runs (user_id, started_at DESC);
CREATE INDEX agent_runs_chat ON agent_runs (chat_id, started_at DESC);

-- One row per call_llm attempt that reached a provider. `seq` is where the reply is stored in
-- run_messages: it names the LLM call within its run, as the activity's input does.
CREATE TABLE llm_calls (
    id                     bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_run_id           text        NOT NULL REFERENCES agent_runs (id) ON DELETE CASCADE,
    seq                    integer     NOT NULL,
    attempt                integer     NOT NULL,
    step                   integer     NOT NULL,
    activity_id            text,
    provider               text,
    model                  text,
    route                  text,
    status                 text        NOT NULL,  -- running, ok, error, cancelled
    started_at             timestamptz,
    finished_at            timestamptz,
    latency_ms             integer,
    time_to_first_token_ms integer,
    prompt_tokens          integer,
    completion_tokens      integer,
    cost_usd               double precision,
    finish_reason          text,
    request_id             text,
    error_type             text,
    error_message          text,
    updated_at             timestamptz NOT NULL DEFAULT now(),
    UNIQUE (agent_run_id, seq, attempt)
);

-- One row per tool call attempt. `seq` is where the tool's result is stored in run_messages. A call that
-- waits for approval has its attempt-1 row from the moment it is requested; calls the workflow answers
-- itself (denied, not offered, over their limit, ask_user, client-side tools) have one row, attempt 1.
CREATE TABLE tool_runs (
    id                    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_run_id          text        NOT NULL REFERENCES agent_runs (id) ON DELETE CASCADE,
    seq                   integer     NOT NULL,
    attempt               integer     NOT NULL,
    step                  integer     NOT NULL,
    activity_id           text,
    tool_call_id          text        NOT NULL,
    tool_name             text        NOT NULL,
    -- waiting_for_approval, waiting_for_input, waiting_for_tool_result, approved, running,
    -- ok, error, denied, expired, not_run, cancelled
    status                text        NOT NULL,
    started_at            timestamptz,
    finished_at           timestamptz,
    latency_ms            integer,
    error_message         text,
    params_snapshot       jsonb,
    result_snapshot       jsonb,
    approval              text,       -- approved, denied, expired (NULL: no approval needed)
    approver              text,
    approval_reason       text,
    approval_requested_at timestamptz,
    approval_decided_at   timestamptz,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    UNIQUE (agent_run_id, seq, attempt)
);
CREATE INDEX tool_runs_waiting ON tool_runs (status) WHERE status LIKE 'waiting%';
