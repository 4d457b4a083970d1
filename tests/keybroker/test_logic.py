"""Broker logic in-process with the production verifier and the simulated SEV-SNP TEE: policies, nonces,
tokens, proof of possession, limits.

The same flows run against a real process in test_attested.py; in-process, each refusal is quick to provoke.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from attestation import Evidence
from attestation.simulated import SIM_TCB
from enclave.kbs_client import KbsError
from keybroker import sessions, tokens
from keybroker.policy import PolicyEngine
from keybroker.sessions import NonceError, SessionTable
from tests.keybroker.inproc import CONFIG, GOOD, OTHER, Env, SimEnclave, TestClient
from wire.canonical import canonical_json
from wire.keywrap import wrap_key


def test_granted_enclave_unwraps_data_and_gets_the_result_key_released(env: Env) -> None:
    wrapped = env.data_key()
    env.admin.create_key("results-1", kind="result")
    env.admin.grant("batch-1", "sha256:m", [GOOD], ["data-1", "results-1"], config_digests=[CONFIG], rows=10)
    worker = env.worker()
    assert worker.unwrap("data-1", wrapped, batch_id="batch-1", model_digest="sha256:m") == b"D" * 16
    master, version = worker.release("results-1", batch_id="batch-1", model_digest="sha256:m")
    # The worker wraps results locally under the released key; the owner's broker unwraps them.
    assert env.admin.unwrap("results-1", wrap_key(master, "results-1", b"R" * 16, version)) == b"R" * 16
    assert worker.runtime_data is not None and worker.evidence is not None
    assert worker.runtime_data["tee_pubkey"] == worker.tee_public_jwk


def test_data_keys_are_never_released_and_result_keys_never_unwrapped(env: Env) -> None:
    wrapped = env.data_key()
    env.admin.create_key("results-1", kind="result")
    env.admin.grant("batch-1", "sha256:m", [GOOD], ["data-1", "results-1"], config_digests=[CONFIG], rows=10)
    worker = env.worker()
    with pytest.raises(KbsError) as released:
        worker.release("data-1", batch_id="batch-1", model_digest="sha256:m")
    assert released.value.problem["field"] == "operation" and released.value.problem["expected"] == "unwrap"
    with pytest.raises(KbsError) as unwrapped:
        worker.unwrap("results-1", wrapped, batch_id="batch-1", model_digest="sha256:m")
    assert unwrapped.value.problem["field"] == "operation" and unwrapped.value.problem["expected"] == "release"


def test_a_worker_launched_with_another_configuration_gets_no_key(env: Env) -> None:
    wrapped = env.data_key()
    with pytest.raises(KbsError) as refused:
        env.worker(env.enclave(host_data="ee" * 32)).unwrap("data-1", wrapped, batch_id="batch-1",
                                                             model_digest="sha256:m")
    problem = refused.value.problem
    assert problem["field"] == "host_data" and problem["expected"] == [CONFIG] and problem["actual"] == "ee" * 32


@pytest.mark.parametrize(("kwargs", "field", "enclave"), [
    ({"batch_id": "batch-2", "model_digest": "sha256:m"}, "batch_id", {}),
    ({"batch_id": "batch-1", "model_digest": "sha256:other"}, "model_digest", {}),
    ({"batch_id": "batch-1", "model_digest": "sha256:m"}, "measurement", {"measurement": OTHER}),
    ({"batch_id": "batch-1", "model_digest": "sha256:m"}, "debug", {"debug": True}),
])
def test_data_key_refusals_name_the_failing_field(env: Env, kwargs: dict[str, str], field: str,
                                                  enclave: dict[str, Any]) -> None:
    wrapped = env.data_key()
    with pytest.raises(KbsError) as refused:
        env.worker(env.enclave(**enclave)).unwrap("data-1", wrapped, **kwargs)
    assert refused.value.status == 403 and refused.value.problem["field"] == field
    last = env.admin.decisions()[-1]
    assert last["decision"] == "deny" and last["operation"] == "unwrap" and field in last["reason"] + field


def test_key_not_in_the_batch_grant_is_refused(env: Env) -> None:
    env.data_key()
    env.admin.create_key("data-2")
    wrapped = env.admin.wrap("data-2", b"x" * 16)
    with pytest.raises(KbsError) as refused:
        env.worker().unwrap("data-2", wrapped, batch_id="batch-1", model_digest="sha256:m")
    assert refused.value.problem["field"] == "key_id"


def test_unknown_key_points_at_the_other_broker(env: Env) -> None:
    with pytest.raises(KbsError) as refused:
        env.worker().unwrap("provider-model", b"x" * 40, batch_id="batch-1", model_digest="sha256:m")
    assert refused.value.status == 404 and "owner" in refused.value.problem["detail"]
    assert env.admin.decisions()[-1]["reason"].startswith("key 'provider-model' is not held")


def test_model_key_follows_its_measurement_list_and_needs_an_owner_grant(env: Env) -> None:
    env.admin.create_key("model-1", kind="model", measurements=[GOOD])
    wrapped = env.admin.wrap("model-1", b"M" * 32)
    with pytest.raises(KbsError) as ungranted:
        env.worker().unwrap("model-1", wrapped, batch_id="any", model_digest="sha256:m")
    assert ungranted.value.problem["field"] == "grant" and ungranted.value.problem["actual"] == "no grant sent"
    with pytest.raises(KbsError) as other:
        env.worker(env.enclave(OTHER)).unwrap("model-1", wrapped, batch_id="any", model_digest="sha256:m")
    assert other.value.problem["field"] == "measurement" and other.value.problem["expected"] == [GOOD]


def test_custom_cel_policy_replaces_the_default(env: Env) -> None:
    wrapped = env.data_key()
    env.admin.set_policy("data-1", f'request.batch_id.startsWith("batch-") && claims.tcb.snp >= {SIM_TCB.snp + 1}')
    with pytest.raises(KbsError) as refused:
        env.worker().unwrap("data-1", wrapped, batch_id="batch-1", model_digest="sha256:m")
    assert refused.value.problem["field"] == "policy"
    env.admin.set_policy("data-1", f'request.batch_id.startsWith("batch-") && claims.tcb.snp >= {SIM_TCB.snp}')
    assert env.worker().unwrap("data-1", wrapped, batch_id="batch-9", model_digest="x") == b"D" * 16


def test_resource_is_released_to_allowed_measurements_only(env: Env) -> None:
    env.admin.put_resource("cscore", "config", "v1", b"resource-value", measurements=[GOOD])
    assert env.worker().resource("cscore", "config", "v1") == b"resource-value"
    with pytest.raises(KbsError):
        env.worker(env.enclave(OTHER)).resource("cscore", "config", "v1")


def test_reused_nonce_is_refused(env: Env) -> None:
    client = TestClient(env.app)
    worker = env.worker()
    challenge = client.post("/kbs/v0/auth", json={"tee": "sev-snp"}).json()
    runtime = {"nonce": challenge["nonce"], "tee_pubkey": worker.tee_public_jwk,
               "receipt_pubkey": worker.receipt_public_jwk}
    import hashlib
    digest = hashlib.sha512(canonical_json(runtime)).digest()
    body = {"session": challenge["session"], "runtime_data": runtime,
            "evidence": env.enclave().get_evidence(digest).to_json()}
    assert client.post("/kbs/v0/attest", json=body).status_code == 200
    again = client.post("/kbs/v0/attest", json=body)
    assert again.status_code == 401 and "already used" in again.json()["detail"]


def test_evidence_not_bound_to_runtime_data_is_refused(env: Env) -> None:
    class Unbound(SimEnclave):
        def get_evidence(self, report_data: bytes) -> Evidence:
            return super().get_evidence(bytes(64))

    with pytest.raises(KbsError) as refused:
        env.worker(Unbound(env.sim_dir)).attest()
    assert refused.value.status == 403 and refused.value.problem["field"] == "report_data"


def test_token_used_with_another_key_is_refused(env: Env) -> None:
    wrapped = env.data_key()
    victim, thief = env.worker(), env.worker()
    victim.attest()
    thief._result = victim._result  # a token copied off the wire, used with the thief's own key
    with pytest.raises(KbsError) as refused:
        thief.unwrap("data-1", wrapped, batch_id="batch-1", model_digest="sha256:m")
    assert refused.value.status == 401 and refused.value.type.endswith("pop-key-mismatch")


def test_replayed_request_is_refused(env: Env) -> None:
    wrapped = env.data_key()
    worker = env.worker()
    token = worker.attest().token
    captured: dict[str, Any] = {}
    original = worker._pop

    def keep(*args: Any) -> str:
        captured["pop"] = original(*args)
        return captured["pop"]

    worker._pop = keep  # type: ignore[method-assign]
    worker.unwrap("data-1", wrapped, batch_id="batch-1", model_digest="sha256:m")
    worker._pop = lambda *args: captured["pop"]  # type: ignore[method-assign]
    with pytest.raises(KbsError) as refused:
        worker.unwrap("data-1", wrapped, batch_id="batch-1", model_digest="sha256:m")
    assert refused.value.type.endswith("pop-replayed") and token


def test_expired_token_is_refused_and_the_client_reattests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The broker's clock, moved by hand: exp is in whole seconds, so on the real clock a 1 s token issued late in
    # a second could lapse before its use, the re-attested one too, and the unwrap failed.
    now = {"t": float(int(time.time()))}
    monkeypatch.setattr(tokens, "time", SimpleNamespace(time=lambda: now["t"]))
    env = Env(tmp_path, token_ttl_s=1)
    wrapped = env.data_key()
    worker = env.worker()
    worker.attest()
    stale = worker._result
    now["t"] += 1
    client = TestClient(env.app)
    r = client.post("/kbs/v0/unwrap", headers={"Authorization": f"Bearer {stale.token}"},  # type: ignore[union-attr]
                    json={"key_id": "data-1", "wrapped": "AAAA"})
    assert r.status_code == 401 and r.json()["type"].endswith("token-expired")
    assert worker.unwrap("data-1", wrapped, batch_id="batch-1", model_digest="sha256:m") == b"D" * 16
    assert worker._result is not stale
    assert [e["operation"] for e in env.admin.decisions()].count("attest") == 2  # one re-attestation


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    env = Env(tmp_path, rate_limit_rps=0.5, rate_limit_burst=3)
    client = TestClient(env.app)
    codes = [client.get("/kbs/v0/broker-key").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    r = client.get("/kbs/v0/broker-key")
    assert r.json()["type"].endswith("rate-limited") and int(r.headers["retry-after"]) >= 1
    assert client.get("/healthz").status_code == 200  # readiness is never throttled


def test_session_table_nonces_are_single_use_expire_and_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    # A controlled clock: on the real one a 0.2 s stall between new() and consume() expired `a` too.
    now = {"t": 1000.0}
    monkeypatch.setattr(sessions.time, "monotonic", lambda: now["t"])
    table = SessionTable(ttl_s=0.2, max_sessions=2)
    a = table.new("sev-snp")
    with pytest.raises(NonceError, match="not this session"):
        table.consume(a.session_id, "wrong")
    table.consume(a.session_id, a.nonce)
    with pytest.raises(NonceError, match="already used"):
        table.consume(a.session_id, a.nonce)
    b = table.new("sev-snp")
    now["t"] += 0.25
    with pytest.raises(NonceError, match="expired"):
        table.consume(b.session_id, b.nonce)
    first, _, _ = table.new("sev-snp"), table.new("sev-snp"), table.new("sev-snp")
    with pytest.raises(NonceError, match="unknown"):
        table.consume(first.session_id, first.nonce)


def test_policy_engine_refuses_non_boolean_and_failing_expressions() -> None:
    engine = PolicyEngine()
    ctx = {"claims": {"debug": False, "measurement": GOOD, "root": "amd"}, "request": {"operation": "unwrap"},
           "grant": {}, "key": {"measurements": []}}
    assert not engine.evaluate('"yes"', "data", ctx).allowed
    assert not engine.evaluate("grant.model_digest == 'x'", "data", ctx).allowed
    assert engine.evaluate("!claims.debug", "data", ctx).allowed
    verdict = engine.evaluate(None, "data", {**ctx, "request": {**ctx["request"], "batch_id": "b"}})
    assert not verdict.allowed and verdict.field == "batch_id"
