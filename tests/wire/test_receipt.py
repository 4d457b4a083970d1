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
