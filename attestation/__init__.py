"""Remote attestation: parse -> verify -> appraise evidence from confidential VMs.

    from attestation import Evidence, Claims, TrustAnchors, Policy, verify_evidence, appraise

    claims = verify_evidence(Evidence.from_json(obj), TrustAnchors.amd(), at=datetime.now(UTC))
    appraise(claims, Policy.from_file("policy.toml"), report_data=expected_64_bytes)

Errors (``attestation.errors``) name the field, the expected and the actual value.
Imports only the standard library and ``cryptography``.
"""

from attestation.anchors import TrustAnchors
from attestation.evidence import Claims, Evidence, Policy, appraise, verify_evidence

__all__ = ["Claims", "Evidence", "Policy", "TrustAnchors", "appraise", "verify_evidence"]
