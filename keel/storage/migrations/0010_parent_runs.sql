-- A sub-agent's run (a child workflow, keel/agent.py Agent.as_tool) names the run that called it, so a run's
-- tree can be read from its records. NULL for every run that no other run started.
ALTER TABLE agent_runs ADD COLUMN parent_run_id text;
CREATE INDEX agent_runs_parent_run_id ON agent_runs (parent_run_id) WHERE parent_run_id IS NOT NULL;
