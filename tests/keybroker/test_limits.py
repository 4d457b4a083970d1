"""Bounded under abuse: body size (declared or streamed), per-client rate limits, bounded in-memory tables."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx

from keybroker.sessions import RateLimiter, ReplayCache
from tests.keybroker.conftest import BrokerProcess
from tests.keybroker.inproc import Env


def test_streamed_body_without_length_is_cut_at_the_limit(broker: BrokerProcess) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"tee": "sev-snp", "pad": "'
        for _ in range(17):
            yield b"x" * 65536  # just over the 1 MiB default, chunked: no Content-Length to refuse early
        yield b'"}'

    r = httpx.post(f"{broker.url}/kbs/v0/auth", content=chunks(), headers={"Content-Type": "application/json"})
    assert "content-length" not in r.request.headers
    # Not a 400 "error parsing the body": the streamed limit is reported as such.
    assert r.status_code == 413 and r.json()["type"].endswith("body-too-large")


def test_admin_endpoints_are_size_limited_too(tmp_path: Path) -> None:
    env = Env(tmp_path, max_body_bytes=4096)
    r = env.admin._http.post("/admin/v0/keys", json={"key_id": "big", "policy": "true || " * 1000})
    assert r.status_code == 413


def test_rate_limit_is_per_client() -> None:
    limiter = RateLimiter(rate=0.001, burst=2)
    assert [limiter.allow("10.0.0.1") for _ in range(3)][:2] == [0.0, 0.0]
    assert limiter.allow("10.0.0.1") > 0  # this client is out of tokens ...
    assert limiter.allow("10.0.0.2") == 0.0  # ... another is not


def test_rate_limiter_table_is_bounded() -> None:
    limiter = RateLimiter(rate=1, burst=1, max_clients=100)
    for i in range(1000):
        limiter.allow(f"client-{i}")
    assert len(limiter._buckets) <= 100


def test_replay_cache_is_bounded_and_still_rejects_recent_replays() -> None:
    cache = ReplayCache(ttl_s=60, max_items=50)
    assert all(cache.first_use(f"jti-{i}") for i in range(500))
    assert len(cache._seen) <= 51
    assert not cache.first_use("jti-499")


def test_session_table_is_bounded_over_http(tmp_path: Path) -> None:
    env = Env(tmp_path, max_sessions=3)
    worker = env.worker()
    first = env.admin._http.post("/kbs/v0/auth", json={"tee": "sev-snp"}).json()
    for _ in range(10):  # a flood of auth calls evicts the oldest sessions, it does not grow the table
        env.admin._http.post("/kbs/v0/auth", json={"tee": "sev-snp"})
    assert len(env.app.state.broker.sessions._items) == 3
    r = env.admin._http.post("/kbs/v0/attest", json={
        "session": first["session"], "evidence": {},
        "runtime_data": {"nonce": first["nonce"], "tee_pubkey": worker.tee_public_jwk,
                         "receipt_pubkey": worker.receipt_public_jwk}})
    assert r.status_code == 401 and "evicted" in r.json()["detail"]
    assert worker.attest().token  # a fresh session still works
