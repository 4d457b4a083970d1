"""The broker's release policy, clause by clause, on verified claims that are right in every way but one:
a grant without measurements, a digest or chip equal on a prefix, a TCB component missing or one below
its floor, a debug TEE, an operation a key kind does not allow. Each refusal names field, expected, actual.
"""

from __future__ import annotations

from typing import Any

import celpy
import pytest
from celpy.celparser import CELParseError

from keybroker.policy import PolicyEngine, PolicyError, Verdict

GOOD = "ab" * 48
CHIP = "5c" * 64
TCB = {"bootloader": 4, "tee": 0, "snp": 22, "microcode": 213}
CONFIG = "cf" * 32  # the worker configuration digest (HOST_DATA) the owner granted
ENGINE = PolicyEngine()


def _ctx(claims: dict[str, Any] | None = None, request: dict[str, Any] | None = None,
         grant: dict[str, Any] | None = None, key: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "claims": {"measurement": GOOD, "debug": False, "tcb": dict(TCB), "chip_id": CHIP, "root": "amd",
                   "config_digest": CONFIG, **(claims or {})},
        "request": {"operation": "unwrap", "key_id": "k", "batch_id": "b", "model_digest": "sha256:m",
                    **(request or {})},
        "grant": ({"model_digest": "sha256:m", "key_ids": ["k"], "measurements": [GOOD], "config_digests": [CONFIG]}
                  if grant is None else grant),
        "owner_grant": {"batch_id": "b", "model_digest": "sha256:m"},
        "key": {"key_id": "k", "kind": "data", "measurements": [GOOD], "min_tcb": {}, "chip_ids": [], **(key or {})},
    }


def _verdict(kind: str = "data", policy: str | None = None, **parts: Any) -> Verdict:
    return ENGINE.evaluate(policy, kind, _ctx(**parts))


def _refusal(kind: str = "data", policy: str | None = None, **parts: Any) -> tuple[Any, Any, Any]:
    verdict = _verdict(kind, policy, **parts)
    assert not verdict.allowed
    return verdict.field, verdict.expected, verdict.actual


@pytest.mark.parametrize(("kind", "operation"), [("data", "unwrap"), ("result", "release"), ("model", "unwrap"),
                                                 ("resource", "resource")])
def test_honest_requests_are_allowed(kind: str, operation: str) -> None:
    verdict = _verdict(kind, request={"operation": operation})
    assert verdict == Verdict(True, f"default {kind} policy holds", clause="default")


# -- data keys: the batch grant ---------------------------------------------------------------------

def test_grant_without_measurements_releases_nothing() -> None:
    grant = {"model_digest": "sha256:m", "key_ids": ["k"], "measurements": [], "config_digests": [CONFIG]}
    assert _refusal(grant=grant) == ("measurement", [], GOOD)


def test_no_grant_for_the_batch() -> None:
    assert _refusal(grant={}) == ("batch_id", "a batch with a grant", "b")


@pytest.mark.parametrize(("kind", "operation"), [("data", "unwrap"), ("result", "release"), ("model-grant", "unwrap")])
@pytest.mark.parametrize(("request_", "grant", "clause", "reason"), [
    ({}, {}, "batch-granted", "the batch has no grant at this broker; the owner must record one"),
    ({"model_digest": "sha256:mm"}, None, "model-granted", "the model is not the one the owner granted for this batch"),
    ({}, {"model_digest": "sha256:m", "measurements": [], "config_digests": [CONFIG]}, "measurement-granted",
     "the enclave measurement is not among the batch grant's measurements"),
    ({}, {"model_digest": "sha256:m", "measurements": [GOOD], "config_digests": []}, "config-granted",
     "the worker's measured configuration (HOST_DATA / MRCONFIGID) is not one the owner granted"),
])
def test_each_grant_clause_refusal_is_named_word_for_word(kind: str, operation: str, request_: dict[str, str],
                                                          grant: dict[str, Any] | None, clause: str,
                                                          reason: str) -> None:
    """The clause's name is the refusal's metric label and the start of its reason: both exact."""
    verdict = _verdict(kind, request={"operation": operation, **request_}, grant=grant)
    assert (verdict.allowed, verdict.clause, verdict.reason) == (False, clause, f"{clause}: {reason}")


@pytest.mark.parametrize(("request_", "grant", "refusal"), [
    ({"key_id": "k2"}, {}, ("key_id", ["k"], "k2")),
    ({"model_digest": "sha256:mm"}, {}, ("model_digest", "sha256:m", "sha256:mm")),
    ({"model_digest": "sha256:"}, {}, ("model_digest", "sha256:m", "sha256:")),
    ({}, {"measurements": [GOOD[:64]]}, ("measurement", [GOOD[:64]], GOOD)),
    ({}, {"key_ids": ["k-other"]}, ("key_id", ["k-other"], "k")),
])
def test_grant_matches_whole_values_only(request_: dict[str, str], grant: dict[str, Any],
                                         refusal: tuple[Any, Any, Any]) -> None:
    full = {"model_digest": "sha256:m", "key_ids": ["k"], "measurements": [GOOD], "config_digests": [CONFIG], **grant}
    assert _refusal(request=request_, grant=full) == refusal


@pytest.mark.parametrize("kind", ["data", "model", "resource"])
def test_debug_tee_is_refused_for_every_kind(kind: str) -> None:
    operation = {"data": "unwrap", "model": "unwrap", "resource": "resource"}[kind]
    verdict = _verdict(kind, claims={"debug": True}, request={"operation": operation})
    assert (verdict.allowed, verdict.field, verdict.expected, verdict.actual) == (False, "debug", False, True)
    assert verdict.reason.startswith("not-debug: ")


# -- model and resource keys: their own measurement list and operation ---------------------------------

@pytest.mark.parametrize(("kind", "operation", "expected"), [("model", "wrap", "unwrap"),
                                                             ("model", "resource", "unwrap"),
                                                             ("resource", "unwrap", "resource")])
def test_operation_a_key_kind_does_not_allow(kind: str, operation: str, expected: str) -> None:
    assert _refusal(kind, request={"operation": operation}) == ("operation", expected, operation)


@pytest.mark.parametrize("kind", ["model", "resource"])
def test_measurement_outside_the_key_list(kind: str) -> None:
    operation = "unwrap" if kind == "model" else "resource"
    key = {"measurements": [GOOD[:-2] + "ac"]}
    assert _refusal(kind, request={"operation": operation}, key=key) == ("measurement", key["measurements"], GOOD)
    assert _refusal(kind, request={"operation": operation}, key={"measurements": []}) == ("measurement", [], GOOD)


# -- the platform floor: under every policy ------------------------------------------------------------

@pytest.mark.parametrize("component", sorted(TCB))
def test_tcb_below_the_floor_names_the_component(component: str) -> None:
    floor = {component: TCB[component] + 1}
    assert _refusal(key={"min_tcb": floor}) == (f"tcb.{component}", f">= {TCB[component] + 1}", TCB[component])
    assert _verdict(key={"min_tcb": {component: TCB[component]}}).allowed  # at the floor


def test_tcb_component_missing_from_the_claims() -> None:
    claims = {"tcb": {k: v for k, v in TCB.items() if k != "microcode"}}
    assert _refusal(claims=claims, key={"min_tcb": {"microcode": 1}}) == ("tcb.microcode", ">= 1", None)


def test_tcb_component_that_is_not_a_number() -> None:
    field, expected, actual = _refusal(claims={"tcb": {**TCB, "snp": "99"}}, key={"min_tcb": {"snp": 1}})
    assert (field, expected, actual) == ("tcb.snp", ">= 1", "99")


def test_fmc_floor_applies_only_where_the_platform_has_one() -> None:
    assert _verdict(key={"min_tcb": {"fmc": 9}}).allowed  # Milan/Genoa: no FMC
    turin = {"tcb": {**TCB, "fmc": 1}}
    assert _refusal(claims=turin, key={"min_tcb": {"fmc": 2, "snp": 1}}) == ("tcb.fmc", ">= 2", 1)
    assert _verdict(claims=turin, key={"min_tcb": {"fmc": 1}}).allowed


def test_first_component_below_the_floor_is_named() -> None:
    floor = {"bootloader": 1, "snp": 30, "microcode": 250}
    assert _refusal(key={"min_tcb": floor})[0] == "tcb.snp"


def test_a_component_at_its_floor_is_not_named_when_a_later_one_is_below() -> None:
    floor = {"bootloader": TCB["bootloader"], "snp": TCB["snp"] + 1}
    assert _refusal(key={"min_tcb": floor}) == ("tcb.snp", f">= {TCB['snp'] + 1}", TCB["snp"])


def test_an_fmc_floor_on_a_platform_without_fmc_does_not_hide_the_component_below() -> None:
    """Milan/Genoa (no FMC) under a key whose floor names fmc first: the refusal names the component that is
    short, not fmc and not the whole TCB."""
    assert _refusal(key={"min_tcb": {"fmc": 9, "snp": TCB["snp"] + 1}}) == ("tcb.snp", f">= {TCB['snp'] + 1}",
                                                                            TCB["snp"])


@pytest.mark.parametrize("pinned", [CHIP[:64], CHIP[:-2] + "5d", CHIP.upper()])
def test_chip_pinned_to_another_or_a_prefix(pinned: str) -> None:
    assert _refusal(key={"chip_ids": [pinned]}) == ("chip_id", [pinned], CHIP)
    assert _verdict(key={"chip_ids": [pinned, CHIP]}).allowed


@pytest.mark.parametrize("policy", ["true", 'request.operation == "unwrap"'])
def test_the_floor_holds_under_a_custom_policy(policy: str) -> None:
    assert _refusal(policy=policy, key={"min_tcb": {"snp": 23}})[0] == "tcb.snp"
    assert _refusal(policy=policy, key={"chip_ids": ["00" * 64]})[0] == "chip_id"
    assert _verdict(policy=policy) == Verdict(True, "custom policy holds", clause="custom")


def test_custom_policy_refusals_say_why() -> None:
    verdict = _verdict(policy="claims.tcb.snp > 100")
    assert (verdict.allowed, verdict.field, verdict.expected, verdict.reason) == (
        False, "policy", "claims.tcb.snp > 100", "the key's custom policy does not hold")
    assert verdict.clause == "custom" and verdict.actual is None
    assert _verdict(policy='"yes"').reason == "policy returned StringType, not bool"
    failed = _verdict(policy="claims.nothing.here")
    assert (failed.allowed, failed.reason, failed.clause) == (
        False, "policy evaluation failed: no such member in mapping: 'nothing'", "custom")


# -- the measured worker configuration, the simulated root, model grants, result keys ------------------

@pytest.mark.parametrize("granted", [[], [CONFIG[:32]], ["ee" * 32]])
def test_a_configuration_the_owner_did_not_grant_gets_nothing(granted: list[str]) -> None:
    grant = {"model_digest": "sha256:m", "key_ids": ["k"], "measurements": [GOOD], "config_digests": granted}
    assert _refusal(grant=grant) == ("host_data", granted, CONFIG)


@pytest.mark.parametrize("kind", ["data", "result", "model", "resource"])
def test_simulated_evidence_opens_only_keys_opted_in(kind: str) -> None:
    operation = {"data": "unwrap", "result": "release", "model": "unwrap", "resource": "resource"}[kind]
    refused = _verdict(kind, claims={"root": "simulated"}, request={"operation": operation})
    assert (refused.allowed, refused.field, refused.actual) == (False, "root", "simulated")
    opted_in = _verdict(kind, claims={"root": "simulated"}, request={"operation": operation},
                        key={"simulated_allowed": True})
    assert opted_in.allowed


def test_a_model_key_needs_an_owner_grant() -> None:
    ctx = _ctx(key={"kind": "model"})
    ctx["owner_grant"], ctx["owner_grant_error"] = {}, "model_grant.kid: not a registered owner broker"
    verdict = ENGINE.evaluate(None, "model", ctx)
    assert (verdict.allowed, verdict.field) == (False, "grant")
    assert verdict.actual == "model_grant.kid: not a registered owner broker"


@pytest.mark.parametrize(("kind", "operation", "expected"), [
    ("data", "wrap", "unwrap"), ("data", "release", "unwrap"), ("result", "unwrap", "release"),
    ("result", "wrap", "release"), ("model", "release", "unwrap")])
def test_each_key_kind_allows_one_operation(kind: str, operation: str, expected: str) -> None:
    assert _refusal(kind, request={"operation": operation}) == ("operation", expected, operation)


def test_a_policy_that_is_not_cel_is_refused_naming_the_parse_error() -> None:
    with pytest.raises(CELParseError) as parse:
        celpy.Environment().compile("claims.")
    with pytest.raises(PolicyError) as refused:
        PolicyEngine().compile("claims.")
    assert str(refused.value) == f"policy is not valid CEL: {parse.value}"
    assert str(refused.value) == "policy is not valid CEL: claims.\n      ^\n"


def test_each_policy_text_is_compiled_once_and_the_cache_is_bounded() -> None:
    engine = PolicyEngine()
    assert engine.compile("claims.debug") is engine.compile("claims.debug")  # one program per distinct text
    for i in range(1024):
        engine.compile(f"{i} == {i}")
    assert len(engine._programs) == 1025  # the bound is checked before each new text is added
    engine.compile("true")
    assert len(engine._programs) == 1  # beyond it the cache starts over, never grows


def test_claims_without_a_chip_id_or_a_configuration_digest_are_refused_showing_none_given() -> None:
    """A TDX quote carries no chip id: a chip-pinned key refuses it, showing the empty default; claims without
    a configuration digest get no key from a grant that names one."""
    ctx = _ctx(key={"chip_ids": [CHIP]})
    del ctx["claims"]["chip_id"]
    pinned = ENGINE.evaluate(None, "data", ctx)
    assert (pinned.allowed, pinned.field, pinned.expected, pinned.actual) == (False, "chip_id", [CHIP], "")
    ctx = _ctx()
    del ctx["claims"]["config_digest"]
    unconfigured = ENGINE.evaluate(None, "data", ctx)
    assert (unconfigured.allowed, unconfigured.field, unconfigured.expected, unconfigured.actual) == (
        False, "host_data", [CONFIG], "")


# -- what a context leaves out: evaluate's defaults refuse, they never make a clause fail by error ------------

def test_a_key_that_does_not_say_it_is_opted_in_to_the_simulated_root_is_not() -> None:
    ctx = _ctx(claims={"root": "simulated"})
    assert "simulated_allowed" not in ctx["key"]
    verdict = ENGINE.evaluate(None, "data", ctx)
    assert (verdict.allowed, verdict.reason, verdict.field, verdict.actual, verdict.clause) == (
        False, "root-allowed: the evidence chains to the simulated root and this key is not opted in to it", "root",
        "simulated", "root-allowed")


def test_a_key_without_a_floor_or_pins_and_a_context_without_a_key_get_the_empty_defaults() -> None:
    ctx = _ctx()
    del ctx["key"]["min_tcb"], ctx["key"]["chip_ids"]
    assert ENGINE.evaluate(None, "data", ctx) == Verdict(True, "default data policy holds", clause="default")
    ctx = _ctx()
    del ctx["key"]  # a model grant is not a key: its clauses read the grant and the claims only
    assert ENGINE.evaluate(None, "model-grant", ctx) == Verdict(True, "default model-grant policy holds",
                                                                clause="default")


def test_claims_without_a_tcb_are_below_any_floor_by_the_clause_not_by_an_error() -> None:
    ctx = _ctx(key={"min_tcb": {"snp": 22}})
    del ctx["claims"]["tcb"]
    verdict = ENGINE.evaluate(None, "data", ctx)
    assert (verdict.allowed, verdict.reason, verdict.field, verdict.expected, verdict.actual) == (
        False, "min-tcb: the platform firmware (reported TCB) is older than this key allows; update it", "tcb.snp",
        ">= 22", None)


def test_a_custom_policy_reads_missing_host_data_as_empty() -> None:
    ctx = _ctx()
    assert "host_data" not in ctx["claims"]
    policy = 'claims.host_data != ""'
    assert ENGINE.evaluate(policy, "data", ctx) == Verdict(False, "the key's custom policy does not hold", "policy",
                                                          policy, None, clause="custom")


def test_a_context_without_claims_is_refused_at_the_first_clause_that_reads_one() -> None:
    ctx = _ctx()
    del ctx["claims"]
    verdict = ENGINE.evaluate(None, "data", ctx)
    assert (verdict.allowed, verdict.reason, verdict.field) == (
        False, "root-allowed: policy evaluation failed: no such member in mapping: 'root'", "root")


@pytest.mark.parametrize("owner_grant", [None, "absent"])
def test_a_model_key_without_an_owner_grant_is_refused_by_its_clause(owner_grant: str | None) -> None:
    ctx = _ctx(key={"kind": "model"})
    if owner_grant is None:
        ctx["owner_grant"] = None
    else:
        del ctx["owner_grant"]
    verdict = ENGINE.evaluate(None, "model", ctx)
    assert (verdict.allowed, verdict.reason, verdict.field, verdict.actual) == (
        False, "owner-granted: every batch needs a fresh grant from a registered owner's broker", "grant", "none")


def test_a_default_clause_that_cannot_be_evaluated_refuses_saying_why() -> None:
    """A grant recorded without its measurements: the clause reading them fails to evaluate, and refuses with
    the evaluation's error in its reason."""
    grant = {"model_digest": "sha256:m", "key_ids": ["k"], "config_digests": [CONFIG]}
    verdict = _verdict(grant=grant)
    assert (verdict.allowed, verdict.reason, verdict.field, verdict.clause) == (
        False, "measurement-granted: policy evaluation failed: no such member in mapping: 'measurements'",
        "measurement", "measurement-granted")


@pytest.mark.parametrize("owner_grant", [None, "absent"])
def test_a_custom_policy_sees_no_owner_grant_as_an_empty_map(owner_grant: str | None) -> None:
    """`owner_grant` is a verified model grant's payload or `{}`: a custom policy may take its size."""
    ctx = _ctx(key={"kind": "model"})
    if owner_grant is None:
        ctx["owner_grant"] = None
    else:
        del ctx["owner_grant"]
    policy = "size(owner_grant) == 0"
    assert ENGINE.evaluate(policy, "model", ctx) == Verdict(True, "custom policy holds", clause="custom")
