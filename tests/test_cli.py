"""The `keel` command against the real stack, as a subprocess: run, approve inline, answer, cancel."""

import signal
import subprocess
import sys
import time

from tests.conftest import ROOT, Keel


def keel_cli(keel: Keel, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "keel.cli.main", "--url", keel.gateway_url, *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_run_streams_tool_calls_and_the_answer_as_plain_text_in_a_pipe(keel: Keel) -> None:
    result = keel_cli(keel, "run", "calculate (2 + 3) * 4")

    assert result.returncode == 0, result.stderr
    assert '→ calculate({"expression": "(2 + 3) * 4"})' in result.stdout
    assert '✓ calculate: {"expression": "(2 + 3) * 4", "value": 20}' in result.stdout
    assert "\033[" not in result.stdout  # no colour codes in a pipe
    assert result.stdout.strip().splitlines()[-1].startswith("completed · run-")


def test_run_asks_for_approval_inline(keel: Keel) -> None:
    approved = keel_cli(
        keel,
        "run",
        "plan, write and publish a lesson on pipes",
        "--purpose",
        "learnpack-lesson-writer",
        stdin="y\n",
    )
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert "Approve publish_package(" in approved.stdout
    assert '✓ publish_package: {"slug": "learn-pipes"' in approved.stdout
    assert (keel.data_dir / "packages" / "learn-pipes" / "README.md").exists()

    denied = keel_cli(
        keel,
        "run",
        "plan, write and publish a lesson on sockets",
        "--purpose",
        "learnpack-lesson-writer",
        stdin="n\n",
    )
    assert "✗ publish_package: denied" in denied.stdout
    assert not (keel.data_dir / "packages" / "learn-sockets").exists()


def test_run_answers_the_agents_question(keel: Keel) -> None:
    result = keel_cli(keel, "run", "ask me my favourite colour", stdin="green\n")

    assert result.returncode == 0, result.stdout
    assert "ask_user returned: green" in result.stdout


def test_ctrl_c_cancels_the_run(keel: Keel) -> None:
    cli = subprocess.Popen(
        [sys.executable, "-m", "keel.cli.main", "--url", keel.gateway_url, "run", "wait 8 seconds please"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    first_line = cli.stdout.readline()  # "→ wait(...)": the tool is running (up to 10 s needs no approval)
    assert first_line.startswith("→ wait"), first_line
    cli.send_signal(signal.SIGINT)
    out, _ = cli.communicate(timeout=max(1, deadline - time.monotonic()))

    assert cli.returncode == 130, out
    run_id = out.strip().split()[-1]
    # The heavy tool stops at its next heartbeat, then the run records its end.
    for _ in range(100):
        if run_id in keel_cli(keel, "runs", "--status", "cancelled").stdout:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"{run_id} never showed as cancelled")


def test_a_run_waiting_for_approval_with_nobody_at_the_terminal_stays_parked(keel: Keel) -> None:
    result = keel_cli(keel, "run", "wait 20 seconds please")  # over 10 s: needs approval; stdin is empty

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Approve wait(" in result.stdout and "it stays parked: run-" in result.stdout
    run_id = result.stdout.split("it stays parked: ")[1].split()[0]
    assert run_id in keel_cli(keel, "runs", "--status", "waiting_for_approval").stdout
    assert keel_cli(keel, "cancel", run_id).returncode == 0


def test_approve_deny_and_cancel_commands(keel: Keel) -> None:
    unknown = keel_cli(keel, "approve", "run-00000000-0000-0000-0000-000000000000", "call_1")
    assert unknown.returncode == 1 and "HTTP 404" in unknown.stdout
    unreachable = subprocess.run(
        [sys.executable, "-m", "keel.cli.main", "--url", "http://127.0.0.1:9", "cancel", "run-x"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert unreachable.returncode == 1 and "cannot reach the gateway" in unreachable.stdout
