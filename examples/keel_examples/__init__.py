"""Keel's example agents, written with nothing but Keel's public API (`from keel import Agent, tool, ...`):
what Keel serves when KEEL_APP names no app of yours.

- `assistant`: a calculator, a clock and a wait (a heavy tool that asks for approval past 10 seconds);
- `learnpack-lesson-writer`: the seed's LearnPack flow: plan a syllabus, write the lesson, publish the
  package (a side effect, so it asks a person first, and runs once per run).
"""

from keel import Agent
from keel_examples.assistant import calculate, current_time, wait
from keel_examples.learnpack import generate_markdown, plan_syllabus, publish_package

assistant = Agent(
    name="assistant",
    title="General assistant",
    instructions=(
        "You are a helpful assistant. Use the calculator for arithmetic and the clock for the current date "
        "and time; answer briefly."
    ),
    tools=[calculate, current_time, wait],
)

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
)
