"""The local stack: the embedded Temporal dev server and PostgreSQL, `make dev`, and container healthchecks."""
