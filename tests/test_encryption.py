"""Encryption at rest: Temporal stores ciphertext, operators decode through the gateway's codec endpoint,
and plain-JSON signals from the `temporal` CLI still work (tests/test_human_in_the_loop.py sends one)."""

import base64
import json
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest
from temporalio.api.common.v1 import Payload

from keel.encryption import CodecKeyError, EncryptionCodec, rotate_key_file, write_new_key_file
from keel.stack.embedded import TemporalDevServer, find_temporal_bin
from tests.conftest import TEMPORAL_UI_URL, Keel
from tests.ui_stream import chat, chat_body


async def test_temporals_database_holds_no_plaintext_prompt(
    http: httpx.AsyncClient, temporal_server: TemporalDevServer
) -> None:
    marker = f"zebra{uuid.uuid4().hex}"
    stream = await chat(http, chat_body(f"calculate 6 * 7 and remember {marker}"))
    assert stream.run_status == "completed"

    db_file = next(a for a in temporal_server.proc.args if str(a).endswith("temporal.db"))
    stored = b"".join(p.read_bytes() for p in Path(db_file).parent.glob("temporal.db*"))
    assert b"calculate" not in stored and marker.encode() not in stored
    assert b"binary/encrypted" in stored  # the payloads are there, sealed


async def test_the_codec_endpoint_round_trip(http: httpx.AsyncClient, keel: Keel) -> None:
    plain = {"metadata": {"encoding": _b64(b"json/plain")}, "data": _b64(b'{"secret": "prompt"}')}

    encoded = await http.post("/codec/encode", json={"payloads": [plain]})
    assert encoded.status_code == 200, encoded.text
    sealed = encoded.json()["payloads"][0]
    assert base64.b64decode(sealed["metadata"]["encoding"]) == b"binary/encrypted"
    assert b"prompt" not in base64.b64decode(sealed["data"])

    decoded = await http.post("/codec/decode", json={"payloads": [sealed]})
    assert decoded.json()["payloads"] == [plain]
    assert (await http.post("/codec/decode", content=b"nonsense")).status_code == 400


async def test_the_codec_endpoint_lets_in_the_web_uis_origin_only_when_it_is_known(
    http: httpx.AsyncClient, gateways: dict[str, str]
) -> None:
    async def preflight(client: httpx.AsyncClient, origin: str) -> httpx.Response:
        headers = {"origin": origin, "access-control-request-method": "POST"}
        return await client.options("/codec/decode", headers=headers)

    # The Web UI calls the endpoint from its own origin, the one KEEL_TEMPORAL_UI_URL names.
    async with httpx.AsyncClient(base_url=gateways["temporal-ui"], timeout=30) as with_ui:
        allowed = await preflight(with_ui, TEMPORAL_UI_URL)
        assert allowed.headers["access-control-allow-origin"] == TEMPORAL_UI_URL
        other = await preflight(with_ui, "http://127.0.0.1:8233")
        assert "access-control-allow-origin" not in other.headers
    # With no Web UI address the gateway still starts and serves the endpoint, to no browser origin.
    refused = await preflight(http, "http://127.0.0.1:8233")
    assert "access-control-allow-origin" not in refused.headers


async def test_temporal_workflow_show_reads_runs_through_the_codec_endpoint(
    http: httpx.AsyncClient, keel: Keel, temporal_server: TemporalDevServer
) -> None:
    stream = await chat(http, chat_body("calculate 5 * 5"))
    agent_run_id = stream.response.headers["x-agent-run-id"]

    def show(*extra: str) -> str:
        return subprocess.run(
            [
                str(find_temporal_bin()),
                "workflow",
                "show",
                "--workflow-id",
                agent_run_id,
                "--address",
                temporal_server.address,
                "--output",
                "json",
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout

    # Payload data is base64 in the JSON output; without the codec it is ciphertext, with it the tool call.
    assert not any(b"5 * 5" in d for d in _payload_data(json.loads(show())))
    readable = _payload_data(json.loads(show("--codec-endpoint", f"{keel.gateway_url}/codec")))
    assert any(b'"expression":"5 * 5"' in d for d in readable)


async def test_old_keys_still_decrypt_after_a_rotation(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.json"
    write_new_key_file(key_file)
    sealed = await EncryptionCodec.from_file(key_file).encode([Payload(data=b"before rotation")])

    rotate_key_file(key_file)
    rotated = EncryptionCodec.from_file(key_file)

    assert (await rotated.decode(sealed))[0].data == b"before rotation"
    resealed = await rotated.encode([Payload(data=b"after")])
    assert resealed[0].metadata["encryption-key-id"] != sealed[0].metadata["encryption-key-id"]
    tampered = Payload(metadata=sealed[0].metadata, data=sealed[0].data[:-1] + b"\x00")
    with pytest.raises(CodecKeyError, match="failed authentication"):
        await rotated.decode([tampered])
    assert key_file.stat().st_mode & 0o077 == 0, "the key file is readable by its owner only"


def _payload_data(node: object) -> list[bytes]:
    if isinstance(node, dict):
        found = [base64.b64decode(node["data"])] if isinstance(node.get("data"), str) else []
        return found + [d for value in node.values() for d in _payload_data(value)]
    if isinstance(node, list):
        return [d for value in node for d in _payload_data(value)]
    return []


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
