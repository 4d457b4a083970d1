"""The provider broker's check of an owner's model grant (`Broker.owner_grant`), in process with the production app
and verifier: grants signed by a registered owner's key that are right in every field but one (another batch,
model, measurement, worker configuration or worker session key) are each refused naming that field, expected and
actual; so are a grant by an unregistered key and no grant. The genuine grant unwraps the model key.
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
from wire.grant import GRANT_TTL_S, ModelGrant, sign_grant

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
