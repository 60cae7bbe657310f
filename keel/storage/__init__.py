"""Where Keel keeps what it knows in PostgreSQL: migrations, the conversation store, run records, live deltas, and the reconciler that keeps records true to Temporal."""
