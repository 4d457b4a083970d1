"""Errors raised by the attestation library.

Every error names the ``field`` it is about, what was ``expected`` and what was found (``actual``),
so a key broker can turn it into an RFC 7807 problem document and a person can act on it.

- :class:`ParseError`: the evidence (or a policy file) is not well formed.
- :class:`VerificationError`: well formed, but a signature, certificate chain or validity check failed.
- :class:`AppraisalError`: cryptographically valid evidence whose claims the policy does not allow.
"""

from __future__ import annotations

from typing import Any


def _show(value: Any) -> str:
    """Render a value for a message: bytes as hex, long values shortened."""
    if isinstance(value, bytes | bytearray):
        value = value.hex()
    text = str(value)
    return text if len(text) <= 200 else text[:197] + "..."


class AttestationError(Exception):
    """Base class: evidence could not be trusted. Carries field, expected, actual."""

    kind = "attestation"

    def __init__(self, field: str, expected: Any, actual: Any, hint: str = "") -> None:
        self.field = field
        self.expected = expected
        self.actual = actual
        self.hint = hint
        message = f"{field}: expected {_show(expected)}, got {_show(actual)}"
        if hint:
            message += f"; {hint}"
        super().__init__(message)

    @property
    def message(self) -> str:
        """The human-readable sentence (same as ``str(err)``)."""
        return str(self)

    def to_dict(self) -> dict[str, str]:
        """JSON-friendly form, e.g. for an RFC 7807 problem document's extension members."""
        return {
            "kind": self.kind,
            "field": self.field,
            "expected": _show(self.expected),
            "actual": _show(self.actual),
            "detail": str(self),
        }


class ParseError(AttestationError):
    """The input is not a well-formed report, certificate, envelope or policy."""

    kind = "parse"


class VerificationError(AttestationError):
    """A signature, certificate chain, validity period or binding check failed."""

    kind = "verification"


class AppraisalError(AttestationError):
    """The evidence is authentic but its claims are not allowed by the policy."""

    kind = "appraisal"
