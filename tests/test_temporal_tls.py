"""Connecting to Temporal over TLS, with and without a client certificate, and the startup refusals.

The Temporal dev server speaks only plaintext, so the TLS endpoint here is a TLS terminator in front of it:
the test's own asyncio server with a certificate from a throwaway CA (made with `cryptography`), ALPN h2,
forwarding the decrypted bytes to the real dev server — the way a load balancer terminates TLS in front of a
Temporal frontend. The client side is Keel's real `connect_temporal`, so a handshake that works here is the
SDK's own TLS stack accepting the settings Keel built. Temporal Cloud itself is not reachable from a test; an
API key is checked as far as Keel's part goes (handed to the SDK, TLS switched on with it).
"""

import asyncio
import contextlib
import datetime
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest

from keel.settings import Settings
from keel.stack.embedded import TemporalDevServer
from keel.temporal import connect_temporal, temporal_connect_options

ROOT = Path(__file__).resolve().parent.parent
# The only name in the server certificate: connecting by IP works only with TEMPORAL_TLS_SERVER_NAME.
SERVER_NAME = "temporal.keel.test"
# A refused handshake fails within a second or two; a hang past this is a bug, not a slow machine.
CONNECT_TIMEOUT = 20


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed none of the above


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    san: list[x509.GeneralName] | None = None,
    usage: ExtendedKeyUsageOID | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, *pems: bytes) -> Path:
    path.write_bytes(b"".join(pems))
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key, other_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _issue("Keel test CA", ca_key, None, ca=True)
    other = _issue("Some other CA", other_key, None, ca=True)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    server = _issue(
        SERVER_NAME,
        server_key,
        (ca.subject, ca_key),
        san=[x509.DNSName(SERVER_NAME)],
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
    )
    client = _issue("keel-worker", client_key, (ca.subject, ca_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    pem = serialization.Encoding.PEM
    return Pki(
        ca=_write(d / "ca.pem", ca.public_bytes(pem)),
        server_cert=_write(d / "server.pem", server.public_bytes(pem)),
        server_key=_write(d / "server.key", _key_pem(server_key)),
        client_cert=_write(d / "client.pem", client.public_bytes(pem)),
        client_key=_write(d / "client.key", _key_pem(client_key)),
        other_ca=_write(d / "other-ca.pem", other.public_bytes(pem)),
    )


@contextlib.asynccontextmanager
async def tls_terminator(
    pki: Pki, upstream: TemporalDevServer, *, require_client_cert: bool
) -> AsyncIterator[str]:
    """A TLS endpoint (127.0.0.1, a free port) that forwards to the plaintext dev server; yields host:port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    # gRPC clients insist on HTTP/2 being negotiated through ALPN.
    context.set_alpn_protocols(["h2"])
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki.ca)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(upstream.host, upstream.port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, up_writer), pipe(up_reader, client_writer))

    # A refused handshake is what some tests want; asyncio would log each one as an error.
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda loop, ctx: None)
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 5)
        loop.set_exception_handler(previous)


def _settings(address: str, **env: str | Path) -> Settings:
    return Settings(TEMPORAL_ADDRESS=address, **{k: str(v) for k, v in env.items()})


async def _answers(settings: Settings) -> str:
    """A real round trip: the server's own description of the namespace, through the TLS endpoint."""
    client = await asyncio.wait_for(connect_temporal(settings), CONNECT_TIMEOUT)
    health = await client.service_client.check_health()
    assert health
    info = await client.workflow_service.get_system_info(GetSystemInfoRequest())
    return info.server_version


async def _refused(settings: Settings, match: str = "Failed client connect") -> None:
    with pytest.raises(RuntimeError, match=match):
        await asyncio.wait_for(connect_temporal(settings), CONNECT_TIMEOUT)


async def test_tls_with_the_server_ca_connects_and_plaintext_does_not(
    pki: Pki, temporal_server: TemporalDevServer
) -> None:
    async with tls_terminator(pki, temporal_server, require_client_cert=False) as address:
        tls = _settings(
            address, TEMPORAL_TLS_SERVER_CA_CERT_PATH=pki.ca, TEMPORAL_TLS_SERVER_NAME=SERVER_NAME
        )
        assert await _answers(tls)
        # The same endpoint without TLS: a plaintext HTTP/2 preface is not a TLS ClientHello.
        await _refused(_settings(address))
        # TLS, but trusting the wrong CA (or, without TEMPORAL_TLS_SERVER_CA_CERT_PATH, the system's roots).
        await _refused(
            _settings(
                address, TEMPORAL_TLS_SERVER_CA_CERT_PATH=pki.other_ca, TEMPORAL_TLS_SERVER_NAME=SERVER_NAME
            ),
            match="UnknownIssuer",
        )
        await _refused(
            _settings(address, TEMPORAL_TLS="true", TEMPORAL_TLS_SERVER_NAME=SERVER_NAME),
            match="UnknownIssuer",
        )
        # The certificate names temporal.keel.test, not 127.0.0.1: without the server name the host check fails.
        await _refused(_settings(address, TEMPORAL_TLS_SERVER_CA_CERT_PATH=pki.ca), match="NotValidForName")


async def test_mtls_needs_the_client_certificate(pki: Pki, temporal_server: TemporalDevServer) -> None:
    async with tls_terminator(pki, temporal_server, require_client_cert=True) as address:
        server_side = {"TEMPORAL_TLS_SERVER_CA_CERT_PATH": pki.ca, "TEMPORAL_TLS_SERVER_NAME": SERVER_NAME}
        mtls = _settings(
            address,
            **server_side,
            TEMPORAL_TLS_CLIENT_CERT_PATH=pki.client_cert,
            TEMPORAL_TLS_CLIENT_KEY_PATH=pki.client_key,
        )
        assert await _answers(mtls)
        await _refused(_settings(address, **server_side))


async def test_an_api_key_turns_tls_on_and_reaches_the_sdk(
    pki: Pki, temporal_server: TemporalDevServer
) -> None:
    async with tls_terminator(pki, temporal_server, require_client_cert=False) as address:
        settings = _settings(
            address,
            TEMPORAL_API_KEY="keel-test-api-key",
            TEMPORAL_TLS_SERVER_CA_CERT_PATH=pki.ca,
            TEMPORAL_TLS_SERVER_NAME=SERVER_NAME,
        )
        client = await asyncio.wait_for(connect_temporal(settings), CONNECT_TIMEOUT)
        # The dev server checks no keys; that the SDK holds it (and sends it as `authorization: Bearer`) is
        # what Keel controls. The round trip above went over TLS, which the key switched on by itself.
        assert client.service_client.config.api_key == "keel-test-api-key"
        assert client.service_client.config.tls
        assert await client.service_client.check_health()


def test_api_key_file_wins_and_is_trimmed(tmp_path: Path) -> None:
    key_file = _write(tmp_path / "temporal-api-key", b"from-the-file\n")
    options = temporal_connect_options(
        _settings("x:7233", TEMPORAL_API_KEY="from-env", TEMPORAL_API_KEY_FILE=key_file)
    )
    assert options.api_key == "from-the-file"
    assert options.tls is not False
    assert temporal_connect_options(_settings("x:7233")).tls is False
    # Compose passes unset variables as empty strings: they mean unset, not "the current directory".
    blank = temporal_connect_options(
        _settings("x:7233", TEMPORAL_API_KEY="", TEMPORAL_TLS_CLIENT_CERT_PATH="", TEMPORAL_TLS="")
    )
    assert blank.tls is False and blank.api_key is None


def _refusal(env: dict[str, str | Path]) -> str:
    with pytest.raises(SystemExit) as refused:
        temporal_connect_options(_settings("x:7233", **env))
    return str(refused.value)


def test_half_configured_setups_are_refused_by_name(pki: Pki, tmp_path: Path) -> None:
    assert "TEMPORAL_TLS_CLIENT_KEY_PATH is not" in _refusal(
        {"TEMPORAL_TLS_CLIENT_CERT_PATH": pki.client_cert}
    )
    assert "TEMPORAL_TLS_CLIENT_CERT_PATH is not" in _refusal(
        {"TEMPORAL_TLS_CLIENT_KEY_PATH": pki.client_key}
    )
    assert "contradicts TEMPORAL_API_KEY" in _refusal({"TEMPORAL_TLS": "false", "TEMPORAL_API_KEY": "k"})
    assert "contradicts TEMPORAL_TLS_CLIENT_CERT_PATH" in _refusal(
        {
            "TEMPORAL_TLS": "false",
            "TEMPORAL_TLS_CLIENT_CERT_PATH": pki.client_cert,
            "TEMPORAL_TLS_CLIENT_KEY_PATH": pki.client_key,
        }
    )
    missing = tmp_path / "nope.pem"
    assert f"TEMPORAL_TLS_SERVER_CA_CERT_PATH={missing}: cannot read it" in _refusal(
        {"TEMPORAL_TLS_SERVER_CA_CERT_PATH": missing}
    )
    # Certificate and key swapped: named before any handshake could fail obscurely.
    assert "not a PEM certificate" in _refusal(
        {"TEMPORAL_TLS_CLIENT_CERT_PATH": pki.client_key, "TEMPORAL_TLS_CLIENT_KEY_PATH": pki.client_cert}
    )
    empty = _write(tmp_path / "empty-key", b"\n")
    assert "is empty" in _refusal({"TEMPORAL_API_KEY_FILE": empty})


@pytest.mark.parametrize(
    ("command", "env"),
    [
        (["worker.py"], {"TEMPORAL_TLS_CLIENT_CERT_PATH": "/etc/hostname"}),
        (["-m", "api"], {"TEMPORAL_TLS": "false", "TEMPORAL_API_KEY": "k"}),
    ],
    ids=["worker", "gateway"],
)
def test_processes_refuse_at_startup_in_one_line(command: list[str], env: dict[str, str]) -> None:
    """`python worker.py` and `python -m api` stop before connecting anywhere, with the reason, no traceback."""
    done = subprocess.run(
        [sys.executable, *command],
        cwd=ROOT,
        env={**os.environ, "KEEL_WORKER_METRICS_PORT": "0", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "TEMPORAL_" in done.stderr.strip().splitlines()[-1]
