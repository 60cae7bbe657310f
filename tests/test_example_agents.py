"""Keel's example agents (examples/keel_examples), tested the way a team tests its own: with keel.testing.

Each test scripts the model (which tool, which arguments, what answer) and drives the run as a person
would: approve, deny, answer, cancel, or let an hour pass on Temporal's time-skipping test server. The run
itself is real: Keel's AgentRun workflow and activities, the example tools, PostgreSQL (the session's).
The last tests are about the kit itself: what it says when a test gets something wrong.
"""

import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from keel_examples import assistant, lesson_writer
from keel_examples.assistant import calculate
from keel_examples.learnpack import plan_syllabus
from pydantic import BaseModel

from keel import Agent, ClientTool
from keel.contracts import OUTPUT_FEEDBACK_PREFIX, Message
from keel.stack.embedded import EmbeddedPostgres
from keel.testing import AgentTest, RunNotWaiting, call
from tests.conftest import EXAMPLES

LESSON = "learnpack-lesson-writer"


@pytest.fixture
async def kit(postgres: EmbeddedPostgres) -> AsyncIterator[AgentTest]:
    async with AgentTest(EXAMPLES, database_url=postgres.uri) as t:
        yield t


def last_result(conversation: list[Message]) -> dict[str, Any]:
    """The latest tool result the model was shown, as JSON."""
    return json.loads(next(m.content for m in reversed(conversation) if m.role == "tool"))


def write_lesson_on(topic: str) -> list[Any]:
    """The lesson writer's script: plan, write the planned lesson, publish what was written, answer."""
    return [
        call("plan_syllabus", topic=topic, sections=2),
        lambda seen: call(
            "generate_markdown", title=last_result(seen)["title"], outline=last_result(seen)["outline"]
        ),
        lambda seen: call(
            "publish_package", title=last_result(seen)["title"], markdown=last_result(seen)["markdown"]
        ),
        "Your lesson is published.",
    ]


# --- learnpack-lesson-writer: publish_package asks a person first ---


async def test_an_approved_publication_publishes_the_lesson_the_model_wrote(kit: AgentTest) -> None:
    run = await kit.run(
        "write and publish a lesson on patience", agent=LESSON, script=write_lesson_on("patience")
    )
    assert run.status == "waiting_for_approval"
    assert run.tool_call("publish_package").status == "waiting_for_approval"
    assert not (kit.data_dir / "packages").exists()

    await run.approve("publish_package")

    assert run.status == "completed"
    assert run.tools_called == ["plan_syllabus", "generate_markdown", "publish_package"]
    assert [c.status for c in run.tool_calls] == ["ok", "ok", "ok"]
    planned = plan_syllabus(topic="patience", sections=2)
    published = run.tool_call("publish_package").result
    assert (published["slug"], published["version"]) == ("learn-patience", 1)
    readme = (kit.data_dir / "packages" / "learn-patience" / "README.md").read_text()
    assert readme.startswith(f"# {planned['title']}") and planned["outline"][0] in readme
    assert run.text == "Your lesson is published."


async def test_a_denied_publication_never_runs_and_the_model_hears_why(kit: AgentTest) -> None:
    script = [call("publish_package", title="Learn patience", markdown="# Learn patience"), "Not published."]
    run = await kit.run("publish my lesson on patience", agent=LESSON, script=script)

    await run.deny("publish_package", reason="not before the review", approver="ana")

    assert run.status == "completed"
    denied = run.tool_call("publish_package")
    assert denied.status == "denied"
    assert denied.result == "publish_package did not run: denied by ana: not before the review"
    # The model's last step was shown the denial as the tool's result.
    assert run.model.seen[1][-1].content == denied.result
    assert not (kit.data_dir / "packages").exists()


async def test_an_approval_nobody_gives_expires_after_an_hour_that_passes_in_a_second(kit: AgentTest) -> None:
    script = [call("publish_package", title="Learn patience", markdown="# Learn patience"), "It expired."]
    run = await kit.run("publish my lesson on patience", agent=LESSON, script=script)
    started = time.monotonic()

    await run.until_finished()

    assert time.monotonic() - started < 10
    assert run.status == "completed"
    assert run.tool_call("publish_package").status == "expired"
    (record,) = run.state.approvals if run.state else []
    assert record.expired and record.decided_at - record.requested_at >= timedelta(hours=1)
    assert not (kit.data_dir / "packages").exists()


async def test_publish_package_runs_once_per_run(kit: AgentTest) -> None:
    publish = call("publish_package", title="Learn patience", markdown="# Learn patience")
    run = await kit.run("publish it twice", agent=LESSON, script=[publish, publish, "Published once."])
    await run.approve("publish_package")

    assert run.status == "completed"
    first, second = run.tool_calls
    assert (first.status, second.status) == ("ok", "error")
    assert second.result == "publish_package may run at most 1 time(s) per run; it already ran"


async def test_the_lesson_writer_never_waits_for_an_answer(kit: AgentTest) -> None:
    script = [call("ask_user", question="Which language should the examples use?")]
    run = await kit.run("write a lesson on loops", agent=LESSON, script=script)

    assert run.status == "needs_input"
    assert run.detail == "the agent needs your input: Which language should the examples use?"
    assert run.tool_call("ask_user").status == "not_run"


# --- assistant: ask_user, the calculator, and a wait that asks first past 10 seconds ---


async def test_the_assistant_asks_and_uses_the_answer(kit: AgentTest) -> None:
    script = [
        call("ask_user", question="Which time zone are you in?"),
        lambda seen: call("current_time", timezone=seen[-1].content),
        lambda seen: f"It is {last_result(seen)['weekday']} in {last_result(seen)['timezone']}.",
    ]
    run = await kit.run("what day is it?", script=script)
    assert run.status == "waiting_for_input"
    assert run.question == "Which time zone are you in?"

    await run.answer("Europe/Madrid")

    assert run.status == "completed"
    asked, clock = run.tool_calls
    assert (asked.name, asked.status, asked.result) == ("ask_user", "ok", "Europe/Madrid")
    assert clock.arguments == {"timezone": "Europe/Madrid"} and clock.result["timezone"] == "Europe/Madrid"
    assert run.text == f"It is {clock.result['weekday']} in Europe/Madrid."


async def test_a_calculator_error_goes_back_to_the_model(kit: AgentTest) -> None:
    script = [call("calculate", expression="1/0"), call("calculate", expression="1/1"), "It is 1."]
    run = await kit.run("what is 1/0?", script=script)

    assert run.status == "completed"
    assert [(c.status, c.result) for c in run.tool_calls] == [
        ("error", "division by zero"),
        ("ok", {"expression": "1/1", "value": 1.0}),
    ]


async def test_a_short_wait_runs_without_asking(kit: AgentTest) -> None:
    run = await kit.run("wait a moment", script=[call("wait", seconds=0.2), "Done."])

    assert run.status == "completed"
    assert run.tool_call("wait").result == {"waited_seconds": 0.2}
    assert run.state and run.state.approvals == []


async def test_a_wait_past_10_seconds_runs_once_a_person_approves_it(kit: AgentTest) -> None:
    run = await kit.run("wait 10.5 seconds", script=[call("wait", seconds=10.5), "I waited."])
    assert run.status == "waiting_for_approval"

    started = time.monotonic()
    await run.approve("wait")

    # The heavy tool really waits: time skipping only speeds up the run's own timers.
    assert time.monotonic() - started >= 10.5
    assert run.status == "completed"
    assert run.tool_call("wait").result == {"waited_seconds": 10.5}


async def test_a_run_waiting_for_approval_can_be_cancelled(kit: AgentTest) -> None:
    run = await kit.run("wait a minute", script=[call("wait", seconds=60), "I waited."])

    await run.cancel("changed my mind")

    assert run.status == "cancelled"
    assert run.detail == "cancelled: changed my mind"
    assert run.tool_call("wait").status == "cancelled"


async def test_parallel_calls_in_one_step(kit: AgentTest) -> None:
    script = [[call("calculate", expression="2+3"), call("calculate", expression="2*3")], "5 and 6."]
    run = await kit.run("2+3 and 2*3 at the same time", script=script)

    assert run.status == "completed"
    assert [c.result["value"] for c in run.tool_calls] == [5, 6]
    assert run.state and run.state.step == 2


# --- the kit itself ---


# --- course-editor: delegates to the lesson writer and the reviewer, each scripted on its own ---


async def test_the_course_editor_delegates_to_scripted_sub_agents_and_gets_their_answers(
    kit: AgentTest,
) -> None:
    lesson = "# Learn sets\n\nA set holds each value once."
    run = await kit.run(
        "write a lesson on sets and have it reviewed",
        agent="course-editor",
        script=[
            call("write_lesson", input="Write a short lesson on sets."),
            lambda seen: call(
                "review_lesson", input=next(m.content for m in reversed(seen) if m.role == "tool")
            ),
            "Written and reviewed.",
        ],
        sub_agents={
            LESSON: [call("plan_syllabus", topic="sets", sections=2), lesson],
            "lesson-reviewer": [
                lambda seen: "Ready." if "A set holds" in seen[-1].content else "Where is it?"
            ],
        },
    )

    assert run.status == "completed" and run.text == "Written and reviewed."
    assert run.tools_called == ["write_lesson", "review_lesson"]
    # Each child's final answer is its call's result: the writer's lesson reached the reviewer.
    assert run.tool_call("write_lesson").result == lesson
    assert run.tool_call("review_lesson").result == "Ready."


async def test_a_script_that_runs_out_fails_the_run_saying_so(kit: AgentTest) -> None:
    run = await kit.run("what is 2+2?", script=[call("calculate", expression="2+2")])

    assert run.status == "failed"
    assert run.detail and "the test script has 1 step(s) and the model was asked for step 2" in run.detail


async def test_a_script_function_that_raises_fails_the_run_at_once(kit: AgentTest) -> None:
    started = time.monotonic()
    run = await kit.run("what is 2+2?", script=[lambda seen: call("calculate", expression=seen[99].content)])

    assert run.status == "failed"
    assert run.detail and "script step 1 failed: IndexError: list index out of range" in run.detail
    assert time.monotonic() - started < 5  # not retried: the script won't change


async def test_giving_a_run_what_it_does_not_wait_for_fails_the_test(kit: AgentTest) -> None:
    run = await kit.run("what is 2+2?", script=["4."])
    assert run.status == "completed"

    with pytest.raises(RunNotWaiting, match=r"not waiting for an approval of 'wait': status completed"):
        await run.approve("wait")
    with pytest.raises(RunNotWaiting, match="not waiting for an answer"):
        await run.answer("yes")
    with pytest.raises(AssertionError, match=r"never called 'calculate'; it called \[\]"):
        run.tool_call("calculate")


async def test_a_step_that_is_not_a_step_is_refused_when_the_run_starts(kit: AgentTest) -> None:
    with pytest.raises(TypeError, match="script step 2 is 42"):
        await kit.run("what is 2+2?", script=["4.", 42])  # type: ignore[list-item]


async def test_a_dict_answer_is_written_as_json(kit: AgentTest) -> None:
    run = await kit.run("how much is 2+2, as JSON?", script=[{"value": 4}])

    assert run.status == "completed"
    assert json.loads(run.text or "") == {"value": 4}


async def test_the_kit_serves_one_agent_or_a_list(postgres: EmbeddedPostgres) -> None:
    async with AgentTest([assistant, lesson_writer], database_url=postgres.uri) as t:
        run = await t.run(
            "plan a lesson on sets", agent=LESSON, script=[call("plan_syllabus", topic="sets"), "Planned."]
        )
        assert run.tool_call("plan_syllabus").result["title"] == "Learn sets"
    async with AgentTest(assistant, database_url=postgres.uri) as t:
        run = await t.run("hello", script=["Hello!"])
        assert (run.spec.slug, run.text) == ("assistant", "Hello!")


class Sum(BaseModel):
    expression: str
    value: int


# An agent of the test's own, for the kit's structured output: the example agents answer in text.
adder = Agent(
    name="adder", instructions="Add numbers with the calculator.", tools=[calculate], output_type=Sum
)


async def test_a_structured_answer_is_the_runs_output_once_it_validates(postgres: EmbeddedPostgres) -> None:
    script = [
        call("calculate", expression="2+2"),
        {"expression": "2+2", "value": "four"},  # invalid: sent back to the model with what is wrong
        Sum(expression="2+2", value=4),
    ]
    async with AgentTest(adder, database_url=postgres.uri) as t:
        run = await t.run("what is 2+2?", script=script)

    assert run.status == "completed"
    assert run.output == {"expression": "2+2", "value": 4}
    feedback = run.model.seen[2][-1]
    assert feedback.role == "user" and feedback.content.startswith(OUTPUT_FEEDBACK_PREFIX)


# An agent with a tool the frontend runs: the test gives its result, as the frontend would.
locator = Agent(
    name="locator",
    instructions="Ask the browser where the user is.",
    client_tools=[
        ClientTool(
            name="get_location",
            description="The user's city, from the browser",
            parameters={"type": "object", "properties": {}},
            output_schema={"type": "object", "required": ["city"]},
        )
    ],
)


async def test_a_client_tool_waits_for_the_result_the_test_gives(postgres: EmbeddedPostgres) -> None:
    script = [call("get_location"), lambda seen: f"You are in {last_result(seen)['city']}."]
    async with AgentTest(locator, database_url=postgres.uri) as t:
        run = await t.run("where am I?", script=script)
        assert run.status == "waiting_for_tool_result"
        assert run.tool_call("get_location").status == "waiting_for_tool_result"

        await run.tool_result("get_location", {"city": "Lisbon"})

    assert run.status == "completed"
    assert run.tool_call("get_location").result == {"city": "Lisbon"}
    assert run.text == "You are in Lisbon."
