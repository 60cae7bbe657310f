"""The gateway's HTTP answers that are not run contracts, typed in one place: the gateway (api/) answers
with them and Keel's Python client (keel/client.py) reads them, so the two cannot drift. A run's state,
approval records and the like are the contracts' own models (keel/contracts.py)."""

from pydantic import BaseModel

from keel.contracts import RunStatus


class RunStarted(BaseModel):
    """`POST /api/runs` (202): the run's id, and its status (a repeated request's run may be further on)."""

    agent_run_id: str
    status: RunStatus


class Accepted(BaseModel):
    """A decision, answer, result or cancel the run (or the run below it that waited for it) took."""

    agent_run_id: str
    status: str
