-- Structured output (Agent(output_type=...)): a run's validated final answer, the object itself. Written by
-- the run's final record from the reply that holds it (run_messages.body->>'output_json'); NULL for runs without
-- an output type and for runs whose answer never validated.
ALTER TABLE agent_runs ADD COLUMN output jsonb;
