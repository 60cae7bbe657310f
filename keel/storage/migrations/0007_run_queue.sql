-- Double texting (enqueue): the run a queued run waits for. The reconciler (keel/storage/reconciler.py) reads it to
-- let the runs queued behind a run that closed outside its loop (terminated, timed out) go on.
ALTER TABLE agent_runs ADD COLUMN queued_behind text;
CREATE INDEX agent_runs_queued_behind ON agent_runs (queued_behind) WHERE queued_behind IS NOT NULL;
-- The reconciler's other question: runs whose records say they are not over.
CREATE INDEX agent_runs_unfinished ON agent_runs (started_at)
    WHERE status IN ('running', 'waiting_for_approval', 'waiting_for_input', 'waiting_for_tool_result');
