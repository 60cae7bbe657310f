"""The delegation app (tests/apps/delegation.py) with one more agent, for the run viewer's tree: a course
planner that delegates writing to the writer, which may delegate research to the researcher in turn (the
default depth limit allows it), so one run has a child and a grandchild."""

from keel import Agent
from tests.apps.delegation import WRITE, editor

course = Agent(name="course", instructions="You plan a course: you delegate the writing.", tools=[WRITE])

__all__ = ["course", "editor"]
