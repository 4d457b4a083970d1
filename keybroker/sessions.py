"""In-memory, bounded tables: attestation sessions (single-use nonces), PoP replay cache, rate limits."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class Session:
    """One `auth` exchange: the nonce the evidence must bind, and whether it has been spent."""

    session_id: str
    tee: str
    nonce: str
    created: float
    used: bool = False


class NonceError(LookupError):
    """The session or its nonce cannot be used; `reason` says which way."""


class SessionTable:
    """Sessions expire after `ttl_s`; the oldest are evicted beyond `max_sessions` (no unbounded growth)."""

    def __init__(self, ttl_s: float, max_sessions: int) -> None:
        self._ttl = ttl_s
        self._max = max_sessions
        self._items: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def new(self, tee: str) -> Session:
        """Create a session with a fresh 32-byte nonce."""
        s = Session(secrets.token_urlsafe(18), tee, secrets.token_urlsafe(32), time.monotonic())
        with self._lock:
            self._items[s.session_id] = s
            while len(self._items) > self._max:
                self._items.popitem(last=False)
        return s

    def consume(self, session_id: str, nonce: str) -> Session:
        """Spend the session's nonce exactly once; raises NonceError otherwise."""
        with self._lock:
            s = self._items.get(session_id)
            if s is None:
                raise NonceError("unknown or evicted session; call /kbs/v0/auth again")
            if time.monotonic() - s.created > self._ttl:
                del self._items[session_id]
                raise NonceError(f"nonce expired (older than {self._ttl:.0f} s); call /kbs/v0/auth again")
            if s.used:
                raise NonceError("nonce already used; every attestation needs a fresh /kbs/v0/auth")
            if not secrets.compare_digest(s.nonce, nonce):
                raise NonceError("runtime_data.nonce is not this session's nonce")
            s.used = True
            return s


class ReplayCache:
    """Remembers proof-of-possession ids for `ttl_s` so a captured request cannot be replayed."""

    def __init__(self, ttl_s: float, max_items: int = 100_000) -> None:
        self._ttl = ttl_s
        self._max = max_items
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def first_use(self, jti: str) -> bool:
        """True the first time `jti` is seen within the window."""
        now = time.monotonic()
        with self._lock:
            while self._seen and (next(iter(self._seen.values())) < now - self._ttl or len(self._seen) > self._max):
                self._seen.popitem(last=False)
            if jti in self._seen:
                return False
            self._seen[jti] = now
            return True


class RateLimiter:
    """Token bucket per client address: `rate` requests/s sustained, `burst` at once."""

    def __init__(self, rate: float, burst: int, max_clients: int = 10_000) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._max = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def allow(self, client: str) -> float:
        """0.0 if the request may go ahead, else the seconds to wait."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.pop(client, (self._burst, now))
            tokens = min(self._burst, tokens + (now - last) * self._rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self._rate
            self._buckets[client] = (tokens - 1 if wait == 0.0 else tokens, now)
            if len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
            return wait
