"""The tenant registration request and the operator's approval, each refusal by field, expected and actual.

Every document here is right in every way but the one its check guards: signed by the right key, with the right
`typ`, naming the right tenant; then one thing changed (the key's type or curve, the signer, the tenant, the
thumbprint, a field's type). Pure: real Ed25519 keys, no bucket.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import ECKey, OKPKey

from tests.wire.documents import refused
from wire.canonical import canonical_json
from wire.tenant import (
    APPROVAL_TYP,
    APPROVAL_TYPE,
    REQUEST_TYP,
    REQUEST_TYPE,
    TenantKey,
    approval_key,
    request_key,
    sign_approval,
    sign_request,
    verify_approval,
    verify_request,
)

PUBLIC_ED25519 = "a public Ed25519 JWK (kty OKP, crv Ed25519, no d)"
NAME_RULE = "a tenant name matching ^[A-Za-z0-9_.-]{1,64}$"
REQUEST_SIGNER = "a valid signature by the key the request carries (proof of possession)"
APPROVAL_SIGNER = ("a valid signature by the platform operator's approval key "
                   "(Airflow Variable cscore_tenant_approver)")
REQUEST_FIELDS = "one of ['key', 'requested_at', 'tenant', 'type']"
APPROVAL_FIELDS = "one of ['approved_at', 'key', 'key_thumbprint', 'request_sha256', 'tenant', 'type']"


def _signed(payload: dict[str, Any] | bytes, key: OKPKey, typ: str) -> str:
    body = payload if isinstance(payload, bytes) else canonical_json(payload)
    return jws.serialize_compact({"alg": "Ed25519", "typ": typ}, body, key, algorithms=["Ed25519"])


def _public(key: OKPKey | ECKey) -> dict[str, Any]:
    return dict(key.as_dict(private=False))


@pytest.fixture
def owner() -> OKPKey:
    return OKPKey.generate_key("Ed25519", private=True)


@pytest.fixture
def approver() -> OKPKey:
    return OKPKey.generate_key("Ed25519", private=True)


def _request(owner: OKPKey, **changed: Any) -> dict[str, Any]:
    payload = {"type": REQUEST_TYPE, "tenant": "acme", "key": _public(owner), "requested_at": 1000}
    return {**payload, **changed}


def _approval(owner: OKPKey, **changed: Any) -> dict[str, Any]:
    payload = {"type": APPROVAL_TYPE, "tenant": "acme", "key": _public(owner),
               "key_thumbprint": owner.thumbprint(), "request_sha256": "0" * 64, "approved_at": 2000}
    return {**payload, **changed}


def test_the_documents_built_right_are_accepted(owner: OKPKey, approver: OKPKey) -> None:
    expected = TenantKey("acme", {"kty": "OKP", "crv": "Ed25519", "x": _public(owner)["x"]})
    assert verify_request(_signed(_request(owner), owner, REQUEST_TYP)) == expected
    assert verify_approval(_signed(_approval(owner), approver, APPROVAL_TYP), _public(approver), "acme") == expected
    request = sign_request("acme", owner, now=1000.7)
    assert verify_request(request) == expected
    approval = sign_approval(request, approver, now=2000.2)
    assert verify_approval(approval, _public(approver), "acme") == expected
    assert jws.extract_compact(approval.encode()).payload == canonical_json(_approval(
        owner, request_sha256=hashlib.sha256(request.encode()).hexdigest()))
    assert request_key("acme") == "registrations/acme/request.jws"
    assert approval_key("acme") == "platform/tenants/acme.jws"


@pytest.mark.parametrize("name", ["a/b", "", "x" * 65, "ac me", "../acme"])
def test_a_tenant_name_outside_the_rule_is_refused_before_it_makes_an_object_key(name: str, owner: OKPKey) -> None:
    for call in (lambda: request_key(name), lambda: approval_key(name),
                 lambda: sign_request(name, owner, now=1000)):
        message = refused(call, "tenant", NAME_RULE, name)
        assert message == f"tenant: expected {NAME_RULE}, got {name!r}"


def test_a_tenant_name_with_a_trailing_newline_is_refused(owner: OKPKey) -> None:
    # `$` also matches before a final newline: the name must match the rule whole, not up to a line break
    for call in (lambda: request_key("acme\n"), lambda: approval_key("acme\n"),
                 lambda: sign_request("acme\n", owner, now=1000)):
        refused(call, "tenant", NAME_RULE, "acme\n")
    token = _signed(_request(owner, tenant="acme\n"), owner, REQUEST_TYP)
    refused(lambda: verify_request(token), "tenant_request.tenant", NAME_RULE, "acme\n")


def test_a_request_key_of_another_type_or_curve_is_refused(owner: OKPKey) -> None:
    # the check's three conditions each on their own: another curve of OKP, another kty naming Ed25519, a private key
    x25519 = _public(OKPKey.generate_key("X25519", private=False))
    message = refused(lambda: verify_request(_signed(_request(owner, key=x25519), owner, REQUEST_TYP)),
                       "tenant_request.key", PUBLIC_ED25519, x25519)
    assert message.startswith(f"tenant_request.key: expected {PUBLIC_ED25519}, got {{")
    ec_named_ed25519 = {**_public(ECKey.generate_key("P-256", private=False)), "crv": "Ed25519"}
    refused(lambda: verify_request(_signed(_request(owner, key=ec_named_ed25519), owner, REQUEST_TYP)),
             "tenant_request.key", PUBLIC_ED25519, ec_named_ed25519)
    private = dict(owner.as_dict(private=True))
    message = refused(lambda: verify_request(_signed(_request(owner, key=private), owner, REQUEST_TYP)),
                       "tenant_request.key", PUBLIC_ED25519, _public(owner))
    assert str(private["d"]) not in message  # the refusal never echoes a private key


def test_a_request_key_without_x_is_refused_naming_it(owner: OKPKey) -> None:
    refused(lambda: verify_request(_signed(_request(owner, key={"kty": "OKP", "crv": "Ed25519"}), owner,
                                            REQUEST_TYP)), "tenant_request.key.x", "str", None)


def test_a_request_signed_by_another_key_than_it_carries_is_refused(owner: OKPKey) -> None:
    mallory = OKPKey.generate_key("Ed25519", private=True)
    message = refused(lambda: verify_request(_signed(_request(owner), mallory, REQUEST_TYP)),
                       "tenant_request.signature", REQUEST_SIGNER, "BadSignatureError")
    assert message == f"tenant_request.signature: expected {REQUEST_SIGNER}, got 'BadSignatureError'"


def test_a_request_signed_as_another_kind_of_document_is_refused(owner: OKPKey) -> None:
    refused(lambda: verify_request(_signed(_request(owner), owner, APPROVAL_TYP)),
             "tenant_request.typ", REQUEST_TYP, APPROVAL_TYP)


def test_a_request_that_is_not_a_jws_of_a_json_object_is_refused(owner: OKPKey) -> None:
    refused(lambda: verify_request("not a token"), "tenant_request", "a compact JWS with a JSON payload",
             "DecodeError")
    refused(lambda: verify_request(_signed(b"not json", owner, REQUEST_TYP)), "tenant_request",
             "a compact JWS with a JSON payload", "JSONDecodeError")
    message = refused(lambda: verify_request(_signed(b"[1]", owner, REQUEST_TYP)), "tenant_request",
                       "a JSON object", "list")
    assert message == "tenant_request: expected a JSON object, got 'list'"


@pytest.mark.parametrize(("changed", "field", "expected", "actual", "hint"), [
    ({"extra": 1}, "tenant_request.extra", REQUEST_FIELDS, "extra", "unknown field"),
    ({"type": APPROVAL_TYPE}, "tenant_request.type", REQUEST_TYPE, APPROVAL_TYPE, ""),
    ({"type": None}, "tenant_request.type", REQUEST_TYPE, None, ""),
    ({"requested_at": None}, "tenant_request.requested_at", "int", "NoneType", ""),
    ({"requested_at": True}, "tenant_request.requested_at", "int", "bool", ""),
    ({"tenant": 7}, "tenant_request.tenant", "str", "int", ""),
    ({"tenant": "a/b"}, "tenant_request.tenant", NAME_RULE, "a/b", ""),
    ({"key": "x"}, "tenant_request.key", "dict", "str", ""),
])
def test_each_field_of_a_request_is_checked_by_name(owner: OKPKey, changed: dict[str, Any], field: str,
                                                   expected: Any, actual: Any, hint: str) -> None:
    refused(lambda: verify_request(_signed(_request(owner, **changed), owner, REQUEST_TYP)),
             field, expected, actual, hint)


@pytest.mark.parametrize("missing", ["tenant", "key", "requested_at"])
def test_a_request_missing_a_field_names_it(owner: OKPKey, missing: str) -> None:
    payload = {k: v for k, v in _request(owner).items() if k != missing}
    refused(lambda: verify_request(_signed(payload, owner, REQUEST_TYP)), f"tenant_request.{missing}",
             {"tenant": "str", "key": "dict", "requested_at": "int"}[missing], None)


def test_an_approval_not_signed_by_the_pinned_approver_is_refused(owner: OKPKey, approver: OKPKey) -> None:
    forger = OKPKey.generate_key("Ed25519", private=True)
    message = refused(lambda: verify_approval(_signed(_approval(owner), forger, APPROVAL_TYP), _public(approver),
                                               "acme"), "tenant_approval.signature", APPROVAL_SIGNER,
                       "BadSignatureError")
    assert message == f"tenant_approval.signature: expected {APPROVAL_SIGNER}, got 'BadSignatureError'"


def test_a_request_signed_by_the_approver_is_not_an_approval(owner: OKPKey, approver: OKPKey) -> None:
    refused(lambda: verify_approval(_signed(_approval(owner), approver, REQUEST_TYP), _public(approver), "acme"),
             "tenant_approval.typ", APPROVAL_TYP, REQUEST_TYP)


def test_a_pinned_approver_of_another_type_or_curve_or_with_its_private_half_is_refused(
        owner: OKPKey, approver: OKPKey) -> None:
    token = _signed(_approval(owner), approver, APPROVAL_TYP)
    x25519 = _public(OKPKey.generate_key("X25519", private=False))
    refused(lambda: verify_approval(token, x25519, "acme"), "cscore_tenant_approver", PUBLIC_ED25519, x25519)
    ec_named_ed25519 = {**_public(ECKey.generate_key("P-256", private=False)), "crv": "Ed25519"}
    refused(lambda: verify_approval(token, ec_named_ed25519, "acme"), "cscore_tenant_approver", PUBLIC_ED25519,
             ec_named_ed25519)
    refused(lambda: verify_approval(token, dict(approver.as_dict(private=True)), "acme"),
             "cscore_tenant_approver", PUBLIC_ED25519, _public(approver))
    refused(lambda: verify_approval(token, {"kty": "OKP", "crv": "Ed25519"}, "acme"),
             "cscore_tenant_approver.x", "str", None)


def test_an_approval_of_another_tenant_is_refused(owner: OKPKey, approver: OKPKey) -> None:
    token = _signed(_approval(owner), approver, APPROVAL_TYP)
    message = refused(lambda: verify_approval(token, _public(approver), "globex"), "tenant_approval.tenant",
                       "globex", "acme", "an approval is valid for its own tenant only")
    assert message == ("tenant_approval.tenant: expected globex, got 'acme'; "
                       "an approval is valid for its own tenant only")


def test_an_approval_whose_thumbprint_is_of_another_key_is_refused(owner: OKPKey, approver: OKPKey) -> None:
    other = OKPKey.generate_key("Ed25519", private=True).thumbprint()
    token = _signed(_approval(owner, key_thumbprint=other), approver, APPROVAL_TYP)
    message = refused(lambda: verify_approval(token, _public(approver), "acme"), "tenant_approval.key_thumbprint",
                       owner.thumbprint(), other)
    assert message == f"tenant_approval.key_thumbprint: expected {owner.thumbprint()}, got {other!r}"


def test_an_approved_key_of_another_type_or_curve_is_refused(owner: OKPKey, approver: OKPKey) -> None:
    x25519 = _public(OKPKey.generate_key("X25519", private=False))
    refused(lambda: verify_approval(_signed(_approval(owner, key=x25519), approver, APPROVAL_TYP),
                                     _public(approver), "acme"), "tenant_approval.key", PUBLIC_ED25519, x25519)
    private = dict(owner.as_dict(private=True))
    refused(lambda: verify_approval(_signed(_approval(owner, key=private), approver, APPROVAL_TYP),
                                     _public(approver), "acme"), "tenant_approval.key", PUBLIC_ED25519, _public(owner))


def test_an_approval_that_is_not_a_json_object_is_refused(approver: OKPKey) -> None:
    refused(lambda: verify_approval(_signed(b"not json", approver, APPROVAL_TYP), _public(approver), "acme"),
             "tenant_approval", "a compact JWS with a JSON payload", "JSONDecodeError")
    refused(lambda: verify_approval(_signed(b"[1]", approver, APPROVAL_TYP), _public(approver), "acme"),
             "tenant_approval", "a JSON object", "list")


@pytest.mark.parametrize(("changed", "field", "expected", "actual", "hint"), [
    ({"extra": 1}, "tenant_approval.extra", APPROVAL_FIELDS, "extra", "unknown field"),
    ({"type": REQUEST_TYPE}, "tenant_approval.type", APPROVAL_TYPE, REQUEST_TYPE, ""),
    ({"type": None}, "tenant_approval.type", APPROVAL_TYPE, None, ""),
    ({"tenant": 7}, "tenant_approval.tenant", "str", "int", ""),
    ({"key": "x"}, "tenant_approval.key", "dict", "str", ""),
    ({"key_thumbprint": 7}, "tenant_approval.key_thumbprint", "str", "int", ""),
])
def test_each_field_of_an_approval_is_checked_by_name(owner: OKPKey, approver: OKPKey, changed: dict[str, Any],
                                                     field: str, expected: Any, actual: Any, hint: str) -> None:
    token = _signed(_approval(owner, **changed), approver, APPROVAL_TYP)
    refused(lambda: verify_approval(token, _public(approver), "acme"), field, expected, actual, hint)


@pytest.mark.parametrize("missing", ["tenant", "key", "key_thumbprint"])
def test_an_approval_missing_a_field_names_it(owner: OKPKey, approver: OKPKey, missing: str) -> None:
    token = _signed({k: v for k, v in _approval(owner).items() if k != missing}, approver, APPROVAL_TYP)
    refused(lambda: verify_approval(token, _public(approver), "acme"), f"tenant_approval.{missing}",
             {"tenant": "str", "key": "dict", "key_thumbprint": "str"}[missing], None)
