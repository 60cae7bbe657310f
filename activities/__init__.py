"""Every side effect of an agent run: model calls, tool runs, storage."""
