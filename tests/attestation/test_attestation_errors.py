"""The error types carry field/expected/actual and say it in one sentence."""

import pytest

from attestation.errors import AppraisalError, AttestationError, ParseError, VerificationError


@pytest.mark.parametrize("cls", [ParseError, VerificationError, AppraisalError])
def test_errors_name_field_expected_actual(cls: type[AttestationError]) -> None:
    err = cls("report.measurement", "one of ['aa']", b"\xbb\xcc", "rebuild the worker image")
    assert isinstance(err, AttestationError)
    assert (err.field, err.expected, err.actual) == ("report.measurement", "one of ['aa']", b"\xbb\xcc")
    assert str(err) == "report.measurement: expected one of ['aa'], got bbcc; rebuild the worker image"
    assert err.to_dict()["field"] == "report.measurement"
    assert err.to_dict()["kind"] == cls.kind


def test_long_values_are_shortened() -> None:
    err = ParseError("report", "1184 bytes", b"\x00" * 500)
    assert len(str(err)) < 300
