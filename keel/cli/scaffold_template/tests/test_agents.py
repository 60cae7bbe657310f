"""The support agent's tests, run with `pytest`: keel.testing runs the agent as Keel does (its workflow,
its activities, this project's tools, PostgreSQL), with a scripted model in place of the LLM: no network,
no API key, and the same result every time.
"""

from agents import support

from keel.testing import AgentTest, call


async def test_support_looks_the_order_up_before_answering() -> None:
    async with AgentTest(support) as t:
        run = await t.run(
            "Where is my order 1001?",
            # What the model does, step by step: call a tool, then answer.
            script=[call("lookup_order", order_number=1001), "Order 1001 has shipped with DHL."],
        )

    assert run.status == "completed"
    assert run.tools_called == ["lookup_order"]
    assert run.tool_call("lookup_order").result["status"] == "shipped"
    assert run.text == "Order 1001 has shipped with DHL."


async def test_an_unknown_order_is_an_error_the_model_hears() -> None:
    async with AgentTest(support) as t:
        run = await t.run(
            "Where is order 999?",
            script=[
                call("lookup_order", order_number=999),
                "I can't find order 999; please check the number.",
            ],
        )

    lookup = run.tool_call("lookup_order")
    assert (lookup.status, lookup.result) == ("error", "there is no order 999")
    # The model's second step was shown the error as the tool's result.
    assert run.model.seen[1][-1].content == "there is no order 999"
    assert run.status == "completed"


# A tool with an approval waits for a person; the test is that person:
#
#     run = await t.run("refund order 1001", script=[call("refund", order_number=1001), "Refunded."])
#     assert run.status == "waiting_for_approval"
#     await run.approve("refund")        # or: await run.deny("refund", reason="over the limit")
#
# `await run.answer("...")` answers the agent's question (ask_user), `await run.cancel()` ends the run, and
# `await run.until_finished()` lets time pass: an approval nobody gives expires at once.
