"""Shared by the wire tests: a document changed in one place, and the exact refusal of a parse."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from wire.errors import FormatError


def changed(doc: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`doc` with each of `changes` applied by dotted path ("a.b"); a value of ... removes the field."""
    for path, value in changes.items():
        *parents, last = path.split(".")
        target = doc
        for part in parents:
            target = target[part]
        if value is ...:
            target.pop(last, None)
        else:
            target[last] = value
    return doc


def refused(call: Callable[[], Any], field: str, expected: Any, actual: Any, hint: str = "") -> str:
    """The text of the FormatError `call` raises, once its field, expected, actual and hint are those given."""
    with pytest.raises(FormatError) as info:
        call()
    error = info.value
    assert (error.field, error.expected, error.actual, error.hint) == (field, expected, actual, hint)
    return str(error)
