"""The app tests/record_histories.py records with: Keel's example agents, plus one agent with structured
output, one with a stop condition of its own and one that delegates to sub-agents, so those paths of the
workflow have recorded histories."""

from keel_examples import assistant, lesson_writer

from tests.apps.delegation import editor
from tests.apps.shop import tracker as shop_tracker
from tests.apps.structured import tracker

AGENTS = [assistant, lesson_writer, tracker("tracker"), shop_tracker, editor]
