"""Model grants, in process with the production app and verifier. The provider's check (`Broker.owner_grant`):
grants signed by a registered owner's key that are right in every field but one (another batch, model,
measurement, worker configuration or worker session key) are each refused naming that field, expected and actual;
so are a grant by an unregistered key and no grant; the genuine one unwraps the model key. The owner's side
(`Broker.model_grant`): the grant it signs, field for field, and none outside its batch grant. The provider's
quota (`Broker.meter`): each granted batch counted once, the one past the quota refused word for word.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import ECKey

from enclave.kbs_client import AttestedSession, KbsError
from tests.keybroker.inproc import CONFIG, GOOD, OTHER, Env
from wire.grant import GRANT_TTL_S, ModelGrant, sign_grant, verify_grant

MODEL_KEY = b"M" * 32


@pytest.fixture
def provider(tmp_path: Path) -> tuple[Env, ECKey, bytes]:
    """A provider broker holding model key `model-1` (for GOOD), with owner broker `owner`'s grant key registered."""
    env = Env(tmp_path)
    owner_key = ECKey.generate_key("P-256")
    env.admin.register_owner("owner", owner_key.as_dict(private=False))
    env.admin.create_key("model-1", kind="model", measurements=[GOOD])
    return env, owner_key, env.admin.wrap("model-1", MODEL_KEY)


def _grant(session: AttestedSession, **changed: Any) -> ModelGrant:
    now = int(time.time())
    genuine = ModelGrant(issuer="owner", batch_id="batch-1", model_digest="sha256:m", measurement=GOOD,
                         config_digest=CONFIG, tee_key=ECKey.import_key(session.tee_public_jwk).thumbprint(),
                         rows=10, issued_at=now, expires_at=now + GRANT_TTL_S)
    return dataclasses.replace(genuine, **changed)


def _refusal(session: AttestedSession, wrapped: bytes, token: str | None) -> dict[str, Any]:
    with pytest.raises(KbsError) as refused:
        session.unwrap("model-1", wrapped, batch_id="batch-1", model_digest="sha256:m", grant=token)
    assert refused.value.status == 403
    problem: dict[str, Any] = refused.value.problem
    return {k: problem.get(k) for k in ("field", "expected", "actual")}


EXPECTED = "a model grant for this batch from an owner broker registered here"


def test_the_owners_grant_for_this_batch_model_and_session_unwraps_the_model_key(
        provider: tuple[Env, ECKey, bytes]) -> None:
    env, owner_key, wrapped = provider
    session = env.worker()
    token = sign_grant(_grant(session), owner_key)
    assert session.unwrap("model-1", wrapped, batch_id="batch-1", model_digest="sha256:m", grant=token) == MODEL_KEY
    assert env.admin.decisions()[-1]["decision"] == "allow"


@pytest.mark.parametrize(("field", "value"), [("batch_id", "batch-2"), ("model_digest", "sha256:other"),
                                              ("measurement", OTHER), ("config_digest", "00" * 32)])
def test_a_grant_that_differs_in_one_field_is_refused_naming_it(provider: tuple[Env, ECKey, bytes], field: str,
                                                                value: str) -> None:
    env, owner_key, wrapped = provider
    session = env.worker()
    right = getattr(_grant(session), field)
    token = sign_grant(_grant(session, **{field: value}), owner_key)
    assert _refusal(session, wrapped, token) == {
        "field": "grant", "expected": EXPECTED,
        "actual": f"grant.{field}: expected {right!r} (this request and session), got {value!r}"}
    last = env.admin.decisions()[-1]
    assert (last["decision"], last["operation"], last["key_id"]) == ("deny", "unwrap", "model-1")
    assert env.counted()[("unwrap", "deny", "owner-granted")] == 1.0  # counted under the clause that refused


def test_a_grant_issued_to_another_worker_session_is_refused(provider: tuple[Env, ECKey, bytes]) -> None:
    """Same enclave, same batch and model: only the session key differs (a grant lifted from another worker)."""
    env, owner_key, wrapped = provider
    other, session = env.worker(), env.worker()
    theirs = ECKey.import_key(other.tee_public_jwk).thumbprint()
    ours = ECKey.import_key(session.tee_public_jwk).thumbprint()
    assert theirs != ours
    token = sign_grant(_grant(other), owner_key)
    assert _refusal(session, wrapped, token) == {
        "field": "grant", "expected": EXPECTED,
        "actual": f"grant.tee_key: expected {ours!r} (this request and session), got {theirs!r}"}


def test_a_grant_signed_by_an_unregistered_key_or_none_is_refused(provider: tuple[Env, ECKey, bytes]) -> None:
    env, _, wrapped = provider
    session = env.worker()
    forger = ECKey.generate_key("P-256")
    refused = _refusal(session, wrapped, sign_grant(_grant(session), forger))
    assert refused["field"] == "grant" and refused["expected"] == EXPECTED
    assert refused["actual"].startswith(f"model_grant.kid: expected the key of a registered owner broker ['owner'], "
                                        f"got {forger.thumbprint()!r}")
    assert _refusal(session, wrapped, None) == {"field": "grant", "expected": EXPECTED, "actual": "no grant sent"}
    assert _refusal(session, wrapped, "") == {"field": "grant", "expected": EXPECTED, "actual": "no grant sent"}


# -- the owner's side: the grant it signs --------------------------------------------------------------

def test_the_owner_signs_a_grant_for_this_batch_model_and_session_only(tmp_path: Path) -> None:
    owner = Env(tmp_path)
    owner.data_key()  # batch-1 granted to GOOD with worker configuration CONFIG, 10 rows
    session = owner.worker()
    before = int(time.time())
    grant = verify_grant(session.model_grant(batch_id="batch-1", model_digest="sha256:m"),
                         {"owner": owner.admin.grant_key()}, now=time.time())
    assert before <= grant.issued_at <= int(time.time())
    assert grant == ModelGrant(issuer="owner", batch_id="batch-1", model_digest="sha256:m", measurement=GOOD,
                               config_digest=CONFIG, tee_key=ECKey.import_key(session.tee_public_jwk).thumbprint(),
                               rows=10, issued_at=grant.issued_at, expires_at=grant.issued_at + GRANT_TTL_S)
    last = owner.admin.decisions()[-1]
    assert (last["decision"], last["operation"], last["key_id"], last["batch_id"], last["model_digest"]) == (
        "allow", "model-grant", "grant:batch-1", "batch-1", "sha256:m")


@pytest.mark.parametrize(("batch", "model", "measurement", "host_data", "field", "actual"), [
    ("batch-2", "sha256:m", GOOD, CONFIG, "batch_id", "batch-2"),
    ("batch-1", "sha256:other", GOOD, CONFIG, "model_digest", "sha256:other"),
    ("batch-1", "sha256:m", OTHER, CONFIG, "measurement", OTHER),
    ("batch-1", "sha256:m", GOOD, "00" * 32, "host_data", "00" * 32),
])
def test_the_owner_signs_no_grant_outside_its_batch_grant(tmp_path: Path, batch: str, model: str, measurement: str,
                                                          host_data: str, field: str, actual: str) -> None:
    owner = Env(tmp_path)
    owner.data_key()
    session = owner.worker(owner.enclave(measurement, host_data=host_data))
    with pytest.raises(KbsError) as refused:
        session.model_grant(batch_id=batch, model_digest=model)
    assert refused.value.status == 403
    assert (refused.value.problem["field"], refused.value.problem["actual"]) == (field, actual)
    last = owner.admin.decisions()[-1]
    assert (last["decision"], last["operation"], last["key_id"]) == ("deny", "model-grant", f"grant:{batch}")


# -- the provider's quota ------------------------------------------------------------------------------

def test_a_quota_counts_each_granted_batch_once_and_refuses_the_one_past_it(
        provider: tuple[Env, ECKey, bytes]) -> None:
    env, owner_key, _ = provider
    env.admin.create_key("model-q", kind="model", measurements=[GOOD], quota={"rows": 150, "period_s": 3600})
    wrapped = env.admin.wrap("model-q", MODEL_KEY)
    session = env.worker()

    def unwrap(batch: str) -> bytes:
        token = sign_grant(_grant(session, batch_id=batch, rows=100), owner_key)
        return session.unwrap("model-q", wrapped, batch_id=batch, model_digest="sha256:m", grant=token)

    assert unwrap("batch-1") == MODEL_KEY and unwrap("batch-1") == MODEL_KEY  # one batch, counted once
    metered = [e for e in env.admin.decisions() if e["operation"] == "meter"]
    assert [(e["decision"], e["key_id"], e["batch_id"], e["model_digest"], e["reason"]) for e in metered] == [
        ("allow", "model-q", "batch-1", "sha256:m", "owner owner: 100 rows, 100 of 150 in the period")] * 2
    with pytest.raises(KbsError) as over:
        unwrap("batch-2")
    problem = over.value.problem
    assert over.value.status == 429 and problem["type"].endswith("quota-exceeded")
    reason = "quota: owner owner 100 rows used in the period plus 100 would exceed the quota of 150"
    assert problem["detail"] == (f"key 'model-q': {reason}; wait for the period to pass or ask the provider for a "
                                 "larger quota")
    assert (problem["field"], problem["expected"], problem["actual"]) == ("rows", "<= 50", 100)
    last = env.admin.decisions()[-1]
    assert (last["decision"], last["operation"], last["key_id"], last["batch_id"], last["model_digest"],
            last["reason"]) == ("deny", "unwrap", "model-q", "batch-2", "sha256:m", reason)
    counted = {k[:2]: v for k, v in env.counted().items() if k[2] == "quota"}
    assert counted == {("meter", "allow"): 2.0, ("unwrap", "deny"): 1.0}  # counted under the quota's clause


@pytest.mark.parametrize("rows", [0, -100])
def test_a_grant_of_no_or_negative_rows_is_refused_and_gives_no_quota_back(
        provider: tuple[Env, ECKey, bytes], rows: int) -> None:
    """A registered owner broker (compromised, or cheating its own quota) signs a grant whose rows would lower the
    period's use: refused naming the field, nothing metered, and the quota stays spent."""
    env, owner_key, _ = provider
    env.admin.create_key("model-q", kind="model", measurements=[GOOD], quota={"rows": 150, "period_s": 3600})
    wrapped = env.admin.wrap("model-q", MODEL_KEY)
    session = env.worker()

    def unwrap(batch: str, count: int) -> bytes:
        token = sign_grant(_grant(session, batch_id=batch, rows=count), owner_key)
        return session.unwrap("model-q", wrapped, batch_id=batch, model_digest="sha256:m", grant=token)

    assert unwrap("batch-1", 100) == MODEL_KEY
    with pytest.raises(KbsError) as refused:
        unwrap("batch-refund", rows)
    assert refused.value.status == 403
    assert refused.value.problem["actual"] == f"model_grant.rows: expected at least 1, got {rows}"
    assert [e["batch_id"] for e in env.admin.decisions() if e["operation"] == "meter"] == ["batch-1"]
    with pytest.raises(KbsError) as over:  # still 100 of 150 used: 100 more is past the quota
        unwrap("batch-2", 100)
    assert over.value.status == 429


def test_a_model_key_without_a_quota_is_not_metered(provider: tuple[Env, ECKey, bytes]) -> None:
    env, owner_key, wrapped = provider
    session = env.worker()
    token = sign_grant(_grant(session, rows=10**9), owner_key)
    assert session.unwrap("model-1", wrapped, batch_id="batch-1", model_digest="sha256:m", grant=token) == MODEL_KEY
    assert [e for e in env.admin.decisions() if e["operation"] == "meter"] == []


def test_only_a_model_key_reads_a_grant_and_is_metered(provider: tuple[Env, ECKey, bytes]) -> None:
    """A data key created with a quota (a model key's setting, not refused for another kind) is released under its
    own clauses: a valid model grant sent along is not read, and no rows are counted against that quota."""
    env, owner_key, _ = provider
    env.admin.create_key("data-q", kind="data", measurements=[GOOD], quota={"rows": 150, "period_s": 3600})
    wrapped = env.admin.wrap("data-q", MODEL_KEY)
    env.admin.grant("batch-1", "sha256:m", [GOOD], ["data-q"], config_digests=[CONFIG], rows=100)
    session = env.worker()
    token = sign_grant(_grant(session, rows=100), owner_key)
    assert session.unwrap("data-q", wrapped, batch_id="batch-1", model_digest="sha256:m", grant=token) == MODEL_KEY
    assert [e for e in env.admin.decisions() if e["operation"] == "meter"] == []
    assert [k for k in env.counted() if k[2] == "quota"] == []


@pytest.mark.parametrize("rows", [0, -100])
def test_the_meter_itself_refuses_a_grant_below_one_row_by_name(provider: tuple[Env, ECKey, bytes], rows: int) -> None:
    """The second wall, behind the grant's parser: a grant dict of fewer than 1 row reaching the meter is refused as a
    policy denial naming `grant.rows` and logged under the quota clause, not answered with a bare 500."""
    from keybroker.problems import Problem

    env, _, _ = provider
    env.admin.create_key("model-q", kind="model", measurements=[GOOD], quota={"rows": 150, "period_s": 3600})
    broker = env.app.state.broker
    grant = {"issuer": "owner", "batch_id": "batch-r", "model_digest": "sha256:m", "rows": rows}
    with pytest.raises(Problem) as refused:
        broker.meter(broker.store.get_key("model-q"), grant)
    reason = f"quota: owner owner rows: expected at least 1, got {rows}"
    assert (refused.value.status, refused.value.slug, refused.value.detail, refused.value.field,
            refused.value.expected, refused.value.actual) == (
        403, "policy-denied", f"key 'model-q': {reason}", "grant.rows", "at least 1", rows)
    last = env.admin.decisions()[-1]
    assert (last["decision"], last["operation"], last["key_id"], last["batch_id"], last["model_digest"],
            last["reason"]) == ("deny", "unwrap", "model-q", "batch-r", "sha256:m", reason)
    assert [e for e in env.admin.decisions() if e["operation"] == "meter"] == []
    assert env.counted()[("unwrap", "deny", "quota")] == 1.0
