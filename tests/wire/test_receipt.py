"""The receipt's signed sessions parse strictly: a malformed one is named by its field."""

from __future__ import annotations

import pytest

from wire.errors import FormatError
from wire.receipt import BrokerSession, parse_sessions, sessions_json, signed_claims_digests

A, B = "ab" * 32, "cd" * 32


def test_sessions_round_trip_sorted() -> None:
    sessions = [BrokerSession("provider", (B, A)), BrokerSession("owner", (A,))]
    payload = {"sessions": sessions_json(sessions)}
    assert payload["sessions"] == [{"broker": "owner", "claims_digests": [A]},
                                   {"broker": "provider", "claims_digests": [A, B]}]
    assert parse_sessions(payload) == (BrokerSession("owner", (A,)), BrokerSession("provider", (A, B)))
    assert signed_claims_digests(payload) == {A, B}


@pytest.mark.parametrize(("sessions", "field"), [
    (None, "receipt.sessions"),
    (["owner"], "receipt.sessions[0]"),
    ([{"broker": "owner", "claims_digests": ["AB" * 32]}], "receipt.sessions[0].claims_digests[0]"),
    ([{"broker": "owner", "claims_digests": [A], "worker": "w"}], "receipt.sessions[0].worker"),
    ([{"broker": 3, "claims_digests": [A]}], "receipt.sessions[0].broker"),
])
def test_a_malformed_session_is_named(sessions: object, field: str) -> None:
    with pytest.raises(FormatError) as err:
        parse_sessions({"sessions": sessions} if sessions is not None else {})
    assert err.value.field == field


DIGEST = "64 lower-case hex (a SHA-256)"


@pytest.mark.parametrize(("sessions", "field", "expected", "actual"), [
    ("owner", "receipt.sessions", "list", "str"),
    ([["owner", [A]]], "receipt.sessions[0]", "an object {broker, claims_digests}", "list"),
    ([{"broker": "owner", "claims_digests": [A]}, 3], "receipt.sessions[1]", "an object {broker, claims_digests}",
     "int"),
    ([{"broker": "owner", "claims_digests": [A, "AB" * 32]}], "receipt.sessions[0].claims_digests[1]", DIGEST,
     "AB" * 32),
    ([{"broker": "owner", "claims_digests": [A[:-1]]}], "receipt.sessions[0].claims_digests[0]", DIGEST, A[:-1]),
    ([{"broker": "owner", "claims_digests": [A + "0"]}], "receipt.sessions[0].claims_digests[0]", DIGEST, A + "0"),
    ([{"broker": "owner", "claims_digests": [A + "\n"]}], "receipt.sessions[0].claims_digests[0]", DIGEST,
     A + "\n"),
    ([{"broker": "owner", "claims_digests": [7]}], "receipt.sessions[0].claims_digests[0]", DIGEST, 7),
    ([{"broker": "owner", "claims_digests": A}], "receipt.sessions[0].claims_digests", "list", "str"),
    ([{"broker": "owner"}], "receipt.sessions[0].claims_digests", "list", None),
    ([{"claims_digests": [A]}], "receipt.sessions[0].broker", "str", None),
    ([{"broker": "owner", "claims_digests": [A], "worker": "w"}], "receipt.sessions[0].worker",
     "one of ['broker', 'claims_digests']", "worker"),
])
def test_a_malformed_session_is_refused_naming_field_expected_and_actual(sessions: object, field: str,
                                                                         expected: str, actual: object) -> None:
    with pytest.raises(FormatError) as err:
        parse_sessions({"sessions": sessions})
    assert (err.value.field, err.value.expected, err.value.actual) == (field, expected, actual)


def test_sessions_are_named_under_the_document_that_carries_them() -> None:
    with pytest.raises(FormatError) as err:
        parse_sessions({"sessions": [{"broker": "owner", "claims_digests": ["x"]}]}, where="training_receipt")
    assert err.value.field == "training_receipt.sessions[0].claims_digests[0]"
    with pytest.raises(FormatError) as err:
        parse_sessions({}, where="usage")
    assert (err.value.field, err.value.actual) == ("usage.sessions", None)
    with pytest.raises(FormatError) as err:
        signed_claims_digests({"sessions": [{"broker": "owner", "claims_digests": ["x"]}]})
    assert err.value.field == "receipt.sessions[0].claims_digests[0]"


def test_no_sessions_and_sessions_without_digests_are_well_formed() -> None:
    assert parse_sessions({"sessions": []}) == () and signed_claims_digests({"sessions": []}) == set()
    assert parse_sessions({"sessions": [{"broker": "owner", "claims_digests": []}]}) == (BrokerSession("owner", ()),)
    assert sessions_json([]) == []
    assert BrokerSession("b", (B, A)).to_json() == {"broker": "b", "claims_digests": [A, B]}
    assert sessions_json([BrokerSession("b", ()), BrokerSession("a", (B,)), BrokerSession("c", ())]) == [
        {"broker": "a", "claims_digests": [B]}, {"broker": "b", "claims_digests": []},
        {"broker": "c", "claims_digests": []}]
