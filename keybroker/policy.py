"""Per-key release policies: CEL expressions over `claims`, `request`, `grant` and `key`.

A key with no policy of its own gets its kind's default, written as named clauses so that a refusal
says which condition failed, with the expected and the actual value.

Before any policy (default or custom), the platform clauses hold every key to a floor: the minimum
TCB (`key.min_tcb`, per component; `fmc` only where the platform has one) and chip-id pinning
(`key.chip_ids`; empty pins nothing, against keys relayed to another machine). Their values are the
key's own settings where set, else the broker config's `min_tcb` / `chip_ids`; both empty by default.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import celpy
from celpy.celparser import CELParseError

KINDS = ("data", "model", "result", "resource")


@dataclass(frozen=True)
class Clause:
    """One condition of a default policy and how to explain its failure."""

    name: str
    expr: str
    field: str
    expected: Callable[[dict[str, Any]], Any]
    actual: Callable[[dict[str, Any]], Any]
    reason: str
    # Optional: (field, expected, actual) computed together, when the failing field depends on the data.
    explain: Callable[[dict[str, Any]], tuple[str, Any, Any]] | None = None

    def refusal(self, ctx: dict[str, Any], error: str | None) -> Verdict:
        """The verdict when this clause does not hold."""
        field, expected, actual = (self.explain(ctx) if self.explain
                                   else (self.field, self.expected(ctx), self.actual(ctx)))
        return Verdict(False, f"{self.name}: {error or self.reason}", field, expected, actual, clause=self.name)


@dataclass(frozen=True)
class Verdict:
    """Outcome of a policy evaluation; on refusal, which field failed and why."""

    allowed: bool
    reason: str
    field: str | None = None
    expected: Any = None
    actual: Any = None
    clause: str = ""  # the deciding clause's name (`custom`/`default` when a whole policy held): a metric label


def _g(ctx: dict[str, Any], name: str) -> Any:
    return ctx["grant"].get(name)


def _tcb_shortfall(ctx: dict[str, Any]) -> tuple[str, Any, Any]:
    """The first TCB component below the key's minimum (mirrors attestation.appraise)."""
    tcb = ctx["claims"].get("tcb") or {}
    for component, floor in ctx["key"]["min_tcb"].items():
        if component == "fmc" and "fmc" not in tcb:
            continue
        if not isinstance(tcb.get(component), int) or tcb[component] < floor:
            return f"tcb.{component}", f">= {floor}", tcb.get(component)
    return "tcb", ctx["key"]["min_tcb"], tcb


PLATFORM_CLAUSES = [
    Clause("min-tcb",
           'key.min_tcb.all(c, (c == "fmc" && !(c in claims.tcb)) || '
           '(c in claims.tcb && claims.tcb[c] >= key.min_tcb[c]))',
           "tcb", lambda c: None, lambda c: None,
           "the platform firmware (reported TCB) is older than this key allows; update it",
           explain=_tcb_shortfall),
    Clause("chip-pinned", "size(key.chip_ids) == 0 || claims.chip_id in key.chip_ids", "chip_id",
           lambda c: c["key"]["chip_ids"], lambda c: c["claims"].get("chip_id"),
           "the evidence comes from a chip this key is not pinned to"),
    # Simulated evidence is forgeable by anyone holding the simulated firmware: only keys opted in by name.
    Clause("root-allowed", 'claims.root != "simulated" || key.simulated_allowed', "root",
           lambda c: "a hardware root (amd, intel); simulated only for keys in the broker's simulated_key_ids",
           lambda c: c["claims"].get("root"),
           "the evidence chains to the simulated root and this key is not opted in to it"),
]

_NOT_DEBUG = Clause("not-debug", "!claims.debug", "debug", lambda c: False, lambda c: c["claims"].get("debug"),
                    "the TEE runs in debug mode (its memory is readable by the host)")

def _grant_clauses(what: str) -> list[Clause]:
    """What an owner's batch grant requires of a request and of the attested worker."""
    return [
        Clause("batch-granted", "has(grant.model_digest)", "batch_id",
               lambda c: "a batch with a grant", lambda c: c["request"]["batch_id"],
               "the batch has no grant at this broker; the owner must record one"),
        Clause("model-granted", "request.model_digest == grant.model_digest", "model_digest",
               lambda c: _g(c, "model_digest"), lambda c: c["request"]["model_digest"],
               f"the model is not the one the owner granted {what}"),
        Clause("measurement-granted", "claims.measurement in grant.measurements", "measurement",
               lambda c: _g(c, "measurements"), lambda c: c["claims"].get("measurement"),
               "the enclave measurement is not among the batch grant's measurements"),
        Clause("config-granted", "claims.config_digest in grant.config_digests", "host_data",
               lambda c: _g(c, "config_digests"), lambda c: c["claims"].get("config_digest"),
               "the worker's measured configuration (HOST_DATA / MRCONFIGID) is not one the owner granted"),
    ]


_KEY_GRANTED = Clause("key-granted", "request.key_id in grant.key_ids", "key_id",
                      lambda c: _g(c, "key_ids"), lambda c: c["request"]["key_id"],
                      "the key is not among the batch grant's keys")

DEFAULT_CLAUSES: dict[str, list[Clause]] = {
    "data": [
        Clause("unwrap-only", 'request.operation == "unwrap"', "operation",
               lambda c: "unwrap", lambda c: c["request"]["operation"],
               "a data key is only unwrapped by workers (the owner wraps its own data)"),
        *_grant_clauses("for this batch"),
        _KEY_GRANTED,
        _NOT_DEBUG,
    ],
    # A batch's result key: released to the attested worker, which wraps results under it locally, so
    # results are never wrapped to a key the worker has not authenticated.
    "result": [
        Clause("release-only", 'request.operation == "release"', "operation",
               lambda c: "release", lambda c: c["request"]["operation"],
               "a result key is only released to a granted worker"),
        *_grant_clauses("for this batch"),
        _KEY_GRANTED,
        _NOT_DEBUG,
    ],
    # The owner broker's signed model grant for the provider (no key of its own is released).
    "model-grant": [
        *_grant_clauses("for this batch"),
        _NOT_DEBUG,
    ],
    "model": [
        Clause("unwrap-only", 'request.operation == "unwrap"', "operation",
               lambda c: "unwrap", lambda c: c["request"]["operation"], "a model key may only be unwrapped"),
        Clause("measurement-allowed", "claims.measurement in key.measurements", "measurement",
               lambda c: c["key"]["measurements"], lambda c: c["claims"].get("measurement"),
               "the enclave measurement is not in the model key's allowed list"),
        Clause("owner-granted", "has(owner_grant.batch_id)", "grant",
               lambda c: "a model grant for this batch from an owner broker registered here",
               lambda c: c.get("owner_grant_error") or "none",
               "every batch needs a fresh grant from a registered owner's broker"),
        _NOT_DEBUG,
    ],
    "resource": [
        Clause("resource-only", 'request.operation == "resource"', "operation",
               lambda c: "resource", lambda c: c["request"]["operation"], "a resource may only be fetched"),
        Clause("measurement-allowed", "claims.measurement in key.measurements", "measurement",
               lambda c: c["key"]["measurements"], lambda c: c["claims"].get("measurement"),
               "the enclave measurement is not in the resource's allowed list"),
        _NOT_DEBUG,
    ],
}


class PolicyError(ValueError):
    """A CEL policy does not compile."""


class PolicyEngine:
    """Compiles CEL once per distinct text and evaluates it against a request's context."""

    def __init__(self) -> None:
        self._env = celpy.Environment()
        self._programs: dict[str, Any] = {}
        self._lock = threading.Lock()

    def compile(self, expr: str) -> Any:
        """Compile (cached); raises PolicyError naming the parse problem."""
        with self._lock:
            program = self._programs.get(expr)
            if program is None:
                try:
                    program = self._env.program(self._env.compile(expr))
                except CELParseError as exc:
                    raise PolicyError(f"policy is not valid CEL: {exc}") from exc
                if len(self._programs) > 1024:  # bounded cache: policies are few, texts are attacker-free
                    self._programs.clear()
                self._programs[expr] = program
            return program

    def _holds(self, expr: str, ctx: dict[str, Any]) -> tuple[bool, str | None]:
        """True only for a boolean true; any other value or evaluation error refuses."""
        activation = {k: celpy.json_to_cel(v) for k, v in ctx.items()}
        try:
            value = self.compile(expr).evaluate(activation)
        except Exception as exc:  # CELEvalError, and defensive: any failure refuses
            return False, f"policy evaluation failed: {exc.args[0] if exc.args else exc}"
        if isinstance(value, celpy.celtypes.BoolType):
            return bool(value), None
        return False, f"policy returned {type(value).__name__}, not bool"

    def evaluate(self, policy: str | None, kind: str, ctx: dict[str, Any]) -> Verdict:
        """Evaluate the platform clauses, then the key's policy (None: its kind's default clauses)."""
        ctx = {**ctx, "key": {"min_tcb": {}, "chip_ids": [], "simulated_allowed": False, **ctx.get("key", {})},
               "claims": {"tcb": {}, "chip_id": "", "host_data": "", "config_digest": "", **ctx.get("claims", {})},
               "owner_grant": ctx.get("owner_grant") or {}}
        for clause in PLATFORM_CLAUSES:
            ok, error = self._holds(clause.expr, ctx)
            if not ok:
                return clause.refusal(ctx, error)
        if policy is not None:
            ok, error = self._holds(policy, ctx)
            if ok:
                return Verdict(True, "custom policy holds", clause="custom")
            return Verdict(False, error or "the key's custom policy does not hold", "policy", policy, None,
                           clause="custom")
        for clause in DEFAULT_CLAUSES[kind]:
            ok, error = self._holds(clause.expr, ctx)
            if not ok:
                return clause.refusal(ctx, error)
        return Verdict(True, f"default {kind} policy holds", clause="default")
