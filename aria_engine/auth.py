"""Who is calling: API keys, principals, WebSocket tickets and per-principal rate limits (SPEC section 10).

- API keys are random strings shown once at creation; only their SHA-256 hash is stored (`api_keys` table),
  with a short prefix to recognise a key in listings. A key maps to a principal, which owns sessions.
- Open mode: while no active key exists, every caller is the principal `local`. The app refuses to serve
  open mode on a non-loopback address unless `allow_anonymous` is set (see `check_bind_allowed`).
- WebSocket tickets let a browser open the socket without putting the key in a URL: a ticket is random,
  single use and expires after `ws_ticket_ttl` seconds.
- Rate limits count requests and tokens per principal per minute (token buckets, see `RateLimiter`).

Tickets and rate-limit counters live in process memory (bounded, expired entries pruned), or in Redis when
the service runs as several replicas, so every replica sees the same counts and a ticket can be redeemed
anywhere. Nothing here imports FastAPI.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import exists, select, update

from aria_engine.db.models import ApiKey, utcnow
from aria_engine.exceptions import AuthError, ConfigError, RateLimited

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from aria_engine.config import EngineConfig

__all__ = [
    "OPEN_PRINCIPAL",
    "ApiKeyInfo",
    "Authenticator",
    "RateLimiter",
    "TicketStore",
    "check_bind_allowed",
    "create_key",
    "generate_key",
    "hash_key",
    "is_loopback",
    "list_keys",
    "revoke_key",
]

OPEN_PRINCIPAL = "local"
KEY_PREFIX = "aria_"
_SHOWN_PREFIX_CHARS = 12


def generate_key() -> str:
    """A new API key: `aria_` + 43 URL-safe characters (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    # A plain SHA-256 is enough: keys carry 256 random bits, so there is nothing to brute-force.
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(slots=True, frozen=True)
class ApiKeyInfo:
    """What may be shown about a key after its creation (never the key itself)."""

    id: str
    name: str
    principal: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


def _info(row: ApiKey) -> ApiKeyInfo:
    return ApiKeyInfo(
        id=str(row.id),
        name=row.name,
        principal=row.principal,
        prefix=row.prefix,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


async def create_key(
    db_factory: async_sessionmaker[AsyncSession], name: str, principal: str | None = None
) -> tuple[str, ApiKeyInfo]:
    """Create a key; returns the key (to show once) and its stored description.

    The principal defaults to the key's name, so two keys with one principal share sessions.
    """
    name = name.strip()
    if not name or len(name) > 100:
        raise ValueError("a key name must have 1 to 100 characters")
    principal = (principal or name).strip()
    if not principal or len(principal) > 128:
        raise ValueError("a principal must have 1 to 128 characters")
    key = generate_key()
    row = ApiKey(name=name, principal=principal, key_hash=hash_key(key), prefix=key[:_SHOWN_PREFIX_CHARS])
    async with db_factory() as db:
        db.add(row)
        await db.commit()
    return key, _info(row)


async def list_keys(db_factory: async_sessionmaker[AsyncSession]) -> list[ApiKeyInfo]:
    async with db_factory() as db:
        rows = (await db.scalars(select(ApiKey).order_by(ApiKey.created_at))).all()
    return [_info(row) for row in rows]


async def revoke_key(
    db_factory: async_sessionmaker[AsyncSession], key_id_or_prefix: str
) -> ApiKeyInfo | None:
    """Revoke the key with this id or prefix; None if no active key matches exactly one."""
    async with db_factory() as db:
        query = select(ApiKey).where(ApiKey.revoked_at.is_(None))
        try:
            query = query.where(ApiKey.id == uuid.UUID(key_id_or_prefix))
        except ValueError:
            query = query.where(ApiKey.prefix == key_id_or_prefix)
        rows = (await db.scalars(query.limit(2))).all()
        if len(rows) != 1:
            return None
        row = rows[0]
        await db.execute(update(ApiKey).where(ApiKey.id == row.id).values(revoked_at=utcnow()))
        await db.commit()
        row.revoked_at = utcnow()
    return _info(row)


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Authenticator:
    """Maps a bearer key to its principal, or to `local` while no key exists (open mode).

    Answers are cached for `cache_seconds` (ARIA_AUTH_CACHE_SECONDS): without the cache every request
    paid a database round trip before doing its work. A key created or revoked by the CLI in another
    process therefore takes effect within that time; `0` makes every call read the database. The cache
    is bounded (`max_keys`), so random keys cannot grow it.
    """

    def __init__(
        self,
        db_factory: async_sessionmaker[AsyncSession],
        *,
        cache_seconds: float = 0.0,
        max_keys: int = 1024,
    ) -> None:
        self._db_factory = db_factory
        self._cache_seconds = cache_seconds
        self._max_keys = max_keys
        self._open_mode: tuple[bool, float] | None = None  # (value, expires at)
        self._principals: OrderedDict[str, tuple[str | None, float]] = OrderedDict()
        # Reads in flight, by key: callers that miss the cache together share one read. Without this,
        # each expiry under load sent one identical query per concurrent request (64 at 64 clients),
        # all queueing for pooled connections. Bounded by the requests in flight.
        self._reading: dict[str, asyncio.Future[Any]] = {}

    async def open_mode(self) -> bool:
        cached = self._open_mode
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        open_mode: bool = await self._read_once("open-mode", self._read_open_mode)
        return open_mode

    async def _read_open_mode(self) -> bool:
        now = time.monotonic()
        async with self._db_factory() as db:
            active = await db.scalar(select(exists().where(ApiKey.revoked_at.is_(None))))
        self._open_mode = (not active, now + self._cache_seconds)
        return not active

    async def _read_once(self, key: str, read: Callable[[], Awaitable[Any]]) -> Any:
        reading = self._reading.get(key)
        if reading is None:
            reading = self._reading[key] = asyncio.ensure_future(read())
            reading.add_done_callback(lambda _: self._reading.pop(key, None))
        return await asyncio.shield(reading)  # one caller going away does not cancel the others' read

    async def principal_for(self, bearer: str | None) -> str:
        """The principal of this key; raises AuthError if it is missing, unknown or revoked."""
        if bearer:
            principal = await self._lookup(hash_key(bearer))
            if principal is None:
                raise AuthError("The API key is invalid or revoked.")
            return principal
        if await self.open_mode():
            return OPEN_PRINCIPAL
        raise AuthError()

    async def _lookup(self, key_hash: str) -> str | None:
        cached = self._principals.get(key_hash)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        principal: str | None = await self._read_once(key_hash, lambda: self._read_principal(key_hash))
        return principal

    async def _read_principal(self, key_hash: str) -> str | None:
        now = time.monotonic()
        async with self._db_factory() as db:
            principal = await db.scalar(
                select(ApiKey.principal).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
            )
        if self._cache_seconds > 0:
            self._principals[key_hash] = (principal, now + self._cache_seconds)
            self._principals.move_to_end(key_hash)
            while len(self._principals) > self._max_keys:
                self._principals.popitem(last=False)
        return principal


async def check_bind_allowed(config: EngineConfig, authenticator: Authenticator) -> None:
    """Refuse to serve without keys on a non-loopback address unless explicitly allowed."""
    if is_loopback(config.host) or config.allow_anonymous:
        return
    if await authenticator.open_mode():
        raise ConfigError(
            f"refusing to serve on {config.host} without API keys: create one with "
            "`aria-engine keys create --name NAME`, or pass --allow-anonymous"
        )


class TicketStore:
    """Single-use, short-lived WebSocket tickets: ticket -> (principal, session_id or None).

    In memory the store is bounded: expired tickets are pruned on each issue and, past `max_tickets`, the
    oldest are dropped. With Redis a ticket is a key with a TTL, redeemed with GETDEL (atomic single use).
    """

    def __init__(self, ttl: float, redis: Redis | None = None, max_tickets: int = 10_000) -> None:
        self.ttl = ttl
        self._redis = redis
        self._max = max_tickets
        self._tickets: OrderedDict[str, tuple[str, str | None, float]] = OrderedDict()

    async def issue(self, principal: str, session_id: str | None = None) -> str:
        ticket = secrets.token_urlsafe(32)
        if self._redis is not None:
            value = f"{principal}\n{session_id or ''}"
            await self._redis.set(self._redis_key(ticket), value, px=int(self.ttl * 1000))
            return ticket
        now = time.monotonic()
        while self._tickets:
            oldest, (_, _, expires) = next(iter(self._tickets.items()))
            if expires > now and len(self._tickets) < self._max:
                break
            del self._tickets[oldest]
        self._tickets[ticket] = (principal, session_id, now + self.ttl)
        return ticket

    async def redeem(self, ticket: str, session_id: str) -> str:
        """The ticket's principal; raises AuthError if unknown, used, expired or for another session."""
        found: tuple[str, str | None] | None = None
        if self._redis is not None:
            raw = await self._redis.getdel(self._redis_key(ticket))
            if raw is not None:
                text = raw.decode() if isinstance(raw, bytes) else str(raw)
                principal, _, bound = text.partition("\n")
                found = (principal, bound or None)
        else:
            entry = self._tickets.pop(ticket, None)
            if entry is not None and entry[2] > time.monotonic():
                found = (entry[0], entry[1])
        if found is None or (found[1] is not None and found[1] != session_id):
            raise AuthError("The WebSocket ticket is invalid, expired or already used.")
        return found[0]

    @staticmethod
    def _redis_key(ticket: str) -> str:
        return f"aria:ws-ticket:{hash_key(ticket)}"


_GCRA_SCRIPT = """
local now = tonumber(ARGV[1])
local increment = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local commit = ARGV[4] == '1'
local force = ARGV[5] == '1'
local tat = tonumber(redis.call('GET', KEYS[1]) or ARGV[1])
if tat < now then tat = now end
local new_tat = tat + increment
local wait = new_tat - now - window
if wait > 0 and not force then return tostring(wait) end
if commit then
  redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
end
return '0'
"""


class RateLimiter:
    """Per-principal limits on requests and on LLM tokens per minute, as token buckets (GCRA).

    Each principal has a bucket of `limit` units that refills continuously over a minute, so a burst of
    `limit` is allowed and then one unit every 60/limit seconds; there is no window edge at which a
    client could double its rate. `hit(principal)` spends one request and raises RateLimited (with the
    seconds to wait) when the bucket is empty. Tokens are known only after a turn: `check_tokens` refuses
    a new turn while the token bucket is empty, `add_tokens` spends what a finished turn used (it may go
    into debt, which later turns wait out). A limit of 0 disables that check.

    State is one number per (kind, principal): the time the bucket will be full again. In memory, full
    buckets are dropped when the map grows; with Redis the key expires when the bucket is full.
    """

    WINDOW = 60.0

    def __init__(
        self,
        requests_per_minute: int,
        tokens_per_minute: int,
        redis: Redis | None = None,
        max_entries: int = 10_000,
    ) -> None:
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self._redis = redis
        self._max = max_entries
        self._full_at: dict[tuple[str, str], float] = {}

    @classmethod
    def from_config(cls, config: EngineConfig, redis: Redis | None = None) -> RateLimiter:
        return cls(config.rate_limit_requests_per_minute, config.rate_limit_tokens_per_minute, redis)

    async def hit(self, principal: str) -> None:
        if not self.requests_per_minute:
            return
        interval = self.WINDOW / self.requests_per_minute
        wait = await self._spend("req", principal, interval, commit=True, force=False)
        if wait > 0:
            raise RateLimited(wait, "Too many requests for this key; slow down.")

    async def check_tokens(self, principal: str) -> None:
        if not self.tokens_per_minute:
            return
        interval = self.WINDOW / self.tokens_per_minute
        wait = await self._spend("tok", principal, interval, commit=False, force=False)
        if wait > 0:
            raise RateLimited(wait, "The token budget of this key is spent for now; slow down.")

    async def add_tokens(self, principal: str, tokens: int) -> None:
        if self.tokens_per_minute and tokens > 0:
            interval = self.WINDOW / self.tokens_per_minute
            await self._spend("tok", principal, interval * tokens, commit=True, force=True)

    async def _spend(
        self, kind: str, principal: str, increment: float, *, commit: bool, force: bool
    ) -> float:
        """Seconds to wait before `increment` fits (0: it fits, and is recorded when `commit`)."""
        now = time.time()
        if self._redis is not None:
            wait = await self._redis.eval(
                _GCRA_SCRIPT,
                1,
                f"aria:rl:{kind}:{principal}",
                repr(now),
                repr(increment),
                repr(self.WINDOW),
                "1" if commit else "0",
                "1" if force else "0",
            )
            return float(wait)
        key = (kind, principal)
        new_full_at = max(self._full_at.get(key, now), now) + increment
        wait = new_full_at - now - self.WINDOW
        if wait > 0 and not force:
            return wait
        if commit:
            if len(self._full_at) >= self._max:
                self._prune(now)
            self._full_at[key] = new_full_at
        return 0.0

    def _prune(self, now: float) -> None:
        for key in [k for k, full_at in self._full_at.items() if full_at <= now]:
            del self._full_at[key]
        while len(self._full_at) >= self._max:  # all buckets busy: forget the oldest entries
            del self._full_at[next(iter(self._full_at))]
