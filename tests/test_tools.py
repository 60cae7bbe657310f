"""Tools are typed functions: their schema comes from the signature and bad arguments become ToolErrors."""

import asyncio
import json
from pathlib import Path

import pytest
from keel_examples.packages import LEDGER, PackageRegistry

from activities.agent_activities import AgentActivities
from keel import Agent
from keel.contracts import ToolCall, ToolPolicy
from keel.tools import ToolContext, ToolError
from tests.conftest import EXAMPLES


def ctx(tmp_path: Path, idempotency_key: str = "run-test/tool-3") -> ToolContext:
    return ToolContext(
        agent_run_id="run-test", tool_call_id="call_1", data_dir=tmp_path, idempotency_key=idempotency_key
    )


def test_every_agent_offers_its_tools_and_ask_user() -> None:
    for agent in EXAMPLES.agents.values():
        transfers = [f"transfer_to_{a.name}" for a in agent.handoffs if isinstance(a, Agent)]
        assert agent.spec("scripted").tools == [*(t.name for t in agent.tools), "ask_user", *transfers], (
            agent.name
        )
        assert all(EXAMPLES.tools[t.name] is t for t in agent.tools)


def test_schema_comes_from_the_signature() -> None:
    spec = EXAMPLES.tools["plan_syllabus"].spec()
    assert spec.description.startswith("Plan a lesson")
    assert spec.parameters["required"] == ["topic"]
    assert spec.parameters["properties"]["sections"] == {
        "default": 4,
        "description": "How many sections",
        "maximum": 8,
        "minimum": 2,
        "title": "Sections",
        "type": "integer",
    }
    # The context parameter is Keel's, not the model's.
    assert "ctx" not in EXAMPLES.tools["publish_package"].spec().parameters["properties"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "topic: Field required"),
        ({"topic": "x", "sections": 99}, "sections: Input should be less than or equal to 8"),
        ({"topic": "x", "colour": "red"}, "colour: Extra inputs are not permitted"),
    ],
)
async def test_bad_arguments_are_tool_errors(tmp_path: Path, arguments: dict, message: str) -> None:
    with pytest.raises(ToolError, match=message):
        await EXAMPLES.tools["plan_syllabus"].invoke(arguments, ctx(tmp_path))


@pytest.mark.parametrize(
    ("expression", "value"), [("(2 + 3) * 4", 20), ("2 ^ 10", 1024), ("-7 // 2", -4), ("1.5 * 2", 3.0)]
)
async def test_calculate(tmp_path: Path, expression: str, value: float) -> None:
    result = await EXAMPLES.tools["calculate"].invoke({"expression": expression}, ctx(tmp_path))
    assert result["value"] == value


@pytest.mark.parametrize(
    "expression", ["__import__('os').system('true')", "(1).__class__", "2 ** 1000", "abc", "x" * 201]
)
async def test_calculate_runs_no_code(tmp_path: Path, expression: str) -> None:
    with pytest.raises(ToolError):
        await EXAMPLES.tools["calculate"].invoke({"expression": expression}, ctx(tmp_path))


async def test_current_time_rejects_unknown_zones(tmp_path: Path) -> None:
    assert (await EXAMPLES.tools["current_time"].invoke({"timezone": "Europe/Madrid"}, ctx(tmp_path)))["iso"]
    with pytest.raises(ToolError, match="unknown time zone"):
        await EXAMPLES.tools["current_time"].invoke({"timezone": "Mars/Olympus"}, ctx(tmp_path))


async def test_a_retried_publish_publishes_once(tmp_path: Path) -> None:
    publish = EXAMPLES.tools["publish_package"]
    lesson = {"title": "Learn X", "markdown": "# X\n"}
    first = await publish.invoke(lesson, ctx(tmp_path))
    # The same call again (a retry, or a re-execution after a crash) carries the same key.
    again = await publish.invoke(lesson, ctx(tmp_path))
    assert again == first
    registry = PackageRegistry(tmp_path / "packages")
    assert [p["result"]["version"] for p in registry.publications()] == [1]
    assert sorted(p.name for p in Path(first["path"]).iterdir()) == ["README.md", "learn.json"]
    # Another call (another key) is a new publication: version 2 of the same package.
    other = await publish.invoke(lesson, ctx(tmp_path, idempotency_key="run-other/tool-3"))
    assert (other["slug"], other["version"]) == ("learn-x", 2)
    assert json.loads((tmp_path / "packages" / "learn-x" / "learn.json").read_text())["version"] == 2


async def test_concurrent_executions_of_one_call_publish_once(tmp_path: Path) -> None:
    # A retry may race an execution whose worker was presumed dead: the registry lets one of them publish.
    publish = EXAMPLES.tools["publish_package"]
    lesson = {"title": "Learn Y", "markdown": "# Y\n"}
    results = await asyncio.gather(*(publish.invoke(lesson, ctx(tmp_path)) for _ in range(8)))
    assert all(r == results[0] for r in results)
    assert len(PackageRegistry(tmp_path / "packages").publications()) == 1


def test_a_ledger_line_cut_short_by_a_crash_is_not_a_publication(tmp_path: Path) -> None:
    registry = PackageRegistry(tmp_path)
    registry.publish("Learn Z", "# Z\n", idempotency_key="k1", agent_run_id="run-1")
    with (tmp_path / LEDGER).open("a") as ledger:
        ledger.write('{"idempotency_key": "k2", "result": {"slu')  # the crash
    # The interrupted call runs again, and its publication commits on a line of its own.
    result = registry.publish("Learn Z", "# Z\n", idempotency_key="k2", agent_run_id="run-2")
    assert result["version"] == 2
    assert [p["idempotency_key"] for p in registry.publications()] == ["k1", "k2"]


def _policy(call: ToolCall, server_tools: set[str], client_tools: set[str]) -> ToolPolicy:
    activities = AgentActivities(store=None, data_dir=Path("."), app=EXAMPLES)  # type: ignore[arg-type]
    return activities._policy(call, server_tools, client_tools)


def test_a_tool_the_run_does_not_offer_never_runs() -> None:
    # A model may name any registered tool (json mode makes it easy): outside the run's tools it gets an
    # error result instead of running, so publish_package can't slip past its approval under `assistant`.
    call = ToolCall(id="call_1", name="publish_package", arguments={"title": "x", "markdown": "y"})
    assert _policy(call, server_tools={"calculate"}, client_tools=set()).handled_by == "nobody"
    assert _policy(call, server_tools={"publish_package"}, client_tools=set()).needs_approval


def test_a_broken_call_skips_its_approval_predicate() -> None:
    call = ToolCall(id="call_1", name="wait", arguments={}, arguments_error="not JSON")
    assert _policy(call, server_tools={"wait"}, client_tools=set()) == ToolPolicy()
