"""API keys in PostgreSQL (`api_keys`): issued and revoked with `keel api-key`, checked by the gateway.

Here, not in the gateway, because the CLI issues keys straight to the database (with the gateway down) and
must not import the gateway to do it. Only a key's SHA-256 is stored; its prefix finds its row.
"""

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

import asyncpg

API_KEY_PREFIX = "keel_"


@dataclass(frozen=True)
class KeyHolder:
    """Who a live key acts as."""

    user_id: str
    admin: bool


def _sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_prefix(key: str) -> str | None:
    """`keel_<12 hex>` of a key `keel_<12 hex>_<secret>`: the part that finds its row, not a secret."""
    size = len(API_KEY_PREFIX) + 12
    head, sep, secret = key[:size], key[size : size + 1], key[size + 1 :]
    if not head.startswith(API_KEY_PREFIX) or sep != "_" or not secret:
        return None
    return head


async def create_api_key(pool: asyncpg.Pool, user_id: str, *, admin: bool = False) -> str:
    """Issue a key for `user_id`; returns it. Only its SHA-256 is stored, so it can't be shown again."""
    prefix = API_KEY_PREFIX + secrets.token_hex(6)
    key = f"{prefix}_{secrets.token_urlsafe(32)}"
    await pool.execute(
        "INSERT INTO api_keys (prefix, key_sha256, user_id, admin) VALUES ($1, $2, $3, $4)",
        prefix,
        _sha256(key),
        user_id,
        admin,
    )
    return key


async def key_holder(pool: asyncpg.Pool, key: str) -> KeyHolder | None:
    """Who a key acts as, or None for a key that is malformed, unknown or revoked."""
    prefix = api_key_prefix(key)
    if prefix is None:
        return None
    row = await pool.fetchrow(
        "SELECT key_sha256, user_id, admin FROM api_keys WHERE prefix = $1 AND revoked_at IS NULL", prefix
    )
    if row is None or not hmac.compare_digest(row["key_sha256"], _sha256(key)):
        return None
    # When a key was last used tells an operator which keys are safe to revoke; once a minute is precise
    # enough and keeps a busy key from writing on every request.
    await pool.execute(
        "UPDATE api_keys SET last_used_at = now() WHERE prefix = $1"
        " AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
        prefix,
    )
    return KeyHolder(user_id=row["user_id"], admin=row["admin"])


async def revoke_api_key(pool: asyncpg.Pool, prefix: str) -> bool:
    """Revoke by prefix (or by the whole key); False when no live key has it."""
    prefix = api_key_prefix(prefix) or prefix
    status = await pool.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE prefix = $1 AND revoked_at IS NULL", prefix
    )
    return str(status).endswith(" 1")


async def list_api_keys(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    """Every key's prefix, user, role and dates: never the key, which is not stored."""
    rows = await pool.fetch(
        "SELECT prefix, user_id, admin, created_at, last_used_at, revoked_at FROM api_keys ORDER BY created_at"
    )
    return [dict(r) for r in rows]
