"""Who is asking, and what they may see.

`KEEL_AUTH` picks the schemes: `jwt` (`Authorization: Bearer <JWT>`, HS256 with `KEEL_JWT_SECRET` or
RS256 with the keys in `KEEL_JWKS`), `api-key` (`Authorization: Bearer keel_…` or `X-API-Key: keel_…`,
stored hashed in PostgreSQL's `api_keys`), both, or `none` (loopback only: everyone is the local admin).

A JWT's `sub` is the user id; its role claim (`KEEL_JWT_ROLE_CLAIM`, default `role`) set to `admin`, or a
list holding `admin`, makes an admin. Users see only their own runs and chats; anything else answers 404
exactly as an unknown id does. Admins see everything.

No token, key or secret is ever put in a log line or an error message.
"""

import asyncio
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import asyncpg
import jwt
from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from keel.contracts import RunState
from keel.settings import Settings
from keel.storage.api_keys import API_KEY_PREFIX, key_holder

ADMIN_ROLE = "admin"
_MIN_HS256_SECRET = 32


@dataclass(frozen=True)
class User:
    """The authenticated caller. `id` is None only under KEEL_AUTH=none."""

    id: str | None
    admin: bool
    via: str  # "none", "jwt" or "api-key"

    def owns(self, owner: str | None) -> bool:
        return self.admin or (self.id is not None and owner == self.id)

    @property
    def name(self) -> str | None:
        """Who to record as the approver of a decision."""
        return self.id


LOCAL_ADMIN = User(id=None, admin=True, via="none")


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_startup(settings: Settings) -> None:
    """Refuse configurations that would expose runs: no auth off loopback, jwt without a key."""
    if not settings.auth_modes and not is_loopback(settings.host):
        raise SystemExit(
            f"KEEL_AUTH=none is refused on {settings.host}: without authentication anyone who can reach the "
            "gateway reads, approves and cancels every run. Set KEEL_AUTH (jwt, api-key) or listen on "
            "127.0.0.1."
        )
    Authenticator(settings)  # raises SystemExit for a jwt mode without a usable key


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.modes = settings.auth_modes
        self.role_claim = settings.jwt_role_claim
        self.audience = settings.jwt_audience
        self.issuer = settings.jwt_issuer
        self._hs256: str | None = None
        self._jwks_client: jwt.PyJWKClient | None = None
        self._jwks_set: jwt.PyJWKSet | None = None
        if "jwt" not in self.modes:
            return
        if settings.jwt_secret_file is not None:
            self._hs256 = settings.jwt_secret_file.read_text().strip()
        elif settings.jwt_secret is not None and settings.jwt_secret.get_secret_value():
            self._hs256 = settings.jwt_secret.get_secret_value()
        if self._hs256 is not None and len(self._hs256.encode()) < _MIN_HS256_SECRET:
            raise SystemExit(f"KEEL_JWT_SECRET must be at least {_MIN_HS256_SECRET} bytes")
        if settings.jwks:
            if settings.jwks.startswith(("https://", "http://")):
                self._jwks_client = jwt.PyJWKClient(settings.jwks, cache_keys=True, lifespan=300)
            else:
                try:
                    self._jwks_set = jwt.PyJWKSet.from_json(Path(settings.jwks).read_text())
                except (OSError, jwt.PyJWKSetError) as err:
                    raise SystemExit(f"KEEL_JWKS: cannot read a JWKS from {settings.jwks}: {err}") from None
        if self._hs256 is None and self._jwks_client is None and self._jwks_set is None:
            raise SystemExit("KEEL_AUTH=jwt needs KEEL_JWT_SECRET (or KEEL_JWT_SECRET_FILE) or KEEL_JWKS")

    async def authenticate(self, pool: asyncpg.Pool, bearer: str | None, api_key: str | None) -> User:
        if not self.modes:
            return LOCAL_ADMIN
        if api_key is not None or (bearer is not None and bearer.startswith(API_KEY_PREFIX)):
            if "api-key" not in self.modes:
                raise unauthorized("API keys are not accepted here (KEEL_AUTH)")
            return await self._api_key(pool, api_key if api_key is not None else bearer or "")
        if bearer is None:
            raise unauthorized("authentication required: send Authorization: Bearer <token>")
        if "jwt" not in self.modes:
            raise unauthorized("not a valid API key")
        return await self._jwt(bearer)

    async def _jwt(self, token: str) -> User:
        try:
            alg = jwt.get_unverified_header(token).get("alg")
            key: Any
            if alg == "HS256" and self._hs256 is not None:
                key = self._hs256
            elif alg == "RS256" and self._jwks_set is not None:
                kid = jwt.get_unverified_header(token).get("kid")
                key = self._jwks_set[kid].key if kid else self._jwks_set.keys[0].key
            elif alg == "RS256" and self._jwks_client is not None:
                client = self._jwks_client
                key = (await asyncio.to_thread(client.get_signing_key_from_jwt, token)).key
            else:
                raise unauthorized("invalid token: unsupported algorithm")
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["sub", "exp"], "verify_aud": self.audience is not None},
            )
        except (jwt.PyJWTError, KeyError, IndexError, jwt.PyJWKClientError):
            # The library's message can quote claims; say only that it failed.
            raise unauthorized("invalid or expired token") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not 0 < len(sub) <= 200:
            raise unauthorized("invalid token: `sub` must name the user")
        role = claims.get(self.role_claim)
        admin = role == ADMIN_ROLE or (isinstance(role, list) and ADMIN_ROLE in role)
        return User(id=sub, admin=admin, via="jwt")

    async def _api_key(self, pool: asyncpg.Pool, key: str) -> User:
        holder = await key_holder(pool, key)
        if holder is None:
            raise unauthorized("invalid or revoked API key")
        return User(id=holder.user_id, admin=holder.admin, via="api-key")


# --- FastAPI dependencies ---

_bearer = HTTPBearer(auto_error=False, description="A JWT, or an API key (`keel_…`)")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key (`keel_…`)")


async def authenticate_request(
    request: Request, app_state: Any, bearer: str | None, api_key: str | None
) -> User:
    auth: Authenticator = app_state.auth
    return await auth.authenticate(app_state.gateway.store.pool, bearer, api_key)


async def current_user(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    api_key: Annotated[str | None, Security(_api_key_header)],
) -> User:
    return await authenticate_request(request, request.app.state, _credentials(bearer), api_key)


CurrentUser = Annotated[User, Depends(current_user)]


def _credentials(bearer: HTTPAuthorizationCredentials | None) -> str | None:
    return bearer.credentials if bearer is not None else None


def admin_dependency(app_state: Any) -> Any:
    """For apps mounted under the gateway (the codec endpoint): an admin, authenticated by the gateway."""

    async def require_admin(
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
        api_key: Annotated[str | None, Security(_api_key_header)],
    ) -> None:
        user = await authenticate_request(request, app_state, _credentials(bearer), api_key)
        if not user.admin:
            raise HTTPException(403, "the codec endpoint is for admins")

    return Depends(require_admin)


# --- Ownership ---


def no_run(agent_run_id: str) -> HTTPException:
    # The same answer as for an id that does not exist, so ids leak nothing.
    return HTTPException(404, f"no run {agent_run_id!r}")


def check_owner(user: User, state: RunState) -> RunState:
    if not user.owns(state.user_id):
        raise no_run(state.agent_run_id)
    return state


async def require_chat(pool: asyncpg.Pool, chat_id: str, user: User, *, to_start: bool = False) -> None:
    """A chat belongs to whoever started it: 404 for another user's chat (a new chat id is anyone's).
    Admins may read any chat, but start runs only in their own, so a chat never has two owners."""
    if user.admin and not to_start:
        return
    rows = await pool.fetch(
        "SELECT user_id FROM chat_runs WHERE chat_id = $1 ORDER BY started_at LIMIT 1", chat_id
    )
    if rows and rows[0]["user_id"] != user.id:  # the chat's first run names its owner
        raise HTTPException(404, f"no chat {chat_id!r}")
