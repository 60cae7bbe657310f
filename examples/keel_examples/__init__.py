"""Keel's example agents, written with nothing but Keel's public API (`from keel import Agent, tool, ...`):
what Keel serves when KEEL_APP names no app of yours.

- `assistant`: a calculator, a clock and a wait (a heavy tool that asks for approval past 10 seconds); it
  hands the conversation to the lesson writer when asked for a lesson (Agent(handoffs=...));
- `learnpack-lesson-writer`: the seed's LearnPack flow: plan a syllabus, write the lesson, publish the
  package (a side effect, so it asks a person first, and runs once per run);
- `lesson-reviewer`: reviews a lesson's Markdown;
- `course-editor`: delegates (Agent.as_tool): the lesson writer and the reviewer each run as a child run of
  the editor's, shown inside its answer, and the writer's publication is approved from the editor's chat.
"""

from keel import Agent
from keel_examples.assistant import calculate, current_time, wait
from keel_examples.learnpack import generate_markdown, plan_syllabus, publish_package

lesson_writer = Agent(
    name="learnpack-lesson-writer",
    title="LearnPack lesson writer",
    instructions=(
        "You write short programming lessons. Plan a syllabus first, then write the lesson as Markdown, and "
        "publish the package only when the user asks for it."
    ),
    tools=[plan_syllabus, generate_markdown, publish_package],
    # Lessons are written in one go: a run that needs an answer ends as needs_input instead of waiting.
    allow_questions=False,
    handoff_description="Plans, writes and publishes programming lessons (LearnPack packages).",
)

assistant = Agent(
    name="assistant",
    title="General assistant",
    instructions=(
        "You are a helpful assistant. Use the calculator for arithmetic and the clock for the current date "
        "and time; answer briefly. Hand the conversation to the lesson writer when the user wants a lesson."
    ),
    tools=[calculate, current_time, wait],
    # A handoff (not a sub-agent): the lesson writer takes the conversation over, in the same run.
    handoffs=[lesson_writer],
)

reviewer = Agent(
    name="lesson-reviewer",
    title="Lesson reviewer",
    instructions=(
        "You review a short programming lesson written in Markdown: say briefly what is unclear or wrong "
        "and what to change, or that it is ready."
    ),
)

course_editor = Agent(
    name="course-editor",
    title="Course editor (delegates)",
    instructions=(
        "You edit a programming course. Give the writing of a lesson to the lesson writer and its review to "
        "the reviewer, each with everything it needs to know, then tell the user what was done. Ask the "
        "writer to publish only when the user asked for publishing."
    ),
    tools=[
        lesson_writer.as_tool(
            name="write_lesson",
            description=(
                "The LearnPack lesson writer plans and writes one lesson, and publishes it when the task "
                "says so (a person approves the publication). Give it the topic and what the user asked."
            ),
            triggers=("write", "lesson"),
        ),
        reviewer.as_tool(
            name="review_lesson",
            description="The reviewer reviews a lesson. Give it the lesson's Markdown.",
            triggers=("review",),
        ),
    ],
)
