"""The app tests/record_histories.py records with: Keel's example agents, plus one agent with structured
output, one with a stop condition of its own, one that delegates to sub-agents and two that hand over to
each other, so those paths of the workflow have recorded histories."""

from keel_examples import assistant, lesson_writer

from tests.apps.delegation import editor
from tests.apps.handoffs import billing, triage
from tests.apps.shop import tracker as shop_tracker
from tests.apps.structured import tracker

AGENTS = [assistant, lesson_writer, tracker("tracker"), shop_tracker, editor, triage, billing]
