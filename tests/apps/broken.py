"""An app that does not even import (a typo a deploy could ship)."""

from keel import Agent, tool_that_does_not_exist  # type: ignore[attr-defined]  # noqa: F401

support = Agent(name="support", instructions="x")
