"""What the production broker (in process) logs about a release, resource or wrap request: the operation, key,
batch, model and the attested claims' digest and measurement, for a refusal of a key it does not hold as for a
grant (the audit joins each release to its attestation by that digest); a resource's name, which a key's own policy
may name (`request.resource`); and a worker's wrap, which every default policy refuses and a key's policy may allow.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from enclave.kbs_client import AttestedSession, KbsError
from tests.keybroker.inproc import GOOD, Env

LOGGED = ("decision", "operation", "key_id", "batch_id", "model_digest", "measurement", "claims_digest", "reason")


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def _last(env: Env) -> dict[str, Any]:
    last = env.admin.decisions()[-1]
    return {k: last[k] for k in LOGGED}


def _last_of(env: Env, operation: str) -> dict[str, Any]:
    last = [e for e in env.admin.decisions() if e["operation"] == operation][-1]
    return {k: last[k] for k in LOGGED}


def _attested(env: Env) -> tuple[AttestedSession, str]:
    session = env.worker()
    session.attest()
    return session, session.current().claims_digest


def test_a_release_of_a_key_not_held_here_is_logged_with_the_request_and_its_attestation(env: Env) -> None:
    session, digest = _attested(env)
    with pytest.raises(KbsError) as refused:
        session.release("absent", batch_id="batch-1", model_digest="sha256:m")
    assert refused.value.status == 404 and refused.value.problem["field"] == "key_id"
    assert refused.value.problem["actual"] == "absent"
    assert _last(env) == {"decision": "deny", "operation": "release", "key_id": "absent", "batch_id": "batch-1",
                          "model_digest": "sha256:m", "measurement": GOOD, "claims_digest": digest,
                          "reason": "key 'absent' is not held by broker 'owner'"}


def test_an_unwrap_of_a_key_not_held_here_is_logged_counted_and_answered_unknown_key(env: Env) -> None:
    session, digest = _attested(env)
    with pytest.raises(KbsError) as refused:
        session.unwrap("absent", b"W" * 40, batch_id="batch-1", model_digest="sha256:m")
    problem = refused.value.problem
    assert refused.value.status == 404 and problem["type"] == "urn:cscore:keybroker:unknown-key"
    assert problem["detail"] == "key 'absent' is not held by broker 'owner' (ask the broker of the key's owner)"
    assert _last(env) == {"decision": "deny", "operation": "unwrap", "key_id": "absent", "batch_id": "batch-1",
                          "model_digest": "sha256:m", "measurement": GOOD, "claims_digest": digest,
                          "reason": "key 'absent' is not held by broker 'owner'"}
    assert env.counted()[("unwrap", "deny", "unknown-key")] == 1.0


def test_a_resource_not_held_here_is_logged_under_its_key_id_for_no_batch(env: Env) -> None:
    session, digest = _attested(env)
    with pytest.raises(KbsError) as refused:
        session.resource("cscore", "config", "absent")
    assert refused.value.status == 404 and refused.value.problem["actual"] == "res/cscore/config/absent"
    assert _last(env) == {"decision": "deny", "operation": "resource", "key_id": "res/cscore/config/absent",
                          "batch_id": None, "model_digest": None, "measurement": GOOD, "claims_digest": digest,
                          "reason": "key 'res/cscore/config/absent' is not held by broker 'owner'"}


def test_a_resource_release_is_logged_for_no_batch_and_no_model(env: Env) -> None:
    env.admin.put_resource("cscore", "config", "v1", b"resource-value", measurements=[GOOD])
    session, digest = _attested(env)
    assert session.resource("cscore", "config", "v1") == b"resource-value"
    logged = _last(env)
    assert {k: logged[k] for k in LOGGED[:7]} == {
        "decision": "allow", "operation": "resource", "key_id": "res/cscore/config/v1", "batch_id": None,
        "model_digest": None, "measurement": GOOD, "claims_digest": digest}


def test_a_resource_policy_sees_the_resource_asked_for_and_no_batch_or_model(env: Env) -> None:
    policy = ('request.resource == "cscore/config/v1" && request.batch_id == "" && request.model_digest == "" '
              '&& claims.measurement in key.measurements')
    env.admin.put_resource("cscore", "config", "v1", b"resource-value", measurements=[GOOD], policy=policy)
    env.admin.put_resource("cscore", "config", "v2", b"other-value", measurements=[GOOD],
                           policy=policy.replace("v1", "v9"))
    session, _ = _attested(env)
    assert session.resource("cscore", "config", "v1") == b"resource-value"
    with pytest.raises(KbsError) as refused:
        session.resource("cscore", "config", "v2")
    assert refused.value.status == 403 and refused.value.problem["field"] == "policy"


# -- a worker's wrap (/kbs/v0/wrap): refused by every default policy, allowed only where a key's policy says so --

def _wrap(env: Env, session: AttestedSession, key_id: str, key_jwe: str) -> dict[str, Any]:
    body = {"key_id": key_id, "key_jwe": key_jwe, "batch_id": "batch-1", "model_digest": "sha256:m"}
    return session._authorized("POST", "/kbs/v0/wrap", body)


def test_a_worker_wraps_under_a_key_only_where_its_policy_allows_wrap(env: Env) -> None:
    env.data_key()  # data-1, granted for batch-1
    session, digest = _attested(env)
    with pytest.raises(KbsError) as refused:
        _wrap(env, session, "data-1", env.admin._to_broker(b"K" * 16))
    assert refused.value.status == 403
    assert {k: refused.value.problem[k] for k in ("field", "expected", "actual")} == {
        "field": "operation", "expected": "unwrap", "actual": "wrap"}
    env.admin.set_policy("data-1", 'request.operation == "wrap" && request.batch_id == "batch-1" && '
                                   'request.model_digest == "sha256:m" && claims.measurement == "' + GOOD + '"')
    wrapped = base64.b64decode(_wrap(env, session, "data-1", env.admin._to_broker(b"K" * 16))["wrapped"])
    assert env.admin.unwrap("data-1", wrapped) == b"K" * 16
    assert {k: v for k, v in _last_of(env, "wrap").items() if k != "reason"} == {
        "decision": "allow", "operation": "wrap", "key_id": "data-1", "batch_id": "batch-1",
        "model_digest": "sha256:m", "measurement": GOOD, "claims_digest": digest}
    with pytest.raises(KbsError) as unknown:
        _wrap(env, session, "absent", env.admin._to_broker(b"K" * 16))
    assert unknown.value.status == 404
    assert {k: v for k, v in _last(env).items() if k != "reason"} == {
        "decision": "deny", "operation": "wrap", "key_id": "absent", "batch_id": "batch-1",
        "model_digest": "sha256:m", "measurement": GOOD, "claims_digest": digest}


@pytest.mark.parametrize(("key", "jwe", "slug", "detail", "expected", "actual"), [
    (None, "not-a-jwe", "jwe-invalid", "key_jwe does not decrypt with the broker key (encrypt to GET "
                                       "/kbs/v0/broker-key): ValueError", None, None),
    (b"K" * 1025, None, "key-size", "key_jwe: key must be 1..1024 bytes", "1..1024", 1025),
])
def test_a_key_sent_to_wrap_that_does_not_decrypt_or_is_too_long_is_refused(env: Env, key: bytes | None,
                                                                            jwe: str | None, slug: str,
                                                                            detail: str, expected: str | None,
                                                                            actual: int | None) -> None:
    env.data_key()
    env.admin.set_policy("data-1", 'request.operation == "wrap"')
    session, _ = _attested(env)
    key_jwe = env.admin._to_broker(key) if key is not None else str(jwe)
    with pytest.raises(KbsError) as refused:
        _wrap(env, session, "data-1", key_jwe)
    problem = refused.value.problem
    assert refused.value.status == 400 and problem["type"].endswith(slug) and problem["field"] == "key_jwe"
    assert problem["detail"] == detail
    assert (problem.get("expected"), problem.get("actual")) == (expected, actual)


@pytest.mark.parametrize("size", [1, 1024])
def test_keys_of_one_to_1024_bytes_are_wrapped(env: Env, size: int) -> None:
    env.data_key()
    env.admin.set_policy("data-1", 'request.operation == "wrap"')
    session, _ = _attested(env)
    wrapped = _wrap(env, session, "data-1", env.admin._to_broker(b"K" * size))["wrapped"]
    assert env.admin.unwrap("data-1", base64.b64decode(wrapped)) == b"K" * size
