-- MCP servers' tools as a worker last listed them (activities/mcp_client.py), one row per server of the app:
-- GET /api/purposes shows each agent's servers and their tools from here. `error` says why the last listing
-- failed (its tools are then those of the last listing that worked).
CREATE TABLE mcp_listings (
    server text PRIMARY KEY,
    transport text NOT NULL,
    tools jsonb NOT NULL DEFAULT '[]'::jsonb,
    error text,
    listed_at timestamptz NOT NULL DEFAULT now()
);
