"""wire/grant.py on its own: the model grant's signature check and strict parse, each refusal on a grant right in
every other way, naming field, expected and actual (milliseconds a test; the broker's use is
tests/keybroker/test_model_grant_forgery.py)."""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import ECKey

from wire.canonical import canonical_json
from wire.errors import FormatError
from wire.grant import GRANT_TTL_S, GRANT_TYP, GRANT_TYPE, ModelGrant, sign_grant, verify_grant

NOW = 1_700_000_000
OWNER = ECKey.generate_key("P-256")
OTHER = ECKey.generate_key("P-256")
GRANT = ModelGrant(issuer="owner", batch_id="batch-1", model_digest="sha256:" + "ab" * 32, measurement="cd" * 48,
                   config_digest="ef" * 32, tee_key="thumb", rows=10, issued_at=NOW, expires_at=NOW + GRANT_TTL_S)
ISSUERS = {"owner": OWNER.as_dict(private=False), "other": OTHER.as_dict(private=False)}


def _signed(payload: Any, key: ECKey = OWNER, **header: Any) -> str:
    """A compact JWS over `payload` (canonical JSON unless bytes) with the grant's header, changed by `header`."""
    protected = {"alg": "ES256", "typ": GRANT_TYP, "kid": key.thumbprint(), **header}
    body = payload if isinstance(payload, bytes) else canonical_json(payload)
    return jws.serialize_compact(protected, body, key, algorithms=["ES256"])


def _refused(token: str, issuers: dict[str, Any] = ISSUERS, now: float = NOW) -> FormatError:
    with pytest.raises(FormatError) as refused:
        verify_grant(token, issuers, now=now)
    return refused.value


def test_a_genuine_grant_verifies_field_for_field_until_it_expires() -> None:
    token = sign_grant(GRANT, OWNER)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "ES256", "typ": "cscore-model-grant+jws", "kid": OWNER.thumbprint()}
    assert json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "==")) == {"type": GRANT_TYPE,
                                                                                 **dataclasses.asdict(GRANT)}
    assert verify_grant(token, ISSUERS, now=NOW) == GRANT
    assert verify_grant(token, ISSUERS, now=NOW + GRANT_TTL_S - 0.5) == GRANT  # a half second before it expires
    assert GRANT_TTL_S == 600


def test_a_grant_at_or_past_its_expiry_is_refused_naming_it() -> None:
    for now in (NOW + GRANT_TTL_S, NOW + GRANT_TTL_S + 1):
        refused = _refused(sign_grant(GRANT, OWNER), now=now)
        assert (refused.field, refused.expected, refused.actual, refused.hint) == (
            "model_grant.expires_at", f"> {int(now)}", NOW + GRANT_TTL_S, "ask the owner broker again")


def test_a_grant_signed_by_one_registered_owner_naming_another_is_refused() -> None:
    """`other`'s key signs a grant that says `owner` issued it: signature valid, issuer not the key's owner."""
    refused = _refused(sign_grant(GRANT, OTHER))
    assert (refused.field, refused.expected, refused.actual, refused.hint) == (
        "model_grant.issuer", "other", "owner", "the key belongs to another owner broker")
    assert verify_grant(sign_grant(dataclasses.replace(GRANT, issuer="other"), OTHER), ISSUERS, now=NOW).issuer == \
        "other"


def test_a_grant_by_an_unregistered_key_is_refused_naming_its_kid() -> None:
    forger = ECKey.generate_key("P-256")
    refused = _refused(sign_grant(GRANT, forger))
    assert (refused.field, refused.expected, refused.actual, refused.hint) == (
        "model_grant.kid", "the key of a registered owner broker ['other', 'owner']", forger.thumbprint(),
        "the provider registers each owner broker's grant key")


def test_a_grant_naming_a_registered_kid_but_signed_by_another_key_is_refused_by_its_signature() -> None:
    forger = ECKey.generate_key("P-256")
    refused = _refused(_signed(GRANT.to_json(), forger, kid=OWNER.thumbprint()))
    assert (refused.field, refused.expected, refused.actual) == (
        "model_grant.signature", "a valid ES256 signature by owner broker 'owner'", "BadSignatureError")


@pytest.mark.parametrize("header", [{"typ": "JWT"}, {"typ": None}, {"alg": "ES384"}])
def test_a_grant_with_another_type_or_algorithm_in_its_header_is_refused(header: dict[str, Any]) -> None:
    """The owner's key signs only grants (typ) with ES256: a JWS by it typed otherwise is no grant."""
    key = ECKey.generate_key("P-384") if header.get("alg") == "ES384" else OWNER
    protected = {"alg": "ES256", "typ": GRANT_TYP, "kid": OWNER.thumbprint(), **header}
    protected = {k: v for k, v in protected.items() if v is not None}
    token = jws.serialize_compact(protected, canonical_json(GRANT.to_json()), key, algorithms=[protected["alg"]])
    refused = _refused(token)
    assert (refused.field, refused.expected, refused.actual) == (
        "model_grant.header", f"alg ES256, typ {GRANT_TYP}", protected)


def test_what_is_no_compact_jws_is_refused_naming_the_grant() -> None:
    refused = _refused("not.a-jws")
    assert (refused.field, refused.expected) == ("model_grant", "a compact JWS")
    assert refused.actual == "DecodeError"


@pytest.mark.parametrize(("change", "field", "expected", "actual"), [
    ({"rows": 0}, "model_grant.rows", "at least 1", 0),
    ({"rows": -5}, "model_grant.rows", "at least 1", -5),
    ({"rows": True}, "model_grant.rows", "int", "bool"),
    ({"rows": "10"}, "model_grant.rows", "int", "str"),
    ({"expires_at": 1.5}, "model_grant.expires_at", "int", "float"),
    ({"issued_at": None}, "model_grant.issued_at", "int", "NoneType"),
    ({"tee_key": 7}, "model_grant.tee_key", "str", "int"),
    ({"config_digest": None}, "model_grant.config_digest", "str", "NoneType"),
    ({"type": "cscore.model-grant/v2"}, "model_grant.type", GRANT_TYPE, "cscore.model-grant/v2"),
    ({"extra": 1}, "model_grant.extra", None, "extra"),
])
def test_a_signed_grant_malformed_in_one_field_is_refused_naming_it(change: dict[str, Any], field: str,
                                                                      expected: Any, actual: Any) -> None:
    refused = _refused(_signed({**GRANT.to_json(), **change}))
    assert (refused.field, refused.actual) == (field, actual)
    if expected is not None:
        assert refused.expected == expected


@pytest.mark.parametrize("name", ["issuer", "batch_id", "model_digest", "measurement", "config_digest", "tee_key",
                                  "rows", "issued_at", "expires_at"])
def test_a_signed_grant_without_one_field_is_refused_naming_it(name: str) -> None:
    refused = _refused(_signed({k: v for k, v in GRANT.to_json().items() if k != name}))
    assert (refused.field, refused.actual) == (f"model_grant.{name}", None)


def test_a_signed_payload_that_is_not_json_is_refused_by_name() -> None:
    refused = _refused(_signed(b"\xff not json"))
    assert (refused.field, refused.expected, refused.actual) == (
        "model_grant.signature", "a valid ES256 signature by owner broker 'owner'", "UnicodeDecodeError")


def test_a_grant_of_one_row_is_the_smallest_accepted() -> None:
    one = dataclasses.replace(GRANT, rows=1)
    assert verify_grant(sign_grant(one, OWNER), ISSUERS, now=NOW) == one
    assert ModelGrant.parse(one.to_json()) == one
