"""Structured output through the real stack: agents with `output_type` (tests/apps/structured.py, loaded with
KEEL_APP) served by a worker and a gateway of their own, whose openai:, anthropic: and local: routes reach
the fake vendors (tests/fake_vendors.py) through the official SDKs.

The final answer is a validated object, asked for the way each provider takes it; an answer that fails
validation goes back to the model with what is wrong, at most `output_retries` times, then the run fails
saying why. The object shows in GET /api/runs/{id}, as the stream's last `data-output` part, in
`agent_runs.output` and in `keel run`.
"""

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from keel.contracts import OUTPUT_FEEDBACK_PREFIX, OUTPUT_TOOL, Message
from keel.run_start import first_messages, run_input, start_run
from keel.stack.embedded import EmbeddedPostgres, TemporalDevServer
from keel.storage.store import RunStore
from tests.apps.structured import AGENTS, Shipment
from tests.conftest import FAKE_ANTHROPIC_KEY, FAKE_OPENAI_KEY, NO_CONTEXT, ROOT, Keel
from tests.crash_stack import CrashStack, Process, until
from tests.fake_vendors import FakeVendors, Recorded
from tests.ui_stream import UIStream, chat, chat_body

APP = "tests.apps.structured:AGENTS"
ORDER = "Please track order 1234."
# What `track` says about order 1234, and so what every tracker's answer must be.
SHIPMENT = {"order_number": 1234, "status": "in_transit", "carrier": "DHL", "days_late": 2}
OPENAI, ANTHROPIC = "/v1/chat/completions", "/v1/messages"


@dataclass
class Desk:
    """The structured app's own stack, and a client of its gateway."""

    stack: CrashStack
    gateway: Process
    http: httpx.AsyncClient


@pytest.fixture(scope="module")
async def desk(
    keel: Keel,
    temporal_server: TemporalDevServer,
    postgres: EmbeddedPostgres,
    fake_vendors: FakeVendors,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Desk]:
    vendors = {
        "OPENAI_API_KEY": FAKE_OPENAI_KEY,
        "OPENAI_BASE_URL": fake_vendors.openai_base_url,
        "ANTHROPIC_API_KEY": FAKE_ANTHROPIC_KEY,
        "ANTHROPIC_BASE_URL": fake_vendors.anthropic_base_url,
        "KEEL_LOCAL_BASE_URL": fake_vendors.openai_base_url,
    }
    base = tmp_path_factory.mktemp("structured")
    with CrashStack(
        temporal_server, postgres, base, keel.env["KEEL_CODEC_KEY_FILE"], KEEL_APP=APP, **vendors
    ) as stack:
        gateway = stack.gateway()
        await stack.start(stack.worker(), gateway)
        async with httpx.AsyncClient(base_url=gateway.url or "", timeout=60) as http:
            yield Desk(stack, gateway, http)


async def ask(desk: Desk, agent: str) -> tuple[UIStream, str]:
    """Ask an agent about order 1234 through POST /api/chat: the whole stream, and the run's id."""
    stream = await chat(desk.http, chat_body(ORDER, purpose=agent))
    return stream, stream.response.headers["x-agent-run-id"]


async def record(store: RunStore, run_id: str) -> dict[str, Any]:
    """The run's agent_runs row once its final record is written (a moment after the stream's end)."""

    async def final() -> dict[str, Any] | None:
        row = await store.pool.fetchrow(
            "SELECT status, output, output_summary, error_type, detail FROM agent_runs WHERE id = $1", run_id
        )
        return dict(row) if row is not None and row["status"] not in ("running",) else None

    return await until(final, f"the final record of {run_id}", within=20)


def requests_to(vendors: FakeVendors, path: str, model: str) -> list[Recorded]:
    return [r for r in vendors.requests if r.path == path and r.body.get("model") == model]


async def feedback(store: RunStore, run_id: str) -> list[str]:
    """The validation errors the run sent back to the model."""
    conversation = await store.conversation(run_id, 1000)
    return [m.content for m in conversation if m.content.startswith(OUTPUT_FEEDBACK_PREFIX)]


# --- a valid answer, everywhere a run shows ---


async def test_the_offline_model_answers_with_an_object_and_it_shows_everywhere(
    desk: Desk, store: RunStore
) -> None:
    stream, run_id = await ask(desk, "tracker")

    assert stream.tool_names == ["track"]  # the tools ran first; the answer is the run's last word
    assert json.loads(stream.text) == SHIPMENT  # streamed as its JSON text, as the AI SDK's object output
    assert stream.chunks[-2] == {"type": "data-output", "id": run_id, "data": SHIPMENT}
    assert stream.chunks[-1] == {"type": "finish", "finishReason": "stop"}
    state = (await desk.http.get(f"/api/runs/{run_id}")).json()
    assert state["status"] == "completed" and state["output"] == SHIPMENT
    row = await record(store, run_id)
    assert row["status"] == "completed" and row["output"] == SHIPMENT


@pytest.mark.parametrize("agent", ["tracker-openai", "tracker-anthropic", "tracker-local"])
async def test_each_provider_gives_a_valid_object(agent: str, desk: Desk, store: RunStore) -> None:
    stream, run_id = await ask(desk, agent)

    assert stream.run_status == "completed", stream.of_type("data-run")[-1]
    # Anthropic's answer arrives as a call of the output tool; no client ever sees that call.
    assert stream.tool_names == ["track"]
    assert stream.of_type("data-output") == [{"type": "data-output", "id": run_id, "data": SHIPMENT}]
    assert (await desk.http.get(f"/api/runs/{run_id}")).json()["output"] == SHIPMENT
    assert (await record(store, run_id))["output"] == SHIPMENT
    assert await feedback(store, run_id) == []


async def test_openai_is_asked_through_a_strict_json_schema_response_format(
    desk: Desk, fake_vendors: FakeVendors
) -> None:
    await ask(desk, "tracker-openai")

    first, answer = requests_to(fake_vendors, OPENAI, "gpt-4o-mini")[-2:]
    response_format = answer.body["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["name"] == "Shipment"
    assert response_format["json_schema"]["strict"] is True
    schema = response_format["json_schema"]["schema"]
    assert schema["additionalProperties"] is False and schema["required"] == list(Shipment.model_fields)
    # Tools stay on offer while the answer is not given: the step that needs one runs it first.
    assert first.body["response_format"] == response_format
    assert [t["function"]["name"] for t in first.body["tools"]] == ["track", "ask_user"]
    assert first.body["tool_choice"] == "auto"


async def test_anthropic_is_asked_through_a_forced_output_tool(desk: Desk, fake_vendors: FakeVendors) -> None:
    await ask(desk, "tracker-anthropic")

    first, answer = requests_to(fake_vendors, ANTHROPIC, "claude-haiku-4-5")[-2:]
    output_tool = {t["name"]: t for t in answer.body["tools"]}[OUTPUT_TOOL]
    assert output_tool["input_schema"] == Shipment.model_json_schema()
    # While tools may be needed the model must call one of them or the output tool: never plain text.
    assert [t["name"] for t in first.body["tools"]] == ["track", "ask_user", OUTPUT_TOOL]
    assert first.body["tool_choice"] == answer.body["tool_choice"] == {"type": "any"}


# --- invalid, then fixed ---


@pytest.mark.parametrize(("agent", "path"), [("learning-openai", OPENAI), ("learning-anthropic", ANTHROPIC)])
async def test_an_invalid_answer_goes_back_to_the_model_which_fixes_it(
    agent: str, path: str, desk: Desk, store: RunStore, fake_vendors: FakeVendors
) -> None:
    stream, run_id = await ask(desk, agent)

    assert stream.run_status == "completed"
    assert stream.of_type("data-output")[-1]["data"] == SHIPMENT
    assert (await desk.http.get(f"/api/runs/{run_id}")).json()["output"] == SHIPMENT
    assert (await record(store, run_id))["output"] == SHIPMENT
    [said] = await feedback(store, run_id)
    assert "(Shipment): the answer: 'order_number' is a required property" in said
    # The fix is asked for without tools: the model must give its answer now.
    fixing = requests_to(fake_vendors, path, "badoutputonce")[-1].body
    if path == OPENAI:
        assert fixing["tool_choice"] == "none"
    else:
        assert fixing["tool_choice"] == {"type": "tool", "name": OUTPUT_TOOL}


# --- invalid until the run fails ---


@pytest.mark.parametrize(("agent", "path"), [("sloppy-openai", OPENAI), ("sloppy-anthropic", ANTHROPIC)])
async def test_an_answer_that_never_validates_fails_the_run_after_the_retries(
    agent: str, path: str, desk: Desk, store: RunStore, fake_vendors: FakeVendors
) -> None:
    stream, run_id = await ask(desk, agent)

    why = (
        "the final answer did not validate as Shipment after 3 attempt(s): "
        "the answer: 'order_number' is a required property"
    )
    assert stream.run_status == "failed"
    assert stream.of_type("error") == [{"type": "error", "errorText": why}]
    assert stream.of_type("data-output") == []
    state = (await desk.http.get(f"/api/runs/{run_id}")).json()
    assert state["status"] == "failed" and state["detail"] == why and state["output"] is None
    row = await record(store, run_id)
    assert row["status"] == "failed" and row["detail"] == why
    assert row["output"] is None and row["error_type"] == "OutputValidationFailed"
    # The default output_retries=2: two answers went back with their errors; the third failed the run.
    assert len(await feedback(store, run_id)) == 2
    assert len(requests_to(fake_vendors, path, "badoutput")) == 1 + 3  # the tool call, three answers


async def test_the_classs_own_validators_judge_the_answer_too(desk: Desk, store: RunStore) -> None:
    # The scripted model's object matches DeliveredShipment's JSON schema; only its validator refuses it.
    stream, run_id = await ask(desk, "delivered-only")

    state = (await desk.http.get(f"/api/runs/{run_id}")).json()
    assert state["status"] == "failed"
    assert state["detail"] == (
        "the final answer did not validate as DeliveredShipment after 3 attempt(s): "
        "the answer: Value error, order 1234 is not delivered yet"
    )
    assert stream.of_type("data-output") == []


# --- the run's snapshot decides ---


async def test_a_run_is_held_to_the_schema_it_started_with(desk: Desk, store: RunStore) -> None:
    """A run started before a redeploy changed the class (its statuses then were only `held`) answers
    and validates by its snapshot: the worker's class of another schema does not judge it."""
    tracker = next(a for a in AGENTS if a.name == "tracker")
    spec = tracker.spec("scripted")
    assert spec.output is not None
    then = json.loads(json.dumps(spec.output.json_schema))
    then["properties"]["status"]["enum"] = ["held"]
    spec.output.json_schema = then
    messages = first_messages(tracker, NO_CONTEXT, [Message(role="user", content=ORDER)])
    run = run_input(spec, messages)
    run_id = run.agent_run_id
    await store.put_messages(run_id, 0, messages)
    temporal = await desk.stack.temporal()

    state = await (await start_run(temporal, run, desk.stack.env["KEEL_TASK_QUEUE"])).result()

    assert state.status == "completed", state.detail
    assert (await desk.http.get(f"/api/runs/{run_id}")).json()["output"] == {**SHIPMENT, "status": "held"}


# --- where else it shows, and what the app check refuses ---


def keel_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keel.cli.main", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_keel_run_prints_the_object(desk: Desk) -> None:
    result = keel_cli("--url", desk.gateway.url or "", "run", ORDER, "--purpose", "tracker")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "output:\n" + json.dumps(SHIPMENT, indent=2) in result.stdout


def test_an_output_type_that_is_not_a_pydantic_model_is_refused_in_one_line() -> None:
    result = keel_cli("check", "--app", "tests.apps.structured:BAD")

    assert result.returncode == 1
    assert result.stdout.strip() == (
        "keel: tests.apps.structured:BAD: agent 'tally': output_type must be a pydantic model, not dict"
    )
