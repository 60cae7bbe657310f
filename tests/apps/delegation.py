"""Agents that call other agents as tools (`Agent.as_tool`), written with nothing but Keel's public API:
an editor that delegates to a writer and a reviewer, a writer that would delegate research further down,
a publisher whose own tool waits for a person, an interviewer who asks the user, and a chief with a small step budget."""

from keel import Agent, tool


@tool(triggers=("notes",))
def take_notes(topic: str) -> dict[str, str]:
    """Notes on a topic."""
    return {"notes": f"notes on {topic}"}


@tool(approval="always", triggers=("release",))
def publish(title: str) -> dict[str, str]:
    """Publish a piece; a person approves it first."""
    return {"published": title}


researcher = Agent(name="researcher", instructions="You research a topic.", tools=[take_notes])

writer = Agent(
    name="writer",
    instructions="You write lessons.",
    tools=[take_notes, researcher.as_tool(description="Researches a topic.", triggers=("research",))],
)

# One tool object for every agent that calls the writer: an app's tool names one tool.
WRITE = writer.as_tool(description="Writes a lesson.", triggers=("write",))

reviewer = Agent(name="reviewer", instructions="You review lessons.")

publisher = Agent(name="publisher", instructions="You publish lessons.", tools=[publish])

# No tools of its own: it asks the user (ask_user, which every agent has) when told to ask.
interviewer = Agent(name="interviewer", instructions="You interview the author.")

# Its run ends once the interview is done (the offline model would otherwise ask the user itself too).
host = Agent(
    name="host",
    instructions="You host an interview.",
    tools=[interviewer.as_tool(description="Interviews the author.", triggers=("interview",))],
    stop_after_tool_calls={"interviewer": 1},
)

editor = Agent(
    name="editor",
    instructions="You edit a course: you delegate writing and review.",
    tools=[
        WRITE,
        reviewer.as_tool(description="Reviews a lesson.", triggers=("review",)),
        publisher.as_tool(description="Publishes a lesson.", triggers=("release",)),
    ],
    # The writer may not delegate further: its research is refused by the depth limit.
    max_depth=1,
)

chief = Agent(
    name="chief",
    instructions="You run a course, with a small budget.",
    tools=[WRITE],
    max_steps=2,
)
