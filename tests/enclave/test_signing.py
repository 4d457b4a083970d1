"""enclave.signing: the compact JWS (Ed25519) behind every receipt, manifest and card.

Real keys and real joserfc tokens; each refused token is correct in every way but the one the check guards,
and each refusal is asserted word for word (field, expected, actual).
"""

from __future__ import annotations

import base64
import json

import pytest
from joserfc import jws
from joserfc.jwk import OKPKey

from enclave.signing import SignatureError, generate_signing_key, sign_json, unverified_payload, verify_json
from wire.canonical import canonical_json

PAYLOAD = {"type": "receipt", "b": [2, {"z": 1, "a": "é"}], "a": 1}


def _parts(token: str) -> tuple[dict, bytes]:
    """The protected header and the payload bytes of a compact JWS, decoded without any check."""
    header, payload, _ = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731 - base64url without padding
    return json.loads(base64.urlsafe_b64decode(pad(header))), base64.urlsafe_b64decode(pad(payload))


def _signed(payload: bytes, key: OKPKey, alg: str = "Ed25519") -> str:
    """A token signed by `key` over exactly `payload`, with the given algorithm: the forger's own signer."""
    return jws.serialize_compact({"alg": alg}, payload, key, algorithms=[alg])


def test_a_generated_key_is_a_private_ed25519_key_that_signs() -> None:
    key = generate_signing_key()
    assert (key.curve_name, key.is_private) == ("Ed25519", True)
    assert generate_signing_key().thumbprint() != key.thumbprint()


def test_a_signed_document_carries_alg_kid_and_the_canonical_payload() -> None:
    key = generate_signing_key()
    token = sign_json(PAYLOAD, key)
    header, payload = _parts(token)
    assert header == {"alg": "Ed25519", "kid": key.thumbprint()}
    assert payload == canonical_json(PAYLOAD)
    assert verify_json(token, key, what="receipt") == PAYLOAD


def test_the_public_jwk_alone_verifies_and_surrounding_whitespace_is_ignored() -> None:
    key = generate_signing_key()
    token = sign_json(PAYLOAD, key)
    assert verify_json(f"\n  {token}\n", key.as_dict(private=False), what="card") == PAYLOAD
    assert unverified_payload(f" {token}\n", what="card") == PAYLOAD


def test_a_token_signed_by_another_key_is_refused_naming_the_expected_key() -> None:
    key, forger = generate_signing_key(), generate_signing_key()
    with pytest.raises(SignatureError) as refused:
        verify_json(sign_json(PAYLOAD, forger), key.as_dict(private=False), what="receipt")
    assert str(refused.value) == (f"receipt.signature: expected a valid Ed25519 signature by key {key.thumbprint()}, "
                                  "got BadSignatureError: bad_signature: ")


def test_a_token_signed_with_another_alg_is_refused_even_by_the_right_key() -> None:
    key = generate_signing_key()
    with pytest.warns(Warning):  # joserfc warns that EdDSA is deprecated (RFC 9864) as it signs
        token = _signed(canonical_json(PAYLOAD), key, alg="EdDSA")
    with pytest.raises(SignatureError) as refused:
        verify_json(token, key, what="card")
    assert str(refused.value) == (f"card.signature: expected a valid Ed25519 signature by key {key.thumbprint()}, "
                                  "got UnsupportedAlgorithmError: unsupported_algorithm: Algorithm of 'EdDSA' is not "
                                  "allowed")


def test_a_token_that_is_not_a_compact_jws_is_refused_by_both_readers() -> None:
    key = generate_signing_key()
    with pytest.raises(SignatureError) as refused:
        verify_json("not a token", key, what="card")
    assert str(refused.value) == (f"card.signature: expected a valid Ed25519 signature by key {key.thumbprint()}, "
                                  "got DecodeError: decode_error: Invalid JSON Web Signature")
    with pytest.raises(SignatureError) as unread:
        unverified_payload("not a token", what="card")
    assert str(unread.value) == ("card: expected a compact JWS, got DecodeError: decode_error: Invalid JSON Web "
                                 "Signature")


def test_a_signed_payload_that_is_not_json_is_refused() -> None:
    key = generate_signing_key()
    token = _signed(b"not json", key)
    with pytest.raises(SignatureError) as refused:
        verify_json(token, key, what="card")
    assert str(refused.value) == "card.payload: expected JSON, got undecodable bytes"
    assert isinstance(refused.value.__cause__, json.JSONDecodeError)
    with pytest.raises(SignatureError) as unread:
        unverified_payload(token, what="card")
    assert str(unread.value) == ("card: expected a compact JWS, got JSONDecodeError: Expecting value: line 1 "
                                 "column 1 (char 0)")


def test_a_signed_payload_that_is_not_utf8_is_refused() -> None:
    key = generate_signing_key()
    token = _signed(b"\xff{}", key)
    with pytest.raises(SignatureError) as refused:
        verify_json(token, key, what="card")
    assert str(refused.value) == "card.payload: expected JSON, got undecodable bytes"
    with pytest.raises(SignatureError) as unread:
        unverified_payload(token, what="card")
    assert str(unread.value) == ("card: expected a compact JWS, got UnicodeDecodeError: 'utf-8' codec can't decode "
                                 "byte 0xff in position 0: invalid start byte")


@pytest.mark.parametrize(("payload", "kind"), [([1, 2], "list"), ("a", "str"), (7, "int"), (None, "NoneType")])
def test_a_signed_payload_that_is_json_but_not_an_object_is_refused(payload: object, kind: str) -> None:
    key = generate_signing_key()
    token = _signed(json.dumps(payload).encode(), key)
    with pytest.raises(SignatureError) as refused:
        verify_json(token, key, what="manifest")
    assert str(refused.value) == f"manifest.payload: expected a JSON object, got {kind}"
    with pytest.raises(SignatureError) as unread:
        unverified_payload(token, what="manifest")
    assert str(unread.value) == f"manifest.payload: expected a JSON object, got {kind}"


def test_unverified_payload_reads_a_token_by_any_key_without_checking_it() -> None:
    """Only to find which key must verify it: a forger's token reads, and verification still refuses it."""
    forger = generate_signing_key()
    token = sign_json(PAYLOAD, forger)
    assert unverified_payload(token, what="card") == PAYLOAD
    with pytest.raises(SignatureError):
        verify_json(token, generate_signing_key(), what="card")
