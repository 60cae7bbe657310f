"""`keel run`'s view of a sub-agent at work: an indented block under the tool call that started it.

A run's stream carries a sub-agent's progress as the call's preliminary outputs (`SubRunProgress`): each
snapshot repeats the child's whole message so far, so the printer remembers what it has printed of each
child and prints only what is new — the child's text as it grows, its tool calls as they start and end,
a grandchild's block inside it in turn, and the child's end. An approval a child waits for is handed to
`on_approval` once, for `keel run` to ask the person (or approve it with --yes).
"""

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeGuard

from keel.contracts import RunStatus

FINAL_STATES = {"output-available", "output-error", "output-denied"}
FINAL_RUN_STATUSES = {s.value for s in RunStatus} - {
    "running",
    "waiting_for_approval",
    "waiting_for_input",
    "waiting_for_tool_result",
}


class Terminal(Protocol):
    """Where the printer writes (keel/cli/main.py's `Out`)."""

    def write(self, text: str) -> None: ...

    def line(self, text: str = "", code: str | None = None) -> None: ...


DIM, GREEN, RED, YELLOW, BOLD = "2", "32", "31", "33", "1"

# An approval a child run waits for: the child's run id, and its tool part as the snapshot has it.
OnApproval = Callable[[str, dict[str, Any]], None]


@dataclass
class _Block:
    """What has been printed of one child run."""

    depth: int
    agent: str = ""
    agent_run_id: str = ""
    status: str = "running"
    texts: dict[int, str] = field(default_factory=dict)
    tool_states: dict[str, str] = field(default_factory=dict)
    ended: bool = False


class SubRunPrinter:
    """Prints the sub-agents' blocks of one `keel run`, snapshot by snapshot."""

    def __init__(self, out: Terminal, on_approval: OnApproval | None = None) -> None:
        self.out = out
        self.on_approval = on_approval
        # Each child by the path of tool call ids that leads to it (a grandchild: its parent's call, its own).
        self.blocks: dict[tuple[str, ...], _Block] = {}
        self.mid_line = False
        # The block whose lines were printed last: children running side by side take turns.
        self.speaking: _Block | None = None

    def progress(self, tool_call_id: str, snapshot: Any) -> None:
        """A preliminary output of the run's call `tool_call_id`; anything but a sub-run's is ignored."""
        if is_sub_run(snapshot):
            self._show((tool_call_id,), snapshot, depth=1)

    def ended(self, tool_call_id: str, status: str) -> None:
        """The run's call `tool_call_id` has its result: its child's block, if it had one, is closed."""
        block = self.blocks.get((tool_call_id,))
        if block is not None:
            self._close(block, block.status if block.status in FINAL_RUN_STATUSES else status)

    def interrupted(self) -> None:
        """The run itself prints next: a child's line left open is ended first."""
        self._end_line()

    def _show(self, path: tuple[str, ...], snapshot: dict[str, Any], depth: int) -> None:
        block = self.blocks.get(path)
        if block is None:
            block = self.blocks[path] = _Block(depth, snapshot["agent"], snapshot["agentRunId"])
            self._line(_margin(block.depth - 1) + "┌ ", f"{block.agent} · {block.agent_run_id}", BOLD)
            self.speaking = block
        for index, part in enumerate(snapshot.get("parts") or []):
            if part.get("type") == "text":
                self._text(block, index, str(part.get("text") or ""))
            elif str(part.get("type", "")).startswith("tool-"):
                self._tool(path, block, part)
        block.status = str(snapshot.get("status") or block.status)
        if block.status in FINAL_RUN_STATUSES:
            self._close(block, block.status, snapshot.get("detail"))

    def _text(self, block: _Block, index: int, text: str) -> None:
        printed = block.texts.get(index, "")
        # A snapshot repeats the text so far; a text that does not go on from it (a retried step wrote it
        # again) is printed whole.
        new = text[len(printed) :] if text.startswith(printed) else text
        block.texts[index] = text
        for number, piece in enumerate(new.split("\n")):
            if number:
                self._end_line()
            if piece:
                self._turn_of(block)
                if not self.mid_line:
                    self.out.write(_margin(block.depth))
                self.out.write(piece)
                self.mid_line = True

    def _tool(self, path: tuple[str, ...], block: _Block, part: dict[str, Any]) -> None:
        call_id, name, state = str(part.get("toolCallId")), part["type"].removeprefix("tool-"), part["state"]
        output = part.get("output")
        if part.get("preliminary") and is_sub_run(output):
            state = "input-available"  # the grandchild at work: its call is not finished
        before = block.tool_states.get(call_id)
        if before is None and state != "input-streaming":
            self._turn_of(block)
            self._line(_margin(block.depth), f"→ {name}({short(part.get('input'))})", DIM)
        if is_sub_run(output) and state not in FINAL_STATES:
            self._show((*path, call_id), output, block.depth + 1)
        if state != before:
            block.tool_states[call_id] = state
            grandchild = self.blocks.get((*path, call_id))
            if grandchild is not None and state in FINAL_STATES:
                self._close(grandchild, "completed" if state == "output-available" else "failed")
            self._tool_moved(block, part, name, state)

    def _tool_moved(self, block: _Block, part: dict[str, Any], name: str, state: str) -> None:
        said = {
            "approval-requested": (f"? {name}({short(part.get('input'))}) waits for approval", YELLOW),
            "output-available": (f"✓ {name}: {short(part.get('output'))}", GREEN),
            "output-error": (f"✗ {name}: {part.get('errorText')}", RED),
            "output-denied": (f"✗ {name}: denied", RED),
        }.get(state)
        if said is None:
            return
        self._turn_of(block)
        self._line(_margin(block.depth), *said)
        if state == "approval-requested" and self.on_approval is not None:
            self.on_approval(block.agent_run_id, part)

    def _turn_of(self, block: _Block) -> None:
        """Lines of `block` follow; when another block printed last, a line says whose (not needed after
        a block nested in this one ended: its end line leads back here)."""
        last = self.speaking
        if last is not None and last is not block and not (last.ended and last.depth > block.depth):
            self._line(_margin(block.depth - 1) + "├ ", block.agent, DIM)
        self.speaking = block

    def _close(self, block: _Block, status: str, detail: Any = None) -> None:
        if block.ended:
            return
        block.ended = True
        colour = GREEN if status == "completed" else RED if status == "failed" else YELLOW
        self._line(
            _margin(block.depth - 1) + "└ ",
            f"{block.agent}: {status}{f' ({detail})' if detail else ''}",
            colour,
        )

    def _line(self, margin: str, text: str, code: str) -> None:
        self._end_line()
        self.out.write(margin)
        self.out.line(text, code)

    def _end_line(self) -> None:
        if self.mid_line:
            self.out.write("\n")
            self.mid_line = False


def _margin(depth: int) -> str:
    """A child's lines are indented under its call, one bar for each generation."""
    return "│ " * depth


def is_sub_run(value: Any) -> TypeGuard[dict[str, Any]]:
    """Whether a tool output is a sub-agent's progress snapshot (SubRunProgress on the wire)."""
    return isinstance(value, dict) and {"agentRunId", "agent", "status"} <= value.keys()


def short(value: Any, limit: int = 100) -> str:
    """A value on one line, cut at `limit` characters."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"
