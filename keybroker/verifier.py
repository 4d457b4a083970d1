"""The one call into `attestation`: verify evidence, then check it binds this session's runtime_data.

Kept behind a single callable so the broker's logic can be tested with a stand-in verifier.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from keybroker.crypto import canonical_json

# (evidence JSON, expected report_data, verification time) -> claims as a JSON-able dict
Verifier = Callable[[dict[str, Any], bytes, datetime], dict[str, Any]]


@dataclass
class EvidenceRejected(Exception):
    """Evidence failed parsing, verification, or the report_data binding; fields name what differed."""

    reason: str
    field: str | None = None
    expected: Any = None
    actual: Any = None

    def __str__(self) -> str:
        return self.reason


def report_data_for(runtime_data: dict[str, Any]) -> bytes:
    """SHA-512 of the canonical JSON of runtime_data: the 64 bytes the evidence must carry."""
    return hashlib.sha512(canonical_json(runtime_data)).digest()


def claims_to_dict(claims: Any) -> dict[str, Any]:
    """Every claim of `attestation.Claims` by its name, as JSON values (str, int, bool, dict, list).

    Raises TypeError for anything else, or for a claim that is not a JSON value: never a partial view
    that silently drops claims a custom policy may name (`vmpl`, `rtmrs`, `tcb_status`, ...).
    """
    if not callable(getattr(claims, "to_dict", None)):
        raise TypeError(f"claims: expected attestation.Claims, got {type(claims).__name__}")
    return dict(json.loads(json.dumps(claims.to_dict())))  # TypeError on a non-JSON value; big ints kept


def attestation_verifier(trusted_roots_dir: Path | None, accept_simulated: bool) -> Verifier:
    """Build the production verifier: AMD roots only, plus simulated roots when `accept_simulated`."""
    from attestation import Evidence, TrustAnchors, verify_evidence  # the attested-evidence library
    from attestation.errors import AttestationError

    if accept_simulated:
        if trusted_roots_dir is None:
            raise ValueError("accept_simulated needs trusted_roots_dir (the folder holding ark.pem)")
        try:
            anchors = TrustAnchors.from_dir(trusted_roots_dir)
        except AttestationError as exc:  # an unreadable root: a 503 naming the file, not a 500 on every attest
            raise ValueError(f"trusted_roots_dir: {exc}") from exc
    else:
        anchors = TrustAnchors.amd()

    def verify(evidence: dict[str, Any], expected_report_data: bytes, at: datetime) -> dict[str, Any]:
        try:
            claims = claims_to_dict(verify_evidence(Evidence.from_json(evidence), anchors, at=at))
        except AttestationError as exc:
            raise EvidenceRejected(f"evidence rejected: {exc}", getattr(exc, "field", None),
                                   getattr(exc, "expected", None), getattr(exc, "actual", None)) from exc
        except (ValueError, KeyError, TypeError) as exc:  # malformed JSON shapes the parser did not wrap
            raise EvidenceRejected(f"evidence is malformed: {exc}", "evidence") from exc
        check_binding(claims, expected_report_data)
        return claims

    return verify


def check_binding(claims: dict[str, Any], expected_report_data: bytes) -> None:
    """The report_data in the evidence must equal SHA-512(canonical runtime_data)."""
    actual = (claims.get("report_data") or "").lower()
    if actual != expected_report_data.hex():
        raise EvidenceRejected("evidence report_data does not bind this runtime_data (nonce and keys)",
                               "report_data", expected_report_data.hex(), actual)
