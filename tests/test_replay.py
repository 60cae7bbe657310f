"""Every workflow history replays deterministically with this code: the histories recorded by earlier
versions (tests/histories/, written by tests/record_histories.py) and every AgentRun, WebhookDelivery and
ScheduledRun this test session made.

A worker deploy replays the runs in flight with the new code, so a change to the workflow that would
break one of these goes behind `workflow.patched`.

The replays run in temporalio's sandbox (the Replayer's default), which refuses non-deterministic calls
(the clock, randomness, I/O). Keel's workers run their workflows outside it (keel/temporal.py), so this is
where such a call on any path the session took shows up; tests/test_workflow_determinism.py reads the code
for them too.
"""

from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from keel.contracts import WORKFLOW_TYPE
from keel.schedules import SCHEDULED_RUN_WORKFLOW
from keel.webhooks import WEBHOOK_WORKFLOW
from workflows.agent_run import AgentRun
from workflows.scheduled_run import ScheduledRun
from workflows.webhooks import WebhookDelivery

# Keel's workflows; the replayer picks each history's by its type.
WORKFLOWS = [AgentRun, WebhookDelivery, ScheduledRun]

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*/*.json"))


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: f"{p.parent.name}/{p.stem}")
async def test_a_history_recorded_by_an_earlier_version_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    # Recorded without the payload codec, so plain pydantic JSON.
    replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


async def test_every_run_of_this_session_replays(temporal: Client) -> None:
    # conftest.py runs this module last, so the runs of every other test module are in the server.
    replayer = Replayer(workflows=WORKFLOWS, data_converter=temporal.data_converter)
    types = " OR ".join(
        f'WorkflowType = "{t}"' for t in (WORKFLOW_TYPE, WEBHOOK_WORKFLOW, SCHEDULED_RUN_WORKFLOW)
    )
    histories = temporal.list_workflows(types).map_histories()
    replayed = 0
    async with replayer.workflow_replay_iterator(histories) as results:
        async for result in results:
            assert result.replay_failure is None, (result.history.workflow_id, result.replay_failure)
            replayed += 1
    assert replayed > 0
