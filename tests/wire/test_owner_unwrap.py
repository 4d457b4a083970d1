"""wire/owner_unwrap.py is the one definition of the owner's unwrap call: the Python client builds its body there,
and the Java KMS client for Spark (sdk/spark/OwnerBrokerKmsClient.java) holds the same constants."""

from __future__ import annotations

import re

from sdk.spark import SOURCE
from wire import owner_unwrap

SHARED = ("PATH", "JWE_ALG", "JWE_ENC", "RECIPIENT_CURVE", "RESPONSE_FIELD")


def _java_constants() -> dict[str, str]:
    text = SOURCE.read_text()
    return dict(re.findall(r'static final String (\w+) = "([^"]*)";', text))


def test_the_java_client_follows_the_wire_format() -> None:
    java = _java_constants()
    assert {name: java.get(name) for name in SHARED} == {name: getattr(owner_unwrap, name) for name in SHARED}
    assert owner_unwrap.JWE_ALGS == [owner_unwrap.JWE_ALG, owner_unwrap.JWE_ENC]
    # Every field of the request the Java client writes is one the wire format names.
    written = set(re.findall(r'body\.(?:put|set)\("(\w+)"', SOURCE.read_text()))
    assert written == set(owner_unwrap.request_body("k", "AA==", {}, "b"))


def test_the_request_body_names_the_batch_only_when_given() -> None:
    jwk = {"kty": "EC", "crv": "P-256", "x": "x", "y": "y"}
    assert owner_unwrap.request_body("acme.b.results", "AAEC", jwk) == {
        "key_id": "acme.b.results",
        "wrapped": "AAEC",
        "recipient_jwk": jwk,
    }
    assert owner_unwrap.request_body("k", "AAEC", jwk, "b-1")["batch_id"] == "b-1"
    assert "batch_id" not in owner_unwrap.request_body("k", "AAEC", jwk, "")
