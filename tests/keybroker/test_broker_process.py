"""The broker as a real process over HTTP: admin API, persistence, limits, logs without key bytes."""

from __future__ import annotations

import base64
import secrets
import sqlite3
import warnings
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keybroker import BrokerConfig, create_app
from keybroker.store import StoreError
from sdk.broker_admin import BrokerAdmin, BrokerAdminError
from tests.keybroker.conftest import MEASUREMENT, BrokerProcess
from wire.decision_log import verify_chain

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


def test_healthz_and_openapi_list_the_protocol(broker: BrokerProcess) -> None:
    assert httpx.get(f"{broker.url}/healthz").json() == {"status": "ok", "name": "owner", "database": "sqlite"}
    paths = httpx.get(f"{broker.url}/openapi.json").json()["paths"]
    for path in ("/kbs/v0/auth", "/kbs/v0/attest", "/kbs/v0/unwrap", "/kbs/v0/wrap", "/kbs/v0/broker-key",
                 "/kbs/v0/resource/{repository}/{type_}/{tag}", "/admin/v0/keys", "/admin/v0/grants",
                 "/admin/v0/decisions", "/healthz", "/readyz", "/metrics"):
        assert path in paths


@pytest.mark.parametrize("header", [None, "Bearer wrong-token-wrong-token", "Basic abc"])
def test_admin_calls_need_the_admin_token(broker: BrokerProcess, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    r = httpx.post(f"{broker.url}/admin/v0/keys", json={"key_id": "nope"}, headers=headers)
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"].endswith("admin-unauthorized")
    assert r.json()["field"] == "Authorization"
    assert "nope" not in [k["key_id"] for k in broker.admin().decisions()]


def test_create_key_is_idempotent_and_keeps_the_material(admin: BrokerAdmin) -> None:
    first = admin.create_key("idem-1")
    wrapped = admin.wrap("idem-1", b"k" * 32)
    second = admin.create_key("idem-1")
    assert first["new"] is True and second["new"] is False
    assert admin.unwrap("idem-1", wrapped) == b"k" * 32


def test_wrap_unwrap_roundtrip_binds_the_key_id(admin: BrokerAdmin) -> None:
    admin.create_key("bind-a")
    admin.create_key("bind-b")
    dek = secrets.token_bytes(16)
    wrapped = admin.wrap("bind-a", dek)
    assert dek not in wrapped and admin.unwrap("bind-a", wrapped) == dek
    with pytest.raises(BrokerAdminError) as other:
        admin.unwrap("bind-b", wrapped)
    assert other.value.status == 400 and "bind-b" in other.value.detail
    tampered = wrapped[:-1] + bytes([wrapped[-1] ^ 1])
    with pytest.raises(BrokerAdminError):
        admin.unwrap("bind-a", tampered)


def test_unknown_key_and_bad_policy_are_refused_with_a_reason(admin: BrokerAdmin) -> None:
    with pytest.raises(BrokerAdminError) as unknown:
        admin.grant("batch-x", "sha256:m", [MEASUREMENT.hex()], ["no-such-key"], config_digests=["cf" * 32], rows=10)
    assert unknown.value.status == 404 and unknown.value.problem["actual"] == "no-such-key"
    admin.create_key("pol-1")
    with pytest.raises(BrokerAdminError) as bad:
        admin.set_policy("pol-1", "claims.debug ==")
    assert bad.value.status == 400 and bad.value.problem["field"] == "policy"
    with pytest.raises(BrokerAdminError) as bad_measurement:
        admin.grant("batch-x", "sha256:m", ["not-hex"], ["pol-1"], config_digests=["cf" * 32], rows=10)
    assert bad_measurement.value.status == 422


def test_policy_changes_and_grants_are_logged_in_a_verified_chain(admin: BrokerAdmin) -> None:
    admin.create_key("log-1")
    admin.set_policy("log-1", "!claims.debug")
    admin.grant("batch-log", "sha256:abc", [MEASUREMENT.hex()], ["log-1"], config_digests=["cf" * 32], rows=10)
    entries = admin.decisions()  # verifies the chain and the signed checkpoint
    ops = [(e["operation"], e["key_id"] or e["batch_id"]) for e in entries]
    assert ("admin.set_policy", "log-1") in ops and ("admin.grant", "batch-log") in ops
    assert any("!claims.debug" in e["reason"] for e in entries if e["operation"] == "admin.set_policy")
    forged = [dict(e) for e in entries]
    forged[0]["decision"] = "deny" if forged[0]["decision"] == "allow" else "allow"
    with pytest.raises(ValueError, match="^decision 1: hash expected "):
        verify_chain(forged)


def test_decision_log_table_is_append_only(broker: BrokerProcess, admin: BrokerAdmin) -> None:
    admin.create_key("append-only")
    db = sqlite3.connect(broker.config["db_path"])
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("UPDATE decisions SET decision='allow'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("DELETE FROM decisions")
    finally:
        db.close()


def test_master_keys_are_encrypted_at_rest_under_the_kek(broker: BrokerProcess, admin: BrokerAdmin) -> None:
    admin.create_key("at-rest")
    dek = secrets.token_bytes(32)
    wrapped = admin.wrap("at-rest", dek)
    db = sqlite3.connect(broker.config["db_path"])
    sealed = db.execute("SELECT sealed FROM keys WHERE key_id='at-rest'").fetchone()[0]
    db.close()
    kek = bytes.fromhex(Path(broker.config["kek_path"]).read_text().strip())
    master = AESGCM(kek).decrypt(sealed[:12], sealed[12:], b"key:at-rest")
    # The documented wrapped format: nonce || AES-256-GCM(master, dek, AAD=key_id).
    assert AESGCM(master).decrypt(wrapped[:12], wrapped[12:], b"at-rest") == dek
    raw = Path(broker.config["db_path"]).read_bytes() + Path(broker.config["db_path"] + "-wal").read_bytes()
    assert master not in raw


def test_oversized_body_is_refused(broker: BrokerProcess) -> None:
    r = httpx.post(f"{broker.url}/kbs/v0/auth", content=b"{" + b" " * (2 << 20) + b"}",
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["type"].endswith("body-too-large")


def test_validation_errors_are_problem_documents(broker: BrokerProcess) -> None:
    r = httpx.post(f"{broker.url}/kbs/v0/auth", json={"tee": "sgx"})
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["field"] == "tee" and "tee" in r.json()["detail"]


def test_unwrap_without_token_is_refused(broker: BrokerProcess) -> None:
    r = httpx.post(f"{broker.url}/kbs/v0/unwrap", json={"key_id": "k", "wrapped": "AAAA"})
    assert r.status_code == 401 and r.json()["type"].endswith("token-missing")
    r = httpx.post(f"{broker.url}/kbs/v0/unwrap", json={"key_id": "k", "wrapped": "AAAA"},
                   headers={"Authorization": "Bearer not.a.token"})
    assert r.status_code == 401 and r.json()["type"].endswith("token-invalid")


def test_restart_keeps_keys_policies_grants_and_log(tmp_path: Path) -> None:
    """State written by one broker instance (in-process) is all there in the next one (a real process)."""
    proc = BrokerProcess(tmp_path / "fresh")
    config = BrokerConfig.from_dict(proc.config)
    app = create_app(config)
    for key in ("kek_path", "admin_token_path"):  # created if missing, owner-only
        path = Path(proc.config[key])
        assert path.exists() and path.stat().st_mode & 0o077 == 0
    with TestClient(app) as client:
        admin = BrokerAdmin("http://testserver", proc.admin_token, client=client)
        admin.create_key("persist-data")
        admin.create_key("persist-model", kind="model", measurements=[MEASUREMENT.hex()], min_tcb={"snp": 1})
        admin.set_policy("persist-data", "!claims.debug && request.batch_id == 'b-1'", chip_ids=[])
        admin.grant("b-1", "sha256:model", [MEASUREMENT.hex()], ["persist-data"], config_digests=["cf" * 32], rows=10)
        dek, newer = secrets.token_bytes(16), secrets.token_bytes(16)
        wrapped = admin.wrap("persist-data", dek)
        admin.rotate_key("persist-data")
        wrapped_v2 = admin.wrap("persist-data", newer)
        before = admin.decisions()
        broker_key = client.get("/kbs/v0/broker-key").json()
    app.state.broker.store.close()
    proc.start()
    try:
        admin = proc.admin()
        assert admin.unwrap("persist-data", wrapped) == dek and admin.unwrap("persist-data", wrapped_v2) == newer
        info = admin.get_key("persist-data")
        assert info["policy"] == "!claims.debug && request.batch_id == 'b-1'" and info["version"] == 2
        assert info["chip_ids"] == [] and info["min_tcb"] is None
        assert admin.get_key("persist-model")["measurements"] == [MEASUREMENT.hex()]
        assert admin.get_key("persist-model")["min_tcb"] == {"snp": 1}
        assert httpx.get(f"{proc.url}/admin/v0/grants/b-1", headers={"Authorization": f"Bearer {proc.admin_token}"}
                         ).json()["key_ids"] == ["persist-data"]
        assert httpx.get(f"{proc.url}/kbs/v0/broker-key").json() == broker_key
        after = admin.decisions()  # chain still verifies across the restart
        assert after[: len(before)] == before and len(after) == len(before) + 2
        admin.close()
    finally:
        proc.stop()
    Path(proc.config["kek_path"]).write_text(secrets.token_bytes(32).hex())
    with pytest.raises(StoreError, match="KEK file does not match"):
        create_app(config)


def test_no_key_bytes_in_the_broker_log(broker: BrokerProcess, admin: BrokerAdmin) -> None:
    canary = b"CANARY-" + secrets.token_hex(12).encode()
    admin.create_key("canary-key")
    wrapped = admin.wrap("canary-key", canary)
    assert admin.unwrap("canary-key", wrapped) == canary
    log = broker.log_text()
    assert "admin.unwrap key=canary-key" in log  # the decision is logged, just not its bytes
    for form in (canary.decode(), canary.hex(), base64.b64encode(canary).decode(),
                 base64.urlsafe_b64encode(canary).decode().rstrip("=")):
        assert form not in log
