"""The real AI SDK client against the gateway: `ai@5`, `ai@6` and `ai@7` from npm, on Node (tests/node/).

`make test` installs them (npm ci in tests/node). Without Node or the packages these tests are skipped
with the reason, except under CI (CI=true), where a skip would hide a broken setup and fails instead.
ai@5 predates tool approvals (it rejects the `tool-approval-request` chunk), so the approval round trip
is an ai@6 and ai@7 scenario; for ai@5 the test pins down that limitation. ai@7 declares Node 22 or later
but installs and runs on this machine's Node 20; it speaks the same protocol (header `v1`).
"""

import asyncio
import json
import os
from typing import Any

import pytest

from activities.models.scripted import DISCLAIMER
from keel.storage.store import RunStore
from tests.ai_sdk import NODE_DIR, require_ai_sdk
from tests.conftest import Keel

SCENARIOS = {
    "ai5": ["plain", "tools", "approval-unsupported", "resume"],
    "ai6": ["plain", "tools", "approval", "resume"],
    "ai7": ["plain", "tools", "approval", "resume"],
}


@pytest.fixture(scope="module")
async def results(keel: Keel, gateways: dict[str, str]) -> dict[str, dict[str, Any]]:
    require_ai_sdk()
    env = {**os.environ, "KEEL_URL": keel.gateway_url, "KEEL_SLOW_URL": gateways["slow"]}

    async def run(pkg: str) -> dict[str, Any]:
        node = await asyncio.create_subprocess_exec(
            "node",
            "client.mjs",
            pkg,
            *SCENARIOS[pkg],
            cwd=NODE_DIR,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(node.communicate(), timeout=60)
        assert node.returncode == 0, err.decode()
        return json.loads(out)

    both = await asyncio.gather(*(run(pkg) for pkg in SCENARIOS))
    return dict(zip(SCENARIOS, both, strict=True))


def scenario(results: dict[str, dict[str, Any]], pkg: str, name: str) -> dict[str, Any]:
    result = results[pkg][name]
    assert "error" not in result or name == "approval-unsupported", result.get("error")
    return result


def texts(message: dict[str, Any]) -> str:
    return "".join(p["text"] for p in message["parts"] if p["type"] == "text")


def run_status(message: dict[str, Any]) -> str:
    return next(p for p in message["parts"] if p["type"] == "data-run")["data"]["status"]


async def final_reply(store: RunStore, agent_run_id: str) -> str:
    conversation = await store.conversation(agent_run_id, 1000)
    return next(m.content for m in reversed(conversation) if m.role == "assistant" and m.content)


@pytest.mark.parametrize("pkg", SCENARIOS)
async def test_a_plain_answer(pkg: str, results: dict[str, dict[str, Any]], store: RunStore) -> None:
    message = scenario(results, pkg, "plain")["message"]

    assert message["id"].startswith("run-") and message["role"] == "assistant"
    assert [p["type"] for p in message["parts"]] == ["data-run", "step-start", "text"]
    assert texts(message) == await final_reply(store, message["id"])
    assert texts(message).startswith(DISCLAIMER) and "hello there" in texts(message)
    assert run_status(message) == "completed"


@pytest.mark.parametrize("pkg", SCENARIOS)
async def test_tool_calls(pkg: str, results: dict[str, dict[str, Any]]) -> None:
    message = scenario(results, pkg, "tools")["message"]

    [tool] = [p for p in message["parts"] if p["type"] == "tool-calculate"]
    assert tool["state"] == "output-available"
    assert tool["input"] == {"expression": "(2 + 3) * 4"} and tool["output"]["value"] == 20
    assert [p["type"] for p in message["parts"]].count("step-start") == 2
    assert "calculate returned" in texts(message)


@pytest.mark.parametrize("pkg", ["ai6", "ai7"])
async def test_the_approval_round_trip(pkg: str, results: dict[str, dict[str, Any]], store: RunStore) -> None:
    seen = scenario(results, pkg, "approval")
    asked, messages = seen["asked"], seen["messages"]

    request = next(p for p in asked["parts"] if p["type"] == "tool-publish_package")
    assert request["state"] == "approval-requested" and request["approval"]["id"] == request["toolCallId"]
    assert run_status(asked) == "waiting_for_approval"
    # The resubmission continued the same run, in the same assistant message.
    assert [m["role"] for m in messages] == ["user", "assistant"]
    final = messages[-1]
    assert final["id"] == asked["id"]
    published = next(p for p in final["parts"] if p["type"] == "tool-publish_package")
    assert published["state"] == "output-available" and published["output"]["slug"] == "learn-closures"
    assert run_status(final) == "completed"
    assert "publish_package returned" in texts(final)
    assert texts(final).endswith(await final_reply(store, final["id"]))


def test_ai5_does_not_know_tool_approvals(results: dict[str, dict[str, Any]]) -> None:
    error = results["ai5"]["approval-unsupported"]["error"]
    assert error and "tool-approval-request" in error


@pytest.mark.parametrize("pkg", SCENARIOS)
async def test_a_stream_cut_mid_answer_resumes_complete(
    pkg: str, results: dict[str, dict[str, Any]], store: RunStore
) -> None:
    seen = scenario(results, pkg, "resume")
    message = seen["message"]

    assert 20 <= len(seen["partial"]) < len(texts(message)), "the first stream was cut mid-answer"
    # The resumed stream is the whole answer, from its start: nothing missing, nothing twice.
    assert texts(message).startswith(seen["partial"])
    assert texts(message) == await final_reply(store, message["id"])
    assert [p["type"] for p in message["parts"]] == ["data-run", "step-start", "text"]
    assert run_status(message) == "completed"
    assert not seen["resumedAfterFinish"] and not seen["resumedUnknown"], "204 when nothing is active"
