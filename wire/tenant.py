"""Tenant registration across machines: through object storage, approved by the platform operator.

No folder is shared between the owner and the platform. Two documents, both compact JWS (Ed25519):

1. **Registration request** (`cscore.tenant-registration/v1`, header `typ` `cscore-tenant-registration+jws`),
   written by the owner to `registrations/<tenant>/request.jws` and signed by the very key it registers
   (proof that the requester holds it)::

       {"type", "tenant", "key": public OKP JWK, "requested_at": epoch s}

2. **Approval** (`cscore.tenant-approval/v1`, `typ` `cscore-tenant-approval+jws`), written by the platform
   operator to `platform/tenants/<tenant>.jws`, signed by the operator's approval key, whose public half the
   DAG pins (Airflow Variable `cscore_tenant_approver`)::

       {"type", "tenant", "key": public OKP JWK, "key_thumbprint": RFC 7638, "request_sha256": hex,
        "approved_at": epoch s}

Who may register: anyone may upload a request; only the operator's approval makes a key verify manifests.
The operator approves a request only for the thumbprint the owner gave it out of band (contract, ticket),
so a request uploaded by someone else for the same tenant name (another key) is refused.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

from wire.canonical import canonical_json
from wire.errors import FormatError, refuse_unknown, require

REQUEST_TYPE, REQUEST_TYP = "cscore.tenant-registration/v1", "cscore-tenant-registration+jws"
APPROVAL_TYPE, APPROVAL_TYP = "cscore.tenant-approval/v1", "cscore-tenant-approval+jws"
APPROVER_VARIABLE = "cscore_tenant_approver"  # Airflow Variable holding the operator's public approval JWK
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # as in incoming/<tenant>/<batch>/manifest.jws
ALGORITHM = "Ed25519"


def request_key(tenant: str) -> str:
    """Object key of a tenant's registration request (written by the owner)."""
    return f"registrations/{_tenant(tenant, 'tenant')}/request.jws"


def approval_key(tenant: str) -> str:
    """Object key of a tenant's approval (written by the platform operator, read by the DAG)."""
    return f"platform/tenants/{_tenant(tenant, 'tenant')}.jws"


@dataclass(frozen=True)
class TenantKey:
    """A tenant name and its manifest-verification key (public JWK), as requested or as approved."""

    tenant: str
    key: dict[str, Any]

    @property
    def thumbprint(self) -> str:
        return str(OKPKey.import_key(self.key).thumbprint())


def sign_request(tenant: str, key: OKPKey, *, now: float) -> str:
    """The owner's request, signed by the key it registers."""
    payload = {"type": REQUEST_TYPE, "tenant": _tenant(tenant, "tenant"),
               "key": dict(key.as_dict(private=False)), "requested_at": int(now)}
    return _sign(payload, key, REQUEST_TYP)


def verify_request(token: str) -> TenantKey:
    """Parse a request and check it is signed by the key it carries; FormatError names the field."""
    payload = _payload(token, "tenant_request")
    refuse_unknown(payload, {"type", "tenant", "key", "requested_at"}, where="tenant_request")
    if payload.get("type") != REQUEST_TYPE:
        raise FormatError("tenant_request.type", REQUEST_TYPE, payload.get("type"))
    require(payload, "requested_at", int, where="tenant_request")
    found = TenantKey(_tenant(require(payload, "tenant", str, where="tenant_request"), "tenant_request.tenant"),
                      _public_jwk(require(payload, "key", dict, where="tenant_request"), "tenant_request.key"))
    _verify(token, found.key, REQUEST_TYP, "tenant_request", "the key the request carries (proof of possession)")
    return found


def sign_approval(request_token: str, approver: OKPKey, *, now: float) -> str:
    """The operator's approval of a verified request."""
    request = verify_request(request_token)
    payload = {"type": APPROVAL_TYPE, "tenant": request.tenant, "key": request.key,
               "key_thumbprint": request.thumbprint,
               "request_sha256": hashlib.sha256(request_token.strip().encode()).hexdigest(), "approved_at": int(now)}
    return _sign(payload, approver, APPROVAL_TYP)


def verify_approval(token: str, approver: dict[str, Any], tenant: str) -> TenantKey:
    """The approved key of `tenant`, if the approval is signed by the pinned approver and names `tenant`.

    Raises FormatError: `tenant_approval.signature` (not the approver's), `tenant_approval.tenant` (an
    approval of another tenant copied here), `tenant_approval.key_thumbprint` (key and thumbprint disagree).
    """
    _verify(token, _public_jwk(approver, APPROVER_VARIABLE), APPROVAL_TYP, "tenant_approval",
            "the platform operator's approval key (Airflow Variable cscore_tenant_approver)")
    payload = _payload(token, "tenant_approval")
    refuse_unknown(payload, {"type", "tenant", "key", "key_thumbprint", "request_sha256", "approved_at"},
                   where="tenant_approval")
    if payload.get("type") != APPROVAL_TYPE:
        raise FormatError("tenant_approval.type", APPROVAL_TYPE, payload.get("type"))
    named = require(payload, "tenant", str, where="tenant_approval")
    if named != tenant:
        raise FormatError("tenant_approval.tenant", tenant, named, "an approval is valid for its own tenant only")
    approved = TenantKey(named, _public_jwk(require(payload, "key", dict, where="tenant_approval"),
                                            "tenant_approval.key"))
    thumbprint = require(payload, "key_thumbprint", str, where="tenant_approval")
    if thumbprint != approved.thumbprint:
        raise FormatError("tenant_approval.key_thumbprint", approved.thumbprint, thumbprint)
    return approved


def _sign(payload: dict[str, Any], key: OKPKey, typ: str) -> str:
    header = {"alg": ALGORITHM, "typ": typ, "kid": key.thumbprint()}
    return jws.serialize_compact(header, canonical_json(payload), key, algorithms=[ALGORITHM])


def _verify(token: str, public: dict[str, Any], typ: str, where: str, signer: str) -> None:
    try:
        signed = jws.deserialize_compact(token.strip(), OKPKey.import_key(public), algorithms=[ALGORITHM])
    except (JoseError, ValueError) as exc:
        raise FormatError(f"{where}.signature", f"a valid signature by {signer}", type(exc).__name__) from exc
    if signed.protected.get("typ") != typ:
        raise FormatError(f"{where}.typ", typ, signed.protected.get("typ"))


def _payload(token: str, where: str) -> dict[str, Any]:
    try:
        payload = json.loads(jws.extract_compact(token.strip().encode()).payload)
    except (JoseError, ValueError) as exc:
        raise FormatError(where, "a compact JWS with a JSON payload", type(exc).__name__) from exc
    if not isinstance(payload, dict):
        raise FormatError(where, "a JSON object", type(payload).__name__)
    return payload


def _public_jwk(jwk: dict[str, Any], where: str) -> dict[str, Any]:
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or "d" in jwk:
        raise FormatError(where, "a public Ed25519 JWK (kty OKP, crv Ed25519, no d)",
                          {k: v for k, v in jwk.items() if k != "d"})
    return {"kty": "OKP", "crv": "Ed25519", "x": require(jwk, "x", str, where=where)}


def _tenant(name: str, where: str) -> str:
    if not TENANT_PATTERN.fullmatch(name):  # not match: its `$` also matches before a trailing newline
        raise FormatError(where, f"a tenant name matching {TENANT_PATTERN.pattern}", name)
    return name
