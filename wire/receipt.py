"""The shard receipt's type and its signed broker sessions: how a release in a broker's log is tied to a worker.

A receipt (`cscore.receipt/v2`, signed by the enclave's receipt key, `enclave.receipts`) carries, beside what
the shard read and wrote, `worker` (the worker's stable name: its Celery node name, the same in Airflow and
in attestation verdicts) and `sessions`:

    "sessions": [{"broker": "<broker name in the worker configuration>",
                  "claims_digests": ["<sha256 hex of the canonical JSON of the claims the broker attested>", ...]}]

one entry per broker the enclave sent this batch's key requests to, with the claims digest of every attested
token those requests carried (usually one; more when a token was renewed mid-batch). The broker logs the same
digest in each release decision, so an auditor joins a release to the worker by what the enclave signed, not
by the platform's unsigned result manifest. The plaintext baseline's receipt has no sessions (`[]`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from wire.errors import FormatError, refuse_unknown, require

RECEIPT_TYPE = "cscore.receipt/v2"
_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class BrokerSession:
    """One broker the enclave used for a batch, and the claims digests of the tokens it used there."""

    broker: str
    claims_digests: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"broker": self.broker, "claims_digests": sorted(self.claims_digests)}


def sessions_json(sessions: Iterable[BrokerSession]) -> list[dict[str, Any]]:
    """The receipt's `sessions` value: sorted by broker, digests sorted (a stable signed byte string)."""
    return [s.to_json() for s in sorted(sessions, key=lambda s: s.broker)]


def parse_sessions(payload: dict[str, Any], *, where: str = "receipt") -> tuple[BrokerSession, ...]:
    """A receipt payload's `sessions`, strictly: a list of {broker: str, claims_digests: [64 hex]}.

    Raises FormatError naming the field (for example `receipt.sessions[1].claims_digests[0]`).
    """
    raw = require(payload, "sessions", list, where=where)
    out = []
    for i, item in enumerate(raw):
        at = f"{where}.sessions[{i}]"
        if not isinstance(item, dict):
            raise FormatError(at, "an object {broker, claims_digests}", type(item).__name__)
        refuse_unknown(item, {"broker", "claims_digests"}, where=at)
        broker = require(item, "broker", str, where=at)
        digests = require(item, "claims_digests", list, where=at)
        for j, digest in enumerate(digests):
            if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
                raise FormatError(f"{at}.claims_digests[{j}]", "64 lower-case hex (a SHA-256)", digest)
        out.append(BrokerSession(broker, tuple(digests)))
    return tuple(out)


def signed_claims_digests(payload: dict[str, Any]) -> set[str]:
    """Every claims digest a receipt payload's sessions name (FormatError when they do not parse)."""
    return {d for s in parse_sessions(payload) for d in s.claims_digests}
