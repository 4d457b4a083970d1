"""The broker's in-memory tables on a controlled clock: nonce lifetime, the PoP replay window, the rate
limiter's refill and eviction, to the exact second (no sleeping, no timing asserts)."""

from __future__ import annotations

import base64

import pytest

from keybroker import sessions
from keybroker.sessions import NonceError, RateLimiter, ReplayCache, SessionTable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(sessions.time, "monotonic", fake)
    return fake


def test_nonce_is_good_until_its_ttl_and_not_after(clock: Clock) -> None:
    table = SessionTable(ttl_s=30, max_sessions=10)
    on_time, late = table.new("sev-snp"), table.new("sev-snp")
    clock.now += 30
    assert table.consume(on_time.session_id, on_time.nonce).used
    with pytest.raises(NonceError) as spent:
        table.consume(on_time.session_id, on_time.nonce)
    assert str(spent.value) == "nonce already used; every attestation needs a fresh /kbs/v0/auth"
    clock.now += 0.001
    with pytest.raises(NonceError) as expired:
        table.consume(late.session_id, late.nonce)
    assert str(expired.value) == "nonce expired (older than 30 s); call /kbs/v0/auth again"
    with pytest.raises(NonceError) as gone:  # an expired session is forgotten
        table.consume(late.session_id, late.nonce)
    assert str(gone.value) == "unknown or evicted session; call /kbs/v0/auth again"


def test_wrong_nonce_does_not_spend_the_session(clock: Clock) -> None:
    table = SessionTable(ttl_s=30, max_sessions=10)
    s = table.new("tdx")
    with pytest.raises(NonceError) as wrong:
        table.consume(s.session_id, s.nonce[:-1])
    assert str(wrong.value) == "runtime_data.nonce is not this session's nonce"
    assert table.consume(s.session_id, s.nonce).tee == "tdx"


def test_replay_window_holds_for_its_whole_ttl(clock: Clock) -> None:
    cache = ReplayCache(ttl_s=240)
    assert cache.first_use("jti-1")
    clock.now += 240
    assert not cache.first_use("jti-1")  # still inside the window at exactly its length
    clock.now += 240.001
    assert cache.first_use("jti-1")  # forgotten once the window passed (the PoP itself is stale by then)


def test_a_full_replay_cache_still_refuses_every_id_it_holds(clock: Clock) -> None:
    """At capacity the cache forgets only beyond `max_items`: a PoP id it holds is never accepted twice (evicting
    at the limit instead would let the oldest captured PoP be replayed)."""
    cache = ReplayCache(ttl_s=240, max_items=2)
    assert cache.first_use("jti-1") and cache.first_use("jti-2")
    assert not cache.first_use("jti-1") and not cache.first_use("jti-2")


def test_rate_limiter_refills_at_its_rate(clock: Clock) -> None:
    limiter = RateLimiter(rate=2, burst=3)
    assert [limiter.allow("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.allow("a") == 0.5  # empty: one token takes 1/rate seconds
    clock.now += 0.25
    assert limiter.allow("a") == 0.25  # half a token refilled; a refusal does not spend it
    clock.now += 0.25
    assert limiter.allow("a") == 0.0
    assert limiter.allow("b") == 0.0  # buckets are per client
    clock.now += 100
    assert [limiter.allow("a") for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]  # never more than the burst


def test_rate_limiter_evicts_the_least_recently_seen_client(clock: Clock) -> None:
    limiter = RateLimiter(rate=1, burst=1, max_clients=2)
    for client in ("a", "b", "a", "c"):
        limiter.allow(client)
    assert list(limiter._buckets) == ["a", "c"]


def test_a_session_carries_a_32_byte_nonce_under_an_18_byte_id(clock: Clock) -> None:
    """The nonce the evidence must bind is 32 random bytes (256 bits, base64url without padding: 43 characters);
    the session id 18 (24 characters). The exact sizes: what the docstring and the wire promise, no more."""
    table = SessionTable(ttl_s=30, max_sessions=10)
    first, second = table.new("sev-snp"), table.new("sev-snp")
    for s in (first, second):
        assert len(base64.urlsafe_b64decode(s.nonce + "=")) == 32 and len(s.nonce) == 43
        assert len(base64.urlsafe_b64decode(s.session_id)) == 18 and len(s.session_id) == 24
    assert first.nonce != second.nonce and first.session_id != second.session_id


def test_the_brokers_replay_cache_is_bounded_at_100_000_ids(clock: Clock) -> None:
    """keybroker.tokens builds its cache with the default bound: a flood of fresh PoP ids inside the window grows
    it to 100,000 ids (plus the one just added), never more; within the bound every id is still refused."""
    cache = ReplayCache(ttl_s=240)
    assert all(cache.first_use(f"jti-{i}") for i in range(100_002))
    assert len(cache._seen) == 100_001
    assert next(iter(cache._seen)) == "jti-1"  # only the oldest was forgotten
    assert not cache.first_use("jti-2") and not cache.first_use("jti-100001")


def test_the_brokers_rate_limiter_keeps_at_most_10_000_clients(clock: Clock) -> None:
    """keybroker.middleware builds its limiter with the default bound: 10,001 client addresses leave 10,000
    buckets, the least recently seen one dropped."""
    limiter = RateLimiter(rate=1, burst=1)
    for i in range(10_001):
        limiter.allow(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter._buckets) == 10_000
    assert next(iter(limiter._buckets)) == "10.0.0.1"
