"""Encryption at rest for Temporal: a payload codec that seals every payload with AES-GCM.

The client (gateway) and the worker encode with the active key, so prompts, tool arguments and results
are ciphertext in Temporal's database. Each sealed payload names its key in metadata, so old keys keep
decrypting after a rotation. Payloads that were never sealed (a plain-JSON signal sent with the
`temporal` CLI) pass through decode untouched.

The key file is JSON: {"active": "k2", "keys": {"k1": "<base64 of 32 bytes>", "k2": "..."}}.
"""

import base64
import json
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
_NONCE_BYTES = 12


class CodecKeyError(ValueError):
    """The key file is missing, unreadable or malformed. The message never contains key material."""


class EncryptionCodec(PayloadCodec):
    def __init__(self, keys: dict[str, bytes], active: str) -> None:
        if active not in keys:
            raise CodecKeyError(f"the active key {active!r} is not among the keys")
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self._active = active

    @classmethod
    def from_file(cls, path: Path) -> "EncryptionCodec":
        try:
            spec = json.loads(path.read_text())
            keys = {key_id: base64.b64decode(value, validate=True) for key_id, value in spec["keys"].items()}
            active = spec["active"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise CodecKeyError(f"cannot read the codec key file {path}: {type(err).__name__}") from None
        if any(len(key) != 32 for key in keys.values()):
            raise CodecKeyError(f"codec keys in {path} must be 32 bytes (AES-256)")
        return cls(keys, active)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        cipher = self._ciphers[self._active]
        sealed = []
        for payload in payloads:
            nonce = os.urandom(_NONCE_BYTES)
            # The key id is authenticated too: a payload can't be relabelled to another key.
            data = nonce + cipher.encrypt(nonce, payload.SerializeToString(), self._active.encode())
            sealed.append(Payload(metadata={"encoding": ENCODING, KEY_ID: self._active.encode()}, data=data))
        return sealed

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        opened = []
        for payload in payloads:
            if payload.metadata.get("encoding") != ENCODING:
                opened.append(payload)  # never sealed: the CLI's plain JSON, for instance
                continue
            key_id = payload.metadata.get(KEY_ID, b"").decode()
            cipher = self._ciphers.get(key_id)
            if cipher is None:
                raise CodecKeyError(f"payload sealed with unknown key {key_id!r}")
            nonce, sealed = payload.data[:_NONCE_BYTES], payload.data[_NONCE_BYTES:]
            try:
                opened_bytes = cipher.decrypt(nonce, sealed, key_id.encode())
            except InvalidTag:
                raise CodecKeyError(f"a payload sealed with key {key_id!r} failed authentication") from None
            plain = Payload()
            plain.ParseFromString(opened_bytes)
            opened.append(plain)
        return opened


def write_new_key_file(path: Path, *, key_id: str | None = None) -> None:
    """Create a key file with one fresh key, readable by its owner only. Rotation: add a key, make it active."""
    key_id = key_id or f"k{secrets.token_hex(4)}"
    spec = {
        "active": key_id,
        "keys": {key_id: base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(spec, out, indent=2)


def rotate_key_file(path: Path) -> str:
    """Add a fresh key and make it the active one; old keys stay so existing payloads still decrypt."""
    spec = json.loads(path.read_text())
    key_id = f"k{secrets.token_hex(4)}"
    spec["keys"][key_id] = base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()
    spec["active"] = key_id
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(spec, out, indent=2)
    tmp.replace(path)
    return key_id
