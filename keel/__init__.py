"""Keel: durable AI agents on Temporal.

`keel.contracts` holds the types shared by workflows, activities and the gateway; `keel.settings` the
configuration; `keel.purposes` the agent profiles. Nothing here imports `workflows`, `activities` or `api`.
"""
