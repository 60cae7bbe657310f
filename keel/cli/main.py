"""The `keel` command: run the stack, chat with an agent from a terminal, and control runs.

    keel new DIR                            a project of your own: one agent, one tool, a test
    keel dev | worker | api
    keel run "plan and write a lesson on recursion" --purpose learnpack-lesson-writer
    keel runs [--status S] [--purpose P]
    keel approve RUN CALL [--reason R]      keel deny RUN CALL [--reason R]      keel cancel RUN
    keel api-key create --user U [--admin]  keel api-key revoke PREFIX  keel api-key list
    keel schedule create ID --purpose P --message M (--cron EXPR | --every SECONDS)
    keel schedule list | pause ID | unpause ID | delete ID
    keel webhooks list [--run ID] [--status S]   keel webhooks redeliver WEBHOOK_ID

The client commands send KEEL_TOKEN (a JWT or an API key) as `Authorization: Bearer` when it is set.

Colour and progress marks in a terminal, plain text in a pipe (and with NO_COLOR set).
"""

import argparse
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn, TextIO

import httpx
from pydantic import ValidationError

from keel.cli.sub_runs import BOLD, DIM, GREEN, RED, YELLOW, SubRunPrinter, short
from keel.client import AssistantMessage, ChatClient, ChatError
from keel.schedules import ScheduleRequest, ScheduleView
from keel.ui_protocol import (
    ErrorChunk,
    OutputDataChunk,
    TextDeltaChunk,
    TextEndChunk,
    ToolApproval,
    ToolInputAvailableChunk,
    ToolOutputAvailableChunk,
    ToolOutputDeniedChunk,
    ToolOutputErrorChunk,
    UIMessageChunk,
)


class Out:
    """Terminal output: colour only where a person is looking."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream
        self.colour = stream.isatty() and "NO_COLOR" not in os.environ

    def paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour else text

    def write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def line(self, text: str = "", code: str | None = None) -> None:
        self.write((self.paint(text, code) if code else text) + "\n")


def build_parser() -> argparse.ArgumentParser:
    """The `keel` command's arguments; the manual's CLI reference is generated from it (docs/hooks)."""
    parser = argparse.ArgumentParser(prog="keel", description="Durable AI agents on Temporal.")
    parser.add_argument("--url", help="the gateway (default http://127.0.0.1:$KEEL_PORT)")
    commands = parser.add_subparsers(dest="command", required=True)
    app_help = "your app: package.module or package.module:AGENTS (sets KEEL_APP; default: the examples)"
    dev = commands.add_parser(
        "dev", help="run Temporal, PostgreSQL, the worker and the gateway (what `make dev` runs)"
    )
    worker = commands.add_parser("worker", help="run a worker (--queue heavy: a heavy-tool worker)")
    worker.add_argument(
        "--queue", choices=("agent", "heavy"), default="agent", help="which worker (default: agent)"
    )
    api = commands.add_parser("api", help="run the gateway")
    check = commands.add_parser("check", help="load the app and say what is wrong with it, starting nothing")
    new = commands.add_parser("new", help="write a new project: one agent, one tool, a test, a README")
    new.add_argument("dir", help="the project's folder (new, or empty)")
    for serving in (dev, worker, api, check):
        serving.add_argument("--app", help=app_help)
    run = commands.add_parser("run", help="send a message and stream the answer")
    run.add_argument("message", help="what you ask the agent")
    run.add_argument("--purpose", help="the agent to run (default: assistant, or the app's first)")
    run.add_argument("--yes", action="store_true", help="approve every tool call without asking")
    runs = commands.add_parser("runs", help="a table of recent runs")
    runs.add_argument("--status", help="only runs with this status (running, completed, ...)")
    runs.add_argument("--purpose", help="only runs of this agent")
    runs.add_argument("--limit", type=int, default=20, help="at most this many runs (default 20)")
    for name in ("approve", "deny"):
        decide = commands.add_parser(name, help=f"{name} a tool call waiting for approval")
        decide.add_argument("run", help="the run's id (run-…)")
        decide.add_argument("call", help="the tool call's id, as the run shows it")
        decide.add_argument("--reason", help="why, for the audit and the model")
    cancel = commands.add_parser("cancel", help="cancel a run")
    cancel.add_argument("run", help="the run's id (run-…)")
    cancel.add_argument("--reason", help="why, recorded with the run")
    keys = commands.add_parser("api-key", help="issue, revoke and list API keys (uses DATABASE_URL)")
    key_commands = keys.add_subparsers(dest="key_command", required=True)
    create = key_commands.add_parser("create", help="issue a key; it is printed once and stored hashed")
    create.add_argument("--user", required=True, help="the user id the key acts as")
    create.add_argument("--admin", action="store_true", help="the key sees and controls every run")
    revoke = key_commands.add_parser("revoke", help="revoke a key by its prefix (keel_…, as listed)")
    revoke.add_argument("prefix", help="the key's prefix, keel_ and 12 hex digits")
    key_commands.add_parser("list", help="every key's prefix, user, role and state (never the key)")
    _schedule_parser(commands)
    _webhooks_parser(commands)
    return parser


def _webhooks_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """`keel webhooks list|redeliver`: the runs' webhook deliveries, through the gateway."""
    webhooks = commands.add_parser("webhooks", help="webhook deliveries: list them, send one again")
    verbs = webhooks.add_subparsers(dest="webhooks_command", required=True)
    listing = verbs.add_parser("list", help="deliveries, newest first")
    listing.add_argument("--run", help="only this run's (run-…)")
    listing.add_argument("--status", choices=("pending", "delivered", "failed", "refused"), help="only these")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    again = verbs.add_parser("redeliver", help="send a delivery again, with the same webhook-id")
    again.add_argument("id", help="the delivery's webhook-id (msg_…), as listed")


def _schedule_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """`keel schedule create|list|pause|unpause|delete`: scheduled agents, through the gateway."""
    schedule = commands.add_parser("schedule", help="run an agent on a schedule (Temporal Schedules)")
    verbs = schedule.add_subparsers(dest="schedule_command", required=True)
    create = verbs.add_parser("create", help="create a schedule: an agent, a message, a cron or an interval")
    create.add_argument("id", help="the schedule's id: letters, digits, ., _, -")
    create.add_argument("--purpose", required=True, help="the agent each firing runs")
    create.add_argument("--message", required=True, help="what each run is asked")
    timing = create.add_mutually_exclusive_group(required=True)
    timing.add_argument("--cron", help='a cron expression, e.g. "0 9 * * 1-5"')
    timing.add_argument("--every", type=int, metavar="SECONDS", help="fire every SECONDS seconds")
    create.add_argument("--timezone", default="UTC", help="the IANA time zone of --cron (default UTC)")
    create.add_argument(
        "--overlap",
        default="skip",
        choices=("skip", "buffer_one", "buffer_all", "cancel_other", "terminate_other", "allow_all"),
        help="what a firing does while the last one's run still goes (default skip)",
    )
    verbs.add_parser("list", help="your schedules, their state and next firing")
    for verb in ("pause", "unpause", "delete"):
        verbs.add_parser(verb, help=f"{verb} a schedule").add_argument("id", help="the schedule's id")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    if getattr(args, "app", None):
        # The processes read it from the environment, as `keel dev` hands it to the ones it starts.
        os.environ["KEEL_APP"] = args.app
    if args.command in ("check", "dev", "worker", "api"):
        # Your app is imported from where you run the command, as `python -m` would (the `keel` script's
        # own folder is what Python puts first otherwise).
        sys.path.insert(0, os.getcwd())
    if args.command == "check":
        return _check(Out(sys.stdout))
    if args.command == "new":
        return _new(Path(args.dir), Out(sys.stdout))
    # `keel dev` is imported lazily: the client commands need none of its dependencies.
    if args.command == "dev":
        from keel.stack.dev import main as dev

        return dev()
    if args.command in ("worker", "api"):
        _become(args)

    if args.command == "api-key":
        return _api_keys(args, Out(sys.stdout))

    client = ChatClient(
        args.url or f"http://127.0.0.1:{os.environ.get('KEEL_PORT', '8000')}",
        token=os.environ.get("KEEL_TOKEN"),
    )
    out = Out()
    try:
        if args.command == "run":
            return _run(client, out, args.message, args.purpose, approve_all=args.yes)
        if args.command == "runs":
            return _runs(client, out, args.status, args.purpose, args.limit)
        if args.command == "schedule":
            return _schedule(client, out, args)
        if args.command == "webhooks":
            return _webhooks(client, out, args)
        if args.command in ("approve", "deny"):
            decide = client.approve if args.command == "approve" else client.deny
            record = decide(args.run, args.call, args.reason)
            out.line(f"{args.call}: {'approved' if record.approved else 'denied'}")
            return 0
        client.cancel(args.run, args.reason)
        out.line(f"{args.run}: cancelling")
        return 0
    except ChatError as err:
        out.line(f"keel: {err}", RED)
        return 1
    except httpx.TransportError as err:
        out.line(f"keel: cannot reach the gateway ({type(err).__name__}); is `make dev` running?", RED)
        return 1
    finally:
        client.close()


def _check(out: Out) -> int:
    """`keel check`: load the app as the gateway and the workers do, and say what it serves or what is wrong."""
    from keel.app import AppError, load_app
    from keel.settings import get_settings

    try:
        app = load_app(get_settings().app)
    except AppError as err:
        out.line(f"keel: {err}", RED)
        return 1
    for agent in app.agents.values():
        tools = ", ".join(t.name for t in agent.tools) or "no tools"
        out.line(f"{agent.name}: {agent.model or 'KEEL_MODEL'}; {tools}")
    out.line(f"{app.source}: {len(app.agents)} agent(s), ready to serve", GREEN)
    return 0


def _new(folder: Path, out: Out) -> int:
    """`keel new`: write the project, then say what to run next."""
    from keel.cli.scaffold import ScaffoldError, create_project

    try:
        written = create_project(folder)
    except ScaffoldError as err:
        Out(sys.stderr).line(f"keel: {err}", RED)
        return 2
    for path in written:
        out.line(f"  wrote {path}", DIM)
    out.line(f"{folder}: a project with one agent (support) and its tests", GREEN)
    out.line(f"next, in {folder} (its README says more):")
    for command in ("keel check --app agents", "pytest", "keel dev --app agents"):
        out.line(f"  {command}")
    return 0


def _run(client: ChatClient, out: Out, text: str, purpose: str | None, *, approve_all: bool) -> int:
    body, message = client.start(text, purpose=purpose)
    sub_runs = SubRunPrinter(
        out, lambda child, part: _answer_child(client, out, message.id, child, part, approve_all)
    )
    try:
        while True:
            _show(client.stream(body, message), message, out, sub_runs)
            if message.finish_reason != "tool-calls" or message.status == "completed":
                break
            if not _answer_waiting(message, out, approve_all):
                out.line(
                    f"The run is waiting for something this terminal can't give; it stays parked: {message.id}"
                    " (`keel approve`, `keel deny` or the chat page decide it; `keel cancel` ends it)",
                    YELLOW,
                )
                return 1
            body = client.answer(body, message)
    except KeyboardInterrupt:
        if message.id:
            try:
                client.cancel(message.id, "Ctrl-C in keel run")
            except KeyboardInterrupt:  # a second Ctrl-C: stop asking, say what state the run may be in
                out.line(f"\nnot cancelled, it may still be running: keel cancel {message.id}", YELLOW)
                return 130
            out.line(f"\ncancelled {message.id}", YELLOW)
        return 130
    out.line()
    colour = GREEN if message.status == "completed" else YELLOW if message.status != "failed" else RED
    out.line(f"{message.status} · {message.id}", colour)
    return 0 if message.status == "completed" else 1


def _show(
    chunks: Iterable[UIMessageChunk], message: AssistantMessage, out: Out, sub_runs: SubRunPrinter
) -> None:
    tools = message.tools
    for chunk in chunks:
        if not (isinstance(chunk, ToolOutputAvailableChunk) and chunk.preliminary):
            sub_runs.interrupted()
        match chunk:
            case TextDeltaChunk(delta=delta):
                out.write(delta)
            case TextEndChunk():
                out.write("\n")
            case ToolInputAvailableChunk(tool_name=name, input=arguments):
                out.line(f"→ {name}({short(arguments)})", DIM)
            case ToolOutputAvailableChunk(tool_call_id=call_id, output=output, preliminary=True):
                sub_runs.progress(call_id, output)  # a sub-agent at work: its block, under the call
            case ToolOutputAvailableChunk(tool_call_id=call_id, output=output):
                sub_runs.ended(call_id, "completed")
                out.line(f"✓ {tools()[call_id].tool_name}: {short(output)}", GREEN)
            case ToolOutputErrorChunk(tool_call_id=call_id, error_text=error_text):
                sub_runs.ended(call_id, "failed")
                out.line(f"✗ {tools()[call_id].tool_name}: {error_text}", RED)
            case ToolOutputDeniedChunk(tool_call_id=call_id):
                out.line(f"✗ {tools()[call_id].tool_name}: denied", RED)
            case ErrorChunk(error_text=error_text):
                out.line(f"error: {error_text}", RED)
            case OutputDataChunk(data=output):
                # Structured output: the run's validated answer, whole and readable.
                out.line("output:", BOLD)
                out.line(json.dumps(output, indent=2, ensure_ascii=False))


def _answer_waiting(message: AssistantMessage, out: Out, approve_all: bool) -> bool:
    """Ask the person at the terminal; False when nobody here can give what the run waits for (a
    client-side tool, or stdin closed)."""
    answered = False
    for part in message.tools().values():
        if part.state == "approval-requested":
            reply = (
                "y" if approve_all else _ask(out, f"Approve {part.tool_name}({short(part.input)})? [y/N] ")
            )
            if reply is None:
                return False
            part.state = "approval-responded"
            part.approval = ToolApproval(id=part.tool_call_id, approved=reply.strip().lower() in ("y", "yes"))
            answered = True
        elif part.state == "input-available" and part.tool_name == "ask_user":
            reply = _ask(out, f"{part.input.get('question', 'The agent asks')}\n> ")
            if reply is None:
                return False
            part.state, part.output = "output-available", reply
            answered = True
    return answered


def _answer_child(
    client: ChatClient, out: Out, run_id: str, child_run_id: str, part: dict[str, Any], approve_all: bool
) -> None:
    """A sub-agent's call waits for approval: ask here, and send the decision through the run's own
    approvals endpoint, which passes it on to the child (or grandchild) waiting for that call. Nobody to
    ask: say how to decide it later."""
    name, call_id = str(part.get("type", "")).removeprefix("tool-"), str(part.get("toolCallId"))
    reply = (
        "y"
        if approve_all
        else _ask(out, f"Approve {name}({short(part.get('input'))}) for {child_run_id}? [y/N] ")
    )
    if reply is None:
        out.line(f"it waits: keel approve {run_id} {call_id} (or keel deny)", YELLOW)
        return
    approved = reply.strip().lower() in ("y", "yes")
    (client.approve if approved else client.deny)(run_id, call_id)


def _ask(out: Out, question: str) -> str | None:
    """The person's reply; None when stdin is closed (a script, /dev/null): nobody here can answer."""
    out.write(out.paint(question, BOLD))
    line = sys.stdin.readline()
    if not line:
        out.line()
        return None
    return line.rstrip("\n")


def _runs(client: ChatClient, out: Out, status: str | None, purpose: str | None, limit: int) -> int:
    rows = client.get("/api/runs", status=status, purpose=purpose, limit=limit)
    if not rows:
        out.line("no runs")
        return 0
    columns = ["agent_run_id", "status", "purpose", "step_count", "started_at"]
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    out.line("  ".join(c.ljust(widths[c]) for c in columns), BOLD)
    for row in rows:
        out.line("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))
    return 0


def _schedule(client: ChatClient, out: Out, args: argparse.Namespace) -> int:
    if args.schedule_command == "create":
        try:
            request = ScheduleRequest(
                schedule_id=args.id,
                purpose=args.purpose,
                message=args.message,
                cron=args.cron,
                interval_seconds=args.every,
                timezone=args.timezone,
                overlap=args.overlap,
            )
        except ValidationError as err:  # refused here as the gateway would, without asking it
            problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
            out.line(f"keel: {problems}", RED)
            return 2
        created = client.create_schedule(request)
        out.line(f"{created.schedule_id}: created; next run {_next_run(created)}", GREEN)
        return 0
    if args.schedule_command == "list":
        schedules = client.list_schedules()
        if not schedules:
            out.line("no schedules")
        for found in schedules:
            timing = (
                f"cron {found.cron} ({found.timezone})" if found.cron else f"every {found.interval_seconds}s"
            )
            state = "paused" if found.paused else f"next {_next_run(found)}"
            out.line(
                f"{found.schedule_id}  {found.purpose}  {timing}  {found.overlap}  {state}  runs {found.actions}"
            )
        return 0
    if args.schedule_command == "delete":
        client.delete_schedule(args.id)
        out.line(f"{args.id}: deleted")
        return 0
    changed = client.pause_schedule(args.id, paused=args.schedule_command == "pause")
    out.line(f"{changed.schedule_id}: {'paused' if changed.paused else 'unpaused'}")
    return 0


def _next_run(schedule: ScheduleView) -> str:
    return f"{schedule.next_runs[0]:%Y-%m-%d %H:%M:%S %Z}" if schedule.next_runs else "none"


def _webhooks(client: ChatClient, out: Out, args: argparse.Namespace) -> int:
    if args.webhooks_command == "redeliver":
        again = client.redeliver_webhook(args.id)
        out.line(f"{again.id}: redelivering {again.event_type} to {again.endpoint}", GREEN)
        return 0
    deliveries = client.list_webhook_deliveries(agent_run_id=args.run, status=args.status, limit=args.limit)
    if not deliveries:
        out.line("no webhook deliveries")
        return 0
    rows = [
        [
            d.id,
            d.agent_run_id,
            d.event_type,
            d.status,
            str(d.attempts),
            str(d.last_status_code or ""),
            d.endpoint,
        ]
        for d in deliveries
    ]
    header = ["webhook_id", "agent_run_id", "event", "status", "attempts", "http", "endpoint"]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    out.line("  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)), BOLD)
    for row in rows:
        out.line("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return 0


def _become(args: argparse.Namespace) -> NoReturn:
    """`keel worker|api`: become that process, as `python -m` starts it. A process of its own, not an
    import: `keel` is the bottom layer, and the worker and the gateway are built on it."""
    command = ["-m", "worker", "--queue", args.queue] if args.command == "worker" else ["-m", "api"]
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, *command])


def _api_keys(args: argparse.Namespace, out: Out) -> int:
    """`keel api-key`: straight to PostgreSQL (DATABASE_URL), so it works with the gateway down."""
    import asyncio

    from keel.settings import get_settings
    from keel.storage.api_keys import create_api_key, list_api_keys, revoke_api_key
    from keel.storage.store import create_pool

    async def act() -> int:
        pool = await create_pool(get_settings().require_database_url(), max_size=1)
        try:
            if args.key_command == "create":
                key = await create_api_key(pool, args.user, admin=args.admin)
                out.line(key)
                print(
                    f"an API key for {args.user}{' (admin)' if args.admin else ''}: shown once, stored hashed",
                    file=sys.stderr,
                )
                return 0
            if args.key_command == "revoke":
                if await revoke_api_key(pool, args.prefix):
                    out.line(f"revoked {args.prefix}")
                    return 0
                out.line(f"keel: no live API key {args.prefix!r}", RED)
                return 1
            for row in await list_api_keys(pool):
                state = f"revoked {row['revoked_at']:%Y-%m-%d %H:%M}" if row["revoked_at"] else "live"
                role = "admin" if row["admin"] else "user"
                used = f"used {row['last_used_at']:%Y-%m-%d %H:%M}" if row["last_used_at"] else "never used"
                out.line(
                    f"{row['prefix']}  {row['user_id']}  {role}  {row['created_at']:%Y-%m-%d %H:%M}"
                    f"  {used}  {state}"
                )
            return 0
        finally:
            await pool.close()

    return asyncio.run(act())


if __name__ == "__main__":
    sys.exit(main())
