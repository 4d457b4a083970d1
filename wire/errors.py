"""The one error root of the wire formats: a document that does not parse names field, expected, actual."""

from __future__ import annotations

from typing import Any


class FormatError(ValueError):
    """A document is malformed; `field` is its dotted path, `expected` and `actual` what was wanted and seen."""

    def __init__(self, field: str, expected: Any, actual: Any, hint: str = "") -> None:
        self.field, self.expected, self.actual, self.hint = field, expected, actual, hint
        shown = actual if not isinstance(actual, str) or len(actual) <= 200 else actual[:200] + "…"
        message = f"{field}: expected {expected}, got {shown!r}"
        super().__init__(f"{message}; {hint}" if hint else message)


def require(obj: Any, path: str, kind: type | tuple[type, ...], *, where: str) -> Any:
    """`obj[path]` (dotted) of the given type; a bool never counts as an int."""
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise FormatError(f"{where}.{path}", _name(kind), None)
        value = value[part]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _tuple(kind)):
        raise FormatError(f"{where}.{path}", _name(kind), type(value).__name__)
    return value


def refuse_unknown(obj: dict[str, Any], allowed: set[str], *, where: str) -> None:
    """Unknown keys are refused: a typo must never silently drop a setting."""
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise FormatError(f"{where}.{unknown[0]}", f"one of {sorted(allowed)}", unknown[0], "unknown field")


def typed_document(doc: Any, where: str, doc_type: str, allowed: set[str]) -> dict[str, Any]:
    """`doc` as a JSON object whose `type` is `doc_type` and whose keys are all in `allowed` (strict parse's
    first step: FormatError names `where`, or its first unknown field, or `where.type`)."""
    if not isinstance(doc, dict):
        raise FormatError(where, "a JSON object", type(doc).__name__)
    refuse_unknown(doc, allowed, where=where)
    if doc.get("type") != doc_type:
        raise FormatError(f"{where}.type", doc_type, doc.get("type"))
    return doc


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _name(kind: type | tuple[type, ...]) -> str:
    return " or ".join(k.__name__ for k in _tuple(kind))
