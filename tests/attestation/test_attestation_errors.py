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


def test_each_kind_is_named_and_the_dict_form_is_whole() -> None:
    kinds = {AttestationError: "attestation", ParseError: "parse", VerificationError: "verification",
             AppraisalError: "appraisal"}
    for cls, kind in kinds.items():
        err = cls("quote.header", 4, bytearray(b"\x01\xff"))
        assert err.to_dict() == {"kind": kind, "field": "quote.header", "expected": "4", "actual": "01ff",
                                 "detail": "quote.header: expected 4, got 01ff"}
        assert err.message == str(err) == "quote.header: expected 4, got 01ff" and err.hint == ""


def test_a_value_is_shown_whole_up_to_200_characters_then_cut_to_200() -> None:
    assert str(ParseError("f", "x" * 200, "y")) == f"f: expected {'x' * 200}, got y"
    cut = ParseError("f", "e", "z" * 201)
    assert str(cut) == f"f: expected e, got {'z' * 197}..."
    assert cut.to_dict()["actual"] == "z" * 197 + "..." and cut.actual == "z" * 201
    assert ParseError("f", b"\xab" * 101, "a").to_dict()["expected"] == "ab" * 98 + "a..."
