"""Every AgentRun history replays deterministically with this code: the histories recorded by earlier
versions (tests/histories/, written by tests/record_histories.py) and every run this test session made.

A worker deploy replays the runs in flight with the new code, so a change to the workflow that would
break one of these goes behind `workflow.patched`.
"""

from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from keel.contracts import WORKFLOW_TYPE
from workflows.agent_run import AgentRun

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*/*.json"))


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: f"{p.parent.name}/{p.stem}")
async def test_a_history_recorded_by_an_earlier_version_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    # Recorded without the payload codec, so plain pydantic JSON.
    replayer = Replayer(workflows=[AgentRun], data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


async def test_every_run_of_this_session_replays(temporal: Client) -> None:
    # conftest.py runs this module last, so the runs of every other test module are in the server.
    replayer = Replayer(workflows=[AgentRun], data_converter=temporal.data_converter)
    histories = temporal.list_workflows(f'WorkflowType = "{WORKFLOW_TYPE}"').map_histories()
    replayed = 0
    async with replayer.workflow_replay_iterator(histories) as results:
        async for result in results:
            assert result.replay_failure is None, (result.history.workflow_id, result.replay_failure)
            replayed += 1
    assert replayed > 0
