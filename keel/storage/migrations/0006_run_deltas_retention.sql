-- Deltas of finished runs are pruned after KEEL_DELTA_RETENTION_HOURS (keel/storage/deltas.py, prune_deltas):
-- the pruning pass finds old rows by age, so it reads only what it deletes.
CREATE INDEX run_deltas_created_at ON run_deltas (created_at);
