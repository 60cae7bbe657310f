"""Provider limits shared by every worker (KEEL_PROVIDER_LIMITS), through the real stack: workers of a test's
own (tests/crash_stack.py) whose openai: routes reach the fake vendors, whose `limit<n>per<s>s` models
answer 429 past n requests in any s seconds, as a provider does past its rate limit.

The limits' window is shortened (KEEL_PROVIDER_WINDOW_SECONDS) so that a limit fills and frees within
seconds; `rpm` then means requests per that window.
"""

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from keel_examples import assistant
from pydantic import ValidationError
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client, WorkflowHandle

from activities.models.errors import retry_after
from keel.contracts import Message, RunState
from keel.provider_limits import RouteLimit, governing_pattern, is_limited
from keel.run_start import first_messages, run_input, start_run
from keel.settings import Settings
from keel.stack.embedded import EmbeddedPostgres, TemporalDevServer
from keel.storage.provider_limits import Grant, ProviderLedger, Wait
from keel.storage.store import RunStore
from tests.conftest import FAKE_OPENAI_KEY, NO_CONTEXT, Keel
from tests.crash_stack import CrashStack, Process, task_takers, until
from tests.fake_vendors import FakeVendors, Recorded

WINDOW_S = 4


@pytest.fixture
def stack(
    temporal_server: TemporalDevServer,
    postgres: EmbeddedPostgres,
    keel: Keel,
    fake_vendors: FakeVendors,
    tmp_path: Path,
) -> Iterator[CrashStack]:
    """A stack of the test's own; each test sets its limits in `stack.env` before starting processes."""
    env = {
        "OPENAI_API_KEY": FAKE_OPENAI_KEY,
        "OPENAI_BASE_URL": fake_vendors.openai_base_url,
        "KEEL_PROVIDER_WINDOW_SECONDS": str(WINDOW_S),
    }
    with CrashStack(temporal_server, postgres, tmp_path, keel.env["KEEL_CODEC_KEY_FILE"], **env) as s:
        yield s


def limit(stack: CrashStack, route: str, **limits: int) -> None:
    stack.env["KEEL_PROVIDER_LIMITS"] = json.dumps({route: limits})


async def start(
    stack: CrashStack, store: RunStore, route: str, text: str = "hello", chat_id: str | None = None
) -> WorkflowHandle[Any, RunState]:
    """A run of the example assistant on `route`, obeying the limits the stack's workers have."""
    messages = first_messages(assistant, NO_CONTEXT, [Message(role="user", content=text)])
    patterns = list(json.loads(stack.env.get("KEEL_PROVIDER_LIMITS", "{}")))
    run = run_input(assistant.spec(route), messages, chat_id=chat_id, limited_routes=patterns)
    await store.put_messages(run.agent_run_id, 0, messages)
    return await start_run(await stack.temporal(), run, stack.env["KEEL_TASK_QUEUE"])


async def completed(handles: list[WorkflowHandle[Any, RunState]]) -> list[RunState]:
    states = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), timeout=120)
    assert [s.status for s in states] == ["completed"] * len(handles), [s.detail for s in states]
    return states


def most_in_any_window(requests: list[Recorded], window: float) -> int:
    """The most requests that arrived within any `window` seconds."""
    times = sorted(r.at for r in requests)
    return max((sum(1 for t in times[i:] if t < start + window) for i, start in enumerate(times)), default=0)


async def metric(worker: Process, name: str) -> float:
    """The sum of a metric's samples on a worker's /metrics."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{worker.env['KEEL_WORKER_METRICS_PORT']}/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def test_two_workers_sharing_one_rpm_limit_never_exceed_it_together(
    stack: CrashStack, store: RunStore, fake_vendors: FakeVendors
) -> None:
    model = f"limit3per{WINDOW_S}s-{uuid.uuid4().hex[:6]}"
    limit(stack, f"openai:{model}", rpm=3)
    workers = [stack.worker("worker-a"), stack.worker("worker-b")]
    await stack.start(*workers)

    handles = [await start(stack, store, f"openai:{model}") for _ in range(8)]
    await completed(handles)

    requests = fake_vendors.of(model)
    assert len(requests) == 8 and not any(r.refused for r in requests)  # no 429: nobody went past the limit
    assert most_in_any_window(requests, WINDOW_S) <= 3
    # Both workers made calls (inside the workflow tasks they took): the limit held for them together.
    takers = [await task_takers(await stack.temporal(), h.id) for h in handles]
    assert len(set().union(*(t["workflow"] for t in takers))) == 2
    assert sum([await metric(w, "keel_provider_capacity_waits_total") for w in workers]) >= 5


async def test_a_429_seen_by_one_run_delays_another_runs_call_on_the_same_route(
    stack: CrashStack, store: RunStore, fake_vendors: FakeVendors
) -> None:
    model = f"status429x1-{uuid.uuid4().hex[:6]}"  # the first request is a 429 with retry-after-ms 1500
    limit(stack, f"openai:{model}", rpm=1000)
    worker = stack.worker()
    await stack.start(worker)

    first = await start(stack, store, f"openai:{model}", "hello first")
    await until(lambda: fake_vendors.count(model) == 1, "the first run's 429")
    refused_at = fake_vendors.of(model)[0].at
    second = await start(stack, store, f"openai:{model}", "hello second")
    await completed([first, second])

    [seconds_call] = [r for r in fake_vendors.of(model) if "hello second" in json.dumps(r.body)]
    # Without the shared cooldown the second run's call would have left at once; it waited out Retry-After.
    assert seconds_call.at - refused_at >= 1.4, seconds_call.at - refused_at
    assert fake_vendors.count(model) == 3  # the 429, the first run's retry, the second run's call
    assert await metric(worker, "keel_provider_rate_limited_total") == 1


async def test_a_waiting_run_says_so_and_holds_no_worker_slot(
    stack: CrashStack, store: RunStore, fake_vendors: FakeVendors
) -> None:
    model = f"limit1per{WINDOW_S}s-{uuid.uuid4().hex[:6]}"
    limit(stack, f"openai:{model}", rpm=1)
    await stack.start(stack.worker())

    handles = [await start(stack, store, f"openai:{model}") for _ in range(4)]
    temporal = await stack.temporal()

    async def a_waiting_run() -> tuple[str, Any] | None:
        for handle in handles:
            if "waiting for provider capacity" in await _current_details(temporal, handle.id):
                return handle.id, (await handle.describe()).raw_description
        return None

    run_id, description = await until(a_waiting_run, "a run waiting for capacity", within=30)
    # Waiting is a durable timer: no activity is pending, so no worker slot is held.
    assert list(description.pending_activities) == []
    record = await store.pool.fetchrow("SELECT status, detail FROM agent_runs WHERE id = $1", run_id)
    assert record["status"] == "running" and "waiting for provider capacity" in record["detail"]

    await completed(handles)
    assert not any(r.refused for r in fake_vendors.of(model))
    # The record's waiting line is gone once the run got its capacity.
    record = await store.pool.fetchrow("SELECT detail FROM agent_runs WHERE id = $1", run_id)
    assert not record["detail"]


async def _current_details(temporal: Client, run_id: str) -> str:
    """The run's current details as the Temporal Web UI shows them (workflow.set_current_details)."""
    metadata = await temporal.get_workflow_handle(run_id).query(
        "__temporal_workflow_metadata", result_type=WorkflowMetadata
    )
    return str(metadata.current_details)


async def test_interactive_runs_go_before_batch_runs(
    stack: CrashStack, store: RunStore, fake_vendors: FakeVendors
) -> None:
    model = f"limit2per{WINDOW_S}s-{uuid.uuid4().hex[:6]}"
    limit(stack, f"openai:{model}", rpm=2)
    await stack.start(stack.worker())

    batch = [await start(stack, store, f"openai:{model}", f"hello batch {i}") for i in range(6)]
    await until(lambda: fake_vendors.count(model) >= 2, "the first window filled by batch runs")
    chat = await start(stack, store, f"openai:{model}", "hello from a chat", chat_id=f"chat-{uuid.uuid4()}")
    await completed([*batch, chat])

    requests = fake_vendors.of(model)
    assert not any(r.refused for r in requests)
    order = ["chat" if "hello from a chat" in json.dumps(r.body) else "batch" for r in requests]
    # The chat's call took one of the next window's two slots, ahead of the four batch runs still waiting.
    assert order.index("chat") in (2, 3), order


async def test_a_lease_of_a_worker_that_died_mid_call_expires(store: RunStore) -> None:
    pattern = f"openai:lease-{uuid.uuid4().hex[:6]}"
    ledger = ProviderLedger(store.pool, {pattern: _limit(concurrency=1)}, lease_s=2)
    first = await ledger.reserve(pattern, 100, "batch")
    assert isinstance(first, Grant)
    # The worker holding it is killed: nothing ever releases the lease.
    assert isinstance(await ledger.reserve(pattern, 100, "batch"), Wait)
    await asyncio.sleep(2.2)
    assert isinstance(await ledger.reserve(pattern, 100, "batch"), Grant)


async def test_tokens_reported_replace_the_estimate(store: RunStore) -> None:
    pattern = f"openai:tpm-{uuid.uuid4().hex[:6]}"
    ledger = ProviderLedger(store.pool, {pattern: _limit(tpm=1000)})
    grant = await ledger.reserve(pattern, 900, "batch")
    assert isinstance(grant, Grant)
    assert isinstance(await ledger.reserve(pattern, 200, "batch"), Wait)  # 900 + 200 > 1000
    await ledger.release(grant.lease_id, 300)  # the call really used 300
    assert isinstance(await ledger.reserve(pattern, 200, "batch"), Grant)
    assert (await ledger.usage(pattern)).tokens == 500


async def test_runs_whose_routes_have_no_limit_ask_nothing(
    stack: CrashStack, store: RunStore, fake_vendors: FakeVendors
) -> None:
    limit(stack, "openai:gpt-4o", rpm=10)
    await stack.start(stack.worker())

    unlimited = await start(stack, store, "openai:gpt-4o-mini")
    limited = await start(stack, store, "openai:gpt-4o")
    await completed([unlimited, limited])

    # The limited run's step asked for capacity (a local activity's marker); the other asked nothing, so its
    # commands are those a run issued before limits existed (tests/test_replay.py replays such histories).
    assert "reserve_capacity" in str((await limited.fetch_history()).events)
    assert "reserve_capacity" not in str((await unlimited.fetch_history()).events)


def _limit(**values: int) -> RouteLimit:
    return RouteLimit.model_validate(values)


def test_the_most_specific_pattern_governs_a_route() -> None:
    patterns = ["*", "openai:*", "openai:gpt-4o*", "openai:gpt-4o"]
    assert governing_pattern("openai:gpt-4o", patterns) == "openai:gpt-4o"
    assert governing_pattern("openai:gpt-4o-mini?tools=json", patterns) == "openai:gpt-4o*"
    assert governing_pattern("openai:o3", patterns) == "openai:*"
    assert governing_pattern("anthropic:claude-haiku-4-5", patterns) == "*"
    assert governing_pattern("anthropic:claude-haiku-4-5", ["openai:*"]) is None
    assert is_limited("scripted,openai:gpt-4o", ["openai:*"])
    assert not is_limited("scripted", ["openai:*"])


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ('{"openai:*": {"rpm": 0}}', "'openai:*': rpm: Input should be greater than 0"),
        ('{"openai:*": {}}', "give at least one of rpm, tpm, concurrency"),
        ('{"openai:*": {"rpm": 5, "rps": 1}}', "rps: Extra inputs are not permitted"),
        ('{"acme:*": {"rpm": 5}}', "unknown provider 'acme'"),
        ('{"openai": {"rpm": 5}}', "write `provider:model`"),
        ("not json", "is not JSON"),
    ],
)
def test_a_bad_limit_stops_startup_saying_what_is_wrong(value: str, problem: str) -> None:
    with pytest.raises(ValidationError, match="KEEL_PROVIDER_LIMITS") as refused:
        Settings(KEEL_PROVIDER_LIMITS=value)
    assert problem in str(refused.value)


def test_a_429s_rate_limit_headers_say_how_long_to_pause_without_retry_after() -> None:
    exhausted = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"}
    assert retry_after(exhausted) == 360
    # Only an exhausted limit counts; Retry-After, when given, wins.
    tokens = {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1.5s"}
    assert (
        retry_after({**tokens, "x-ratelimit-remaining-requests": "7", "x-ratelimit-reset-requests": "9s"})
        == 1.5
    )
    assert retry_after({**exhausted, "retry-after": "2"}) == 2
    anthropic = {
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2099-01-01T00:00:00Z",
    }
    assert (retry_after(anthropic) or 0) > 3600


async def test_waiters_get_slots_of_the_next_window_one_by_one_and_a_chat_takes_the_first(
    store: RunStore,
) -> None:
    pattern = f"openai:book-{uuid.uuid4().hex[:6]}"
    ledger = ProviderLedger(store.pool, {pattern: _limit(rpm=2)}, window_s=2)
    assert isinstance(await ledger.reserve(pattern, 1, "batch"), Grant)
    await asyncio.sleep(0.3)
    assert isinstance(await ledger.reserve(pattern, 1, "batch"), Grant)
    first, second = [await ledger.reserve(pattern, 1, "batch") for _ in range(2)]
    assert isinstance(first, Wait) and isinstance(second, Wait) and first.ticket and second.ticket
    # Each waiter has a slot of its own, as the window frees them, not one instant for all.
    assert 1.5 < first.seconds < second.seconds - 0.2 and second.seconds <= 2.1
    # A chat arriving now takes the earliest booked slot; the batch caller that had it gets a later one.
    chat = await ledger.reserve(pattern, 1, "interactive")
    assert isinstance(chat, Wait) and chat.ticket and chat.seconds == pytest.approx(first.seconds, abs=0.05)
    bumped = await ledger.reserve(pattern, 1, "batch", first.ticket)
    assert isinstance(bumped, Wait) and bumped.ticket == first.ticket and bumped.seconds > 3.5
    # Back too early: wait on; once due: granted with the same lease.
    assert isinstance(await ledger.reserve(pattern, 1, "interactive", chat.ticket), Wait)
    await asyncio.sleep(chat.seconds)
    assert await ledger.reserve(pattern, 1, "interactive", chat.ticket) == Grant(chat.ticket, pattern)
