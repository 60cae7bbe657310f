"""Keel facing the internet: authentication, per-user isolation, input limits and rate limits, secrets kept
out of logs. Against the `auth` gateway (KEEL_AUTH=jwt,api-key; see EXTRA_GATEWAYS), on the same worker."""

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fastapi import HTTPException
from temporalio.client import Client

from keel.cli import main as cli
from keel.settings import get_settings
from keel.stack.embedded import free_port
from keel.storage.api_keys import create_api_key
from keel.storage.store import RunStore
from tests.conftest import AUTH_JWT_SECRET, EXAMPLES, ROOT, Keel
from tests.ui_stream import assistant_message, chat_body, parse

PUBLISH = "plan, write and publish a lesson on closures"
# Everything issued here, to look for in the logs at the end.
ISSUED: list[str] = []


def token(sub: str | None, *, role: Any = None, secret: str = AUTH_JWT_SECRET, ttl: float = 3600) -> str:
    claims: dict[str, Any] = {"exp": int(time.time() + ttl)}
    if sub is not None:
        claims["sub"] = sub
    if role is not None:
        claims["role"] = role
    encoded = jwt.encode(claims, secret, algorithm="HS256")
    ISSUED.append(encoded)
    return encoded


def bearer(credential: str) -> dict[str, str]:
    return {"authorization": f"Bearer {credential}"}


def user_id(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def auth_url(gateways: dict[str, str]) -> str:
    return gateways["auth"]


@pytest.fixture
async def client(auth_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=auth_url, timeout=30) as http:
        yield http


async def start_waiting_run(client: httpx.AsyncClient, headers: dict[str, str]) -> tuple[dict[str, Any], Any]:
    """A run of the caller's that waits for the approval of publish_package."""
    body = chat_body(PUBLISH, purpose="learnpack-lesson-writer")
    response = await client.post("/api/chat", json=body, headers=headers)
    assert response.status_code == 200, response.text
    stream = parse(response)
    assert stream.run_status == "waiting_for_approval"
    return body, stream


def publish_call(stream: Any) -> str:
    return next(
        c["toolCallId"] for c in stream.of_type("tool-input-available") if c["toolName"] == "publish_package"
    )


async def test_public_routes_and_401_without_valid_credentials(
    client: httpx.AsyncClient, store: RunStore
) -> None:
    for path in ("/healthz", "/metrics", "/", "/runs", "/openapi.json"):
        assert (await client.get(path)).status_code == 200, path
    revoked = await create_api_key(store.pool, user_id("revoked"))
    ISSUED.append(revoked)
    await store.pool.execute("UPDATE api_keys SET revoked_at = now() WHERE prefix = $1", revoked[:17])
    bad_credentials: list[dict[str, str]] = [
        {},
        bearer("not-a-token"),
        bearer(token("mallory", secret="another-secret-of-at-least-32-bytes!!")),
        bearer(token("alice", ttl=-60)),  # expired
        bearer(token(None)),  # no sub
        bearer(jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, key=None, algorithm="none")),
        bearer("keel_0123456789ab_guessed"),
        {"x-api-key": "keel_0123456789ab_guessed"},
        {"x-api-key": revoked},
        {"authorization": "Basic YWxpY2U6cGFzcw=="},
    ]
    run = f"run-{uuid.uuid4()}"
    requests = [
        ("GET", "/api/runs", None),
        ("GET", "/api/purposes", None),
        ("GET", f"/api/runs/{run}", None),
        ("GET", f"/api/runs/{run}/events", None),
        ("GET", f"/api/runs/{run}/timeline", None),
        ("GET", "/api/chat/c1/stream", None),
        ("POST", "/api/chat", chat_body("hello")),
        ("POST", f"/api/runs/{run}/approvals/call_1", {"approved": True}),
        ("POST", f"/api/runs/{run}/answer", {"text": "blue"}),
        ("POST", f"/api/runs/{run}/tool-results/call_1", {"output": 1}),
        ("POST", f"/api/runs/{run}/cancel", {}),
        ("POST", "/codec/decode", {"payloads": []}),
    ]
    for headers in bad_credentials:
        for method, path, body in requests:
            response = await client.request(method, path, json=body, headers=headers)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            for value in headers.values():
                assert value.split()[-1] not in response.text  # no credential is echoed back


async def test_users_see_only_their_own_runs_and_admins_see_all(
    client: httpx.AsyncClient, store: RunStore, temporal: Client
) -> None:
    alice_id, bob_id, carol_id, root_id = user_id("alice"), user_id("bob"), user_id("carol"), user_id("root")
    alice = bearer(token(alice_id))
    bob = bearer(token(bob_id, role="member"))
    carol_key = await create_api_key(store.pool, carol_id)
    admin_key = await create_api_key(store.pool, user_id("ops"), admin=True)
    ISSUED.extend([carol_key, admin_key])
    carol = {"x-api-key": carol_key}
    admins = [
        bearer(token(root_id, role="admin")),
        bearer(token(root_id, role=["x", "admin"])),
        bearer(admin_key),
    ]

    body, first = await start_waiting_run(client, alice)
    run = first.response.headers["x-agent-run-id"]
    call = publish_call(first)
    chat_id = body["id"]
    # Recorded on the workflow (input and memo) and in agent_runs.
    description = await temporal.get_workflow_handle(run).describe()
    assert (await description.memo()) == {"user_id": alice_id}

    unknown = f"run-{uuid.uuid4()}"
    continuation = {
        "id": chat_id,
        "messages": [*body["messages"], assistant_message(first, approvals={call: True})],
    }
    foreign = [
        ("GET", f"/api/runs/{run}", None),
        ("GET", f"/api/runs/{run}/events", None),
        ("GET", f"/api/runs/{run}/events?last_event_id=0", None),
        ("GET", f"/api/runs/{run}/timeline", None),
        ("POST", f"/api/runs/{run}/approvals/{call}", {"approved": True}),
        ("POST", f"/api/runs/{run}/answer", {"text": "blue"}),
        ("POST", f"/api/runs/{run}/tool-results/{call}", {"output": {"x": 1}}),
        ("POST", f"/api/runs/{run}/cancel", {"reason": "not mine"}),
        ("POST", "/api/chat", continuation),  # the SSE continuation of someone else's run
        ("GET", f"/api/chat/{chat_id}/stream", None),  # the SSE resume of someone else's chat
        ("POST", "/api/chat", chat_body("hijack this chat", chat_id=chat_id)),
    ]
    for headers in (bob, carol):
        for method, path, payload in foreign:
            response = await client.request(method, path, json=payload, headers=headers)
            assert response.status_code == 404, (method, path, response.text)
            # The same answer as for a run that does not exist: ids leak nothing.
            if run in path:
                same = await client.request(method, path.replace(run, unknown), json=payload, headers=headers)
                assert (same.status_code, same.json()["detail"].replace(unknown, run)) == (
                    404,
                    response.json()["detail"],
                ), path
        listed = await client.get("/api/runs", params={"limit": 500}, headers=headers)
        assert run not in {r["agent_run_id"] for r in listed.json()}
        assert (await client.get("/api/runs", params={"user": alice_id}, headers=headers)).json() == []
        assert (await client.get("/api/runs", params={"chat_id": chat_id}, headers=headers)).json() == []

    # Still waiting: nobody else touched it.
    mine = await client.get(f"/api/runs/{run}", headers=alice)
    assert mine.status_code == 200 and mine.json()["status"] == "waiting_for_approval"
    assert mine.json()["user_id"] == alice_id
    own = await client.get("/api/runs", params={"chat_id": chat_id}, headers=alice)
    assert [(r["agent_run_id"], r["user_id"]) for r in own.json()] == [(run, alice_id)]
    assert (await client.get(f"/api/runs/{run}/timeline", headers=alice)).json()["run"]["user_id"] == alice_id
    assert (await client.get(f"/api/chat/{chat_id}/stream", headers=alice)).status_code == 200

    for headers in admins:
        assert (await client.get(f"/api/runs/{run}", headers=headers)).status_code == 200
        assert (await client.get(f"/api/runs/{run}/timeline", headers=headers)).status_code == 200
        listed = await client.get("/api/runs", params={"user": alice_id}, headers=headers)
        assert [r["agent_run_id"] for r in listed.json()] == [run]

    # Alice approves through the SSE continuation: the decision names her, not the client's word.
    rest = await client.post("/api/chat", json=continuation, headers=alice)
    assert rest.status_code == 200, rest.text
    state = (await client.get(f"/api/runs/{run}", headers=alice)).json()
    assert state["approvals"][0]["approver"] == alice_id

    # An admin decides someone else's approval, and is recorded as the approver.
    body2, second = await start_waiting_run(client, bob)
    run2 = second.response.headers["x-agent-run-id"]
    decided = await client.post(
        f"/api/runs/{run2}/approvals/{publish_call(second)}", json={"approved": False}, headers=admins[0]
    )
    assert decided.status_code == 200 and decided.json()["approver"] == root_id
    # Admins read any chat but start runs only in their own: a chat never gets a second owner.
    hijack = await client.post("/api/chat", json=chat_body("mine now", chat_id=chat_id), headers=admins[0])
    assert hijack.status_code == 404
    assert (await client.get(f"/api/chat/{chat_id}/stream", headers=alice)).status_code in (200, 204)


async def test_run_starts_are_rate_limited_per_user(client: httpx.AsyncClient) -> None:
    limited, other = bearer(token(user_id("eager"))), bearer(token(user_id("patient")))

    async def start(headers: dict[str, str]) -> httpx.Response:
        return await client.post("/api/chat", json=chat_body("hello there"), headers=headers)

    # The auth gateway allows five starts a minute per user.
    assert [r.status_code for r in await asyncio.gather(*(start(limited) for _ in range(5)))] == [200] * 5
    refused = await start(limited)
    assert refused.status_code == 429, refused.text
    assert 1 <= int(refused.headers["retry-after"]) <= 12
    assert "too many runs" in refused.json()["detail"]
    # Other users have buckets of their own, and reading is not limited.
    assert (await start(other)).status_code == 200
    assert (await client.get("/api/runs", headers=limited)).status_code == 200


async def test_bodies_over_the_limit_are_413_before_parsing(
    client: httpx.AsyncClient, http: httpx.AsyncClient
) -> None:
    headers = bearer(token(user_id("big")))
    huge = b'{"id": "c", "messages": [' + b" " * 2_100_000 + b"]}"
    for target, extra in ((client, headers), (http, {})):
        response = await target.post(
            "/api/chat", content=huge, headers={**extra, "content-type": "application/json"}
        )
        assert response.status_code == 413 and "larger than" in response.json()["detail"]

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(30):
            yield b" " * 100_000

    response = await client.post(
        "/api/chat", content=chunked(), headers={**headers, "content-type": "application/json"}
    )
    assert response.status_code == 413


async def test_codec_endpoint_is_for_admins_when_auth_is_on(client: httpx.AsyncClient) -> None:
    body = {"payloads": [{"metadata": {"encoding": "anNvbi9wbGFpbg=="}, "data": "eyJhIjoxfQ=="}]}
    assert (await client.post("/codec/encode", json=body)).status_code == 401
    assert (await client.post("/codec/encode", json=body, headers=bearer(token("u1")))).status_code == 403
    admin = bearer(token("ops", role="admin"))
    sealed = await client.post("/codec/encode", json=body, headers=admin)
    assert sealed.status_code == 200
    opened = await client.post("/codec/decode", content=sealed.content, headers=admin)
    assert opened.status_code == 200 and opened.json() == body


def _gateway(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_no_auth_off_loopback_and_jwt_without_a_key_are_refused(keel: Keel) -> None:
    base = {**keel.env, "KEEL_PORT": str(free_port())}
    exposed = _gateway({**base, "KEEL_HOST": "0.0.0.0", "KEEL_AUTH": "none"})
    assert exposed.returncode != 0 and "KEEL_AUTH=none is refused on 0.0.0.0" in exposed.stderr
    keyless = {k: v for k, v in base.items() if not k.startswith("KEEL_JWT")}
    no_key = _gateway({**keyless, "KEEL_AUTH": "jwt"})
    assert no_key.returncode != 0 and "KEEL_JWT_SECRET" in no_key.stderr
    short = _gateway({**base, "KEEL_AUTH": "jwt", "KEEL_JWT_SECRET": "short"})
    assert short.returncode != 0 and "at least 32 bytes" in short.stderr and "short\n" not in short.stderr


def test_keel_api_key_create_and_revoke(
    keel: Keel, gateways: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", keel.env["DATABASE_URL"])
    get_settings.cache_clear()
    try:
        assert cli.main(["api-key", "create", "--user", "dave"]) == 0
        key = capsys.readouterr().out.strip().splitlines()[-1]
        ISSUED.append(key)
        assert key.startswith("keel_")
        url = gateways["auth"]
        assert cli.main(["api-key", "list"]) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(key[:17]))
        assert "never used" in line
        assert httpx.get(f"{url}/api/runs", headers=bearer(key)).status_code == 200
        assert cli.main(["api-key", "list"]) == 0
        listing = capsys.readouterr().out
        assert key[:17] in listing and key not in listing
        # Listing shows when each key was last used, to tell which ones are safe to revoke.
        line = next(x for x in listing.splitlines() if x.startswith(key[:17]))
        assert " used 20" in line and "never used" not in line
        assert cli.main(["api-key", "revoke", key[:17]]) == 0
        assert httpx.get(f"{url}/api/runs", headers=bearer(key)).status_code == 401
        assert cli.main(["api-key", "revoke", key[:17]]) == 1
    finally:
        get_settings.cache_clear()


async def test_tool_arguments_outside_the_schema_go_back_to_the_model_and_never_run(
    client: httpx.AsyncClient,
) -> None:
    """`wait` takes at most 300 seconds: asked for 900, the call is refused before anything runs."""
    started = time.monotonic()
    response = await client.post(
        "/api/chat", json=chat_body("wait 900 seconds"), headers=bearer(token(user_id("waiter")))
    )
    assert response.status_code == 200, response.text
    stream = parse(response)
    [call] = stream.of_type("tool-input-available")
    assert (call["toolName"], call["input"]) == ("wait", {"seconds": 900})
    [error] = stream.of_type("tool-output-error")
    assert "invalid arguments for wait" in error["errorText"]
    assert not stream.of_type("tool-approval-request")  # a broken call asks nobody
    assert stream.run_status == "completed" and time.monotonic() - started < 30


def test_arguments_that_do_not_fit_ask_nobody_for_approval() -> None:
    assert EXAMPLES.tools["wait"].policy({"seconds": 60}).needs_approval
    assert not EXAMPLES.tools["wait"].policy({"seconds": 900}).needs_approval  # refused unrun instead
    assert not EXAMPLES.tools["publish_package"].policy({"title": ""}).needs_approval


def test_secrets_never_reach_the_logs(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Runs last in this module: every token and key issued above went through the gateways."""
    logs = [p for p in Path(tmp_path_factory.getbasetemp()).glob("**/*.log") if p.is_file()]
    if not ISSUED:
        pytest.skip("runs after the tests above, which issue the tokens and keys it looks for")
    assert any(p.name == "gateway-auth.log" for p in logs)
    secrets = [
        AUTH_JWT_SECRET,
        *ISSUED,
        *(key[18:] for key in ISSUED if key.startswith("keel_")),
    ]
    for log in logs:
        text = log.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"{log.name} holds a secret"
    assert os.environ.get("KEEL_JWT_SECRET") is None


@pytest.mark.parametrize("where", ["file", "url"])
async def test_rs256_tokens_from_a_jwks(tmp_path: Path, where: str) -> None:
    import functools
    import http.server
    import threading

    from cryptography.hazmat.primitives.asymmetric import rsa

    from api.auth import Authenticator
    from keel.settings import Settings

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    (tmp_path / "jwks.json").write_text(jwt.api_jws.json.dumps({"keys": [{**public, "kid": "k1"}]}))
    server = None
    jwks = str(tmp_path / "jwks.json")
    if where == "url":
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        jwks = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    try:
        await _check_rs256(
            Authenticator(Settings(KEEL_AUTH="jwt", KEEL_JWKS=jwks, KEEL_JWT_ROLE_CLAIM="roles")), key
        )
    finally:
        if server is not None:
            server.shutdown()


async def _check_rs256(auth: Any, key: Any) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    claims = {"sub": "erin", "roles": ["admin"], "exp": int(time.time()) + 60}
    signed = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})
    user = await auth.authenticate(None, signed, None)  # type: ignore[arg-type]  # no pool: no API keys
    assert (user.id, user.admin, user.via) == ("erin", True, "jwt")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for bad in (
        jwt.encode(claims, other, algorithm="RS256", headers={"kid": "k1"}),  # not the JWKS's key
        jwt.encode(claims, "a-shared-secret-that-is-32-bytes-long!", algorithm="HS256"),  # no HS256 key here
    ):
        with pytest.raises(HTTPException) as refused:
            await auth.authenticate(None, bad, None)  # type: ignore[arg-type]
        assert refused.value.status_code == 401
