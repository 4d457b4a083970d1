"""wire/errors.py on its own: the one refusal every wire format raises, and the strict-parse helpers."""

from __future__ import annotations

import pytest

from wire.errors import FormatError, refuse_unknown, require, typed_document


def test_a_refusal_says_field_expected_and_actual_and_the_hint_after_a_semicolon() -> None:
    error = FormatError("grant.rows", "at least 1", 0)
    assert (error.field, error.expected, error.actual, error.hint) == ("grant.rows", "at least 1", 0, "")
    assert str(error) == "grant.rows: expected at least 1, got 0"
    hinted = FormatError("grant.kid", "a key", "k", "register it")
    assert str(hinted) == "grant.kid: expected a key, got 'k'; register it"
    assert isinstance(error, ValueError)


def test_a_long_actual_text_is_shown_cut_at_200_characters_and_kept_whole() -> None:
    assert str(FormatError("f", "x", "a" * 200)) == f"f: expected x, got {'a' * 200!r}"
    error = FormatError("f", "x", "a" * 201)
    assert str(error) == f"f: expected x, got {'a' * 200 + '…'!r}" and error.actual == "a" * 201
    assert str(FormatError("f", "x", ["a" * 300])) == f"f: expected x, got {['a' * 300]!r}"  # only text is cut


def test_require_walks_a_dotted_path_and_names_what_is_missing_or_of_another_type() -> None:
    doc = {"a": {"b": 3, "flag": True, "n": None}}
    assert require(doc, "a.b", int, where="doc") == 3
    assert require(doc, "a.flag", bool, where="doc") is True
    assert require(doc, "a.flag", (int, bool), where="doc") is True
    for path, kind, expected, actual in (("a.c", int, "int", None), ("x", dict, "dict", None),
                                         ("a.b.c", int, "int", None), ("a.flag", int, "int", "bool"),
                                         ("a.n", (str, int), "str or int", "NoneType")):
        with pytest.raises(FormatError) as refused:
            require(doc, path, kind, where="doc")
        assert (refused.value.field, refused.value.expected, refused.value.actual) == (f"doc.{path}", expected, actual)


def test_unknown_members_are_refused_naming_the_first_in_sorted_order() -> None:
    refuse_unknown({"a": 1}, {"a", "b"}, where="doc")
    with pytest.raises(FormatError) as refused:
        refuse_unknown({"a": 1, "z": 2, "c": 3}, {"a"}, where="doc")
    assert (refused.value.field, refused.value.expected, refused.value.actual, refused.value.hint) == (
        "doc.c", "one of ['a']", "c", "unknown field")


def test_a_typed_document_is_an_object_of_its_type_with_known_members_only() -> None:
    doc = {"type": "t/v1", "a": 1}
    assert typed_document(doc, "doc", "t/v1", {"type", "a"}) is doc
    for value, field, expected, actual in (([doc], "doc", "a JSON object", "list"),
                                           ({"type": "t/v2"}, "doc.type", "t/v1", "t/v2"),
                                           ({"a": 1}, "doc.type", "t/v1", None),
                                           ({"type": "t/v2", "b": 1}, "doc.b", "one of ['a', 'type']", "b")):
        with pytest.raises(FormatError) as refused:
            typed_document(value, "doc", "t/v1", {"type", "a"})
        assert (refused.value.field, refused.value.expected, refused.value.actual) == (field, expected, actual)
