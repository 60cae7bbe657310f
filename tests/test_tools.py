"""Tools are typed functions: their schema comes from the signature and bad arguments become ToolErrors."""

from pathlib import Path

import pytest

from activities.agent import _policy
from activities.tools import TOOLS, ToolContext, ToolError
from keel.contracts import ToolCall, ToolPolicy
from keel.purposes import PURPOSES


def ctx(tmp_path: Path) -> ToolContext:
    return ToolContext(agent_run_id="run-test", tool_call_id="call_1", data_dir=tmp_path)


def test_every_purpose_names_registered_tools() -> None:
    for purpose in PURPOSES.values():
        assert [name for name in purpose.tools if name not in TOOLS] == [], purpose.slug


def test_schema_comes_from_the_signature() -> None:
    spec = TOOLS.get("plan_syllabus").spec()
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
    assert "ctx" not in TOOLS.get("publish_package").spec().parameters["properties"]


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
        await TOOLS.get("plan_syllabus").invoke(arguments, ctx(tmp_path))


@pytest.mark.parametrize(
    ("expression", "value"), [("(2 + 3) * 4", 20), ("2 ^ 10", 1024), ("-7 // 2", -4), ("1.5 * 2", 3.0)]
)
async def test_calculate(tmp_path: Path, expression: str, value: float) -> None:
    result = await TOOLS.get("calculate").invoke({"expression": expression}, ctx(tmp_path))
    assert result["value"] == value


@pytest.mark.parametrize(
    "expression", ["__import__('os').system('true')", "(1).__class__", "2 ** 1000", "abc", "x" * 201]
)
async def test_calculate_runs_no_code(tmp_path: Path, expression: str) -> None:
    with pytest.raises(ToolError):
        await TOOLS.get("calculate").invoke({"expression": expression}, ctx(tmp_path))


async def test_current_time_rejects_unknown_zones(tmp_path: Path) -> None:
    assert (await TOOLS.get("current_time").invoke({"timezone": "Europe/Madrid"}, ctx(tmp_path)))["iso"]
    with pytest.raises(ToolError, match="unknown time zone"):
        await TOOLS.get("current_time").invoke({"timezone": "Mars/Olympus"}, ctx(tmp_path))


async def test_publishing_twice_leaves_one_package(tmp_path: Path) -> None:
    publish = TOOLS.get("publish_package")
    for _ in range(2):
        result = await publish.invoke({"title": "Learn X", "markdown": "# X\n"}, ctx(tmp_path))
    assert sorted(p.name for p in (tmp_path / "packages").iterdir()) == ["learn-x"]
    assert sorted(p.name for p in Path(result["path"]).iterdir()) == ["README.md", "learn.json"]


def test_a_tool_the_run_does_not_offer_never_runs() -> None:
    # A model may name any registered tool (json mode makes it easy): outside the run's tools it gets an
    # error result instead of running, so publish_package can't slip past its approval under `assistant`.
    call = ToolCall(id="call_1", name="publish_package", arguments={"title": "x", "markdown": "y"})
    assert _policy(call, server_tools={"calculate"}, client_tools=set()).handled_by == "nobody"
    assert _policy(call, server_tools={"publish_package"}, client_tools=set()).needs_approval


def test_a_broken_call_skips_its_approval_predicate() -> None:
    call = ToolCall(id="call_1", name="wait", arguments={}, arguments_error="not JSON")
    assert _policy(call, server_tools={"wait"}, client_tools=set()) == ToolPolicy()
