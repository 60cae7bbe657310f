"""The Temporal client every Keel process uses: same address, namespace, TLS, credentials and data converter.

Payloads are pydantic JSON; with KEEL_CODEC_KEY_FILE set they are also sealed by `EncryptionCodec`, and
failure messages and stack traces are moved into (sealed) payloads too.

TLS and API keys (a secured self-hosted cluster, Temporal Cloud) come from the TEMPORAL_TLS* and
TEMPORAL_API_KEY settings. `temporal_connect_options` checks them; a half-configured setup (a client
certificate without its key, a file that isn't there, TLS switched off under an API key) stops the process
at startup with one line saying what to fix.
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes
from temporalio.service import TLSConfig
from temporalio.worker import UnsandboxedWorkflowRunner, WorkflowRunner

from keel.encryption import EncryptionCodec
from keel.settings import Settings

# How Keel's workers run its workflows: outside temporalio's sandbox. The sandbox re-imports a workflow's
# modules for every run it starts and every run it replays (a cache miss: an approval after days, a worker
# restart), about 20 ms each on 2 cores (`make bench`); Keel's workflows are its own small, reviewed code,
# with no user code in them (tools and predicates run in activities). Determinism is guarded instead by
# tests/test_workflow_determinism.py, which reads workflows/ for the calls the sandbox would refuse, and by
# tests/test_replay.py, which replays every recorded history and every run of the test session in the
# sandbox.
WORKFLOW_RUNNER: WorkflowRunner = UnsandboxedWorkflowRunner()


def data_converter(settings: Settings) -> DataConverter:
    if settings.codec_key_file is None:
        return pydantic_data_converter
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=EncryptionCodec.from_file(settings.codec_key_file),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


@dataclass(frozen=True)
class TemporalConnectOptions:
    """What `Client.connect` needs beyond address and namespace. `tls` False means plaintext."""

    tls: TLSConfig | bool
    api_key: str | None


def _read_pem(variable: str, path: Path, needle: str, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SystemExit(f"{variable}={path}: cannot read it ({err.strerror or err})") from None
    # Catches the classic mix-ups (the key where the certificate goes, a DER file) before the TLS
    # handshake turns them into an opaque connection error.
    if needle.encode() not in data:
        raise SystemExit(f"{variable}={path}: not a PEM {what} (no `{needle}` line)")
    return data


def _api_key(settings: Settings) -> str | None:
    if settings.temporal_api_key_file is not None:
        try:
            key = settings.temporal_api_key_file.read_text().strip()
        except OSError as err:
            raise SystemExit(
                f"TEMPORAL_API_KEY_FILE={settings.temporal_api_key_file}: cannot read it ({err.strerror or err})"
            ) from None
        if not key:
            raise SystemExit(f"TEMPORAL_API_KEY_FILE={settings.temporal_api_key_file} is empty")
        return key
    if settings.temporal_api_key is not None and settings.temporal_api_key.get_secret_value().strip():
        return settings.temporal_api_key.get_secret_value().strip()
    return None


def temporal_connect_options(settings: Settings) -> TemporalConnectOptions:
    """TLS and API key from the settings, or SystemExit naming the variable that is wrong.

    Every Keel process calls this before it does anything else, so a bad combination is a one-line
    refusal at startup, never a stack trace from inside a connection attempt.
    """
    cert, key = settings.temporal_tls_client_cert_path, settings.temporal_tls_client_key_path
    if (cert is None) != (key is None):
        given, missing = (
            ("TEMPORAL_TLS_CLIENT_CERT_PATH", "TEMPORAL_TLS_CLIENT_KEY_PATH")
            if cert is not None
            else ("TEMPORAL_TLS_CLIENT_KEY_PATH", "TEMPORAL_TLS_CLIENT_CERT_PATH")
        )
        raise SystemExit(
            f"{given} is set but {missing} is not: mTLS needs both the client certificate and its private key"
        )
    api_key = _api_key(settings)
    wants_tls = [
        name
        for name, value in (
            ("TEMPORAL_TLS_CLIENT_CERT_PATH", cert),
            ("TEMPORAL_TLS_SERVER_CA_CERT_PATH", settings.temporal_tls_server_ca_cert_path),
            ("TEMPORAL_TLS_SERVER_NAME", settings.temporal_tls_server_name),
            ("TEMPORAL_API_KEY", api_key),
        )
        if value is not None
    ]
    if settings.temporal_tls is False:
        if wants_tls:
            # An API key or a client certificate over plaintext would be sent in the clear, or be useless.
            raise SystemExit(
                f"TEMPORAL_TLS=false contradicts {', '.join(wants_tls)}: those only work over TLS. "
                "Unset TEMPORAL_TLS (they turn TLS on) or unset them."
            )
        return TemporalConnectOptions(tls=False, api_key=None)
    if settings.temporal_tls is None and not wants_tls:
        return TemporalConnectOptions(tls=False, api_key=None)
    ca = settings.temporal_tls_server_ca_cert_path
    tls = TLSConfig(
        # None: the system's trusted roots, which is what Temporal Cloud's certificates chain to.
        server_root_ca_cert=(
            _read_pem("TEMPORAL_TLS_SERVER_CA_CERT_PATH", ca, "-----BEGIN CERTIFICATE-----", "certificate")
            if ca is not None
            else None
        ),
        domain=settings.temporal_tls_server_name,
        client_cert=(
            _read_pem("TEMPORAL_TLS_CLIENT_CERT_PATH", cert, "-----BEGIN CERTIFICATE-----", "certificate")
            if cert is not None
            else None
        ),
        client_private_key=(
            _read_pem("TEMPORAL_TLS_CLIENT_KEY_PATH", key, "PRIVATE KEY-----", "private key")
            if key is not None
            else None
        ),
    )
    return TemporalConnectOptions(tls=tls, api_key=api_key)


async def connect_temporal(settings: Settings) -> Client:
    options = temporal_connect_options(settings)
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(settings),
        tls=options.tls,
        api_key=options.api_key,
    )
