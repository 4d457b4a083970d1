"""What the production broker (in process) logs about a release or resource request: the operation, key, batch,
model and the attested claims' digest and measurement, for a refusal of a key it does not hold as for a grant (the
audit joins each release to its attestation by that digest); and a resource's name, which a key's own policy may
name (`request.resource`).
"""

from __future__ import annotations

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
