"""Tickets and rate limiters on their own, in memory and in Redis (the multi-replica variant)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from aria_engine.auth import RateLimiter, TicketStore, is_loopback
from aria_engine.exceptions import AuthError, RateLimited
from tests.conftest import REDIS_URL, needs_redis


@pytest.fixture(params=["memory", pytest.param("redis", marks=needs_redis)])
async def redis_or_none(request: pytest.FixtureRequest) -> AsyncIterator[Redis | None]:
    if request.param == "memory":
        yield None
        return
    client = Redis.from_url(REDIS_URL)
    try:
        yield client
    finally:
        await client.aclose()


def _principal() -> str:
    import uuid

    return f"p-{uuid.uuid4().hex}"  # fresh Redis keys per test


async def test_a_ticket_is_redeemed_once(redis_or_none: Redis | None) -> None:
    store = TicketStore(ttl=60, redis=redis_or_none)
    ticket = await store.issue("alice", "s1")
    assert await store.redeem(ticket, "s1") == "alice"
    with pytest.raises(AuthError):
        await store.redeem(ticket, "s1")
    with pytest.raises(AuthError):
        await store.redeem("made-up", "s1")


async def test_a_bound_ticket_only_opens_its_session(redis_or_none: Redis | None) -> None:
    store = TicketStore(ttl=60, redis=redis_or_none)
    ticket = await store.issue("alice", "s1")
    with pytest.raises(AuthError):
        await store.redeem(ticket, "s2")


async def test_expired_tickets_are_refused_and_the_memory_store_is_bounded() -> None:
    expired = TicketStore(ttl=-1)
    ticket = await expired.issue("alice")
    with pytest.raises(AuthError):
        await expired.redeem(ticket, "s1")
    bounded = TicketStore(ttl=60, max_tickets=3)
    tickets = [await bounded.issue("alice") for _ in range(4)]
    with pytest.raises(AuthError):
        await bounded.redeem(tickets[0], "s1")  # the oldest was dropped to keep the bound
    assert await bounded.redeem(tickets[3], "s1") == "alice"


async def test_request_limit_allows_a_burst_then_refuses_with_retry_after(
    redis_or_none: Redis | None,
) -> None:
    limiter = RateLimiter(requests_per_minute=3, tokens_per_minute=0, redis=redis_or_none)
    alice, bob = _principal(), _principal()
    for _ in range(3):
        await limiter.hit(alice)
    with pytest.raises(RateLimited) as limited:
        await limiter.hit(alice)
    assert 0 < limited.value.retry_after <= 20  # one request refills every 60/3 seconds
    await limiter.hit(bob)


async def test_token_budget_refuses_new_turns_once_spent(redis_or_none: Redis | None) -> None:
    limiter = RateLimiter(requests_per_minute=0, tokens_per_minute=1000, redis=redis_or_none)
    alice = _principal()
    await limiter.check_tokens(alice)
    await limiter.add_tokens(alice, 600)
    await limiter.check_tokens(alice)
    await limiter.add_tokens(alice, 600)  # a turn may overshoot; the next one waits it out
    with pytest.raises(RateLimited) as limited:
        await limiter.check_tokens(alice)
    assert limited.value.retry_after > 0


async def test_disabled_limits_never_refuse() -> None:
    limiter = RateLimiter(requests_per_minute=0, tokens_per_minute=0)
    for _ in range(1000):
        await limiter.hit("alice")
    await limiter.add_tokens("alice", 10**9)
    await limiter.check_tokens("alice")


def test_loopback_hosts() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.4", "example.com"))
