"""The broker's bearer tokens and admin API in process (the production app, `tests/keybroker/inproc.py`): each
token refusal word for word with its `WWW-Authenticate` header (no token, another scheme, another role's token),
and each admin call's answer, refusal and decision-log entry word for word. `test_broker_process.py` covers the
same API over a real process; these reach the app's code where a mutation test switches it.
"""

from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

from keybroker.app import _bearer, _jsonable, create_app
from keybroker.crypto import wrapped_version
from keybroker.problems import Problem
from sdk.broker_admin import BrokerAdminError
from tests.keybroker.inproc import CONFIG, GOOD, Env, TestClient

ADMIN_DETAIL = ("admin endpoints need 'Authorization: Bearer <admin token>' (the token in admin of broker "
                "'owner')")
METRICS_DETAIL = ("/metrics needs 'Authorization: Bearer <metrics token>' (the token in metrics-token of broker "
                  "'owner')")
RELEASE = {"key_id": "k-1", "batch_id": "b-1", "model_digest": "sha256:m"}


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path, metrics_token_path=str(tmp_path / "metrics-token"))


def _refused(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["type"] == f"urn:cscore:keybroker:{slug}", problem
    return problem


def _admin_error(call: Any, *args: Any, **kwargs: Any) -> BrokerAdminError:
    with pytest.raises(BrokerAdminError) as refused:
        call(*args, **kwargs)
    return refused.value


def _last(env: Env) -> dict[str, Any]:
    return env.admin.decisions()[-1]


def _logged(entry: dict[str, Any]) -> dict[str, Any]:
    """A decision-log entry without its sequence number, time and hashes."""
    return {k: entry[k] for k in ("operation", "decision", "key_id", "batch_id", "model_digest", "reason",
                                  "claims_digest", "measurement")}


def _allowed(operation: str, reason: str, key_id: str | None = None, batch_id: str | None = None,
             model_digest: str | None = None) -> dict[str, Any]:
    """An admin call's entry: allowed, with no attestation's claims."""
    return {"operation": operation, "decision": "allow", "key_id": key_id, "batch_id": batch_id,
            "model_digest": model_digest, "reason": reason, "claims_digest": None, "measurement": None}


# -- bearer tokens -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("header", "token"), [
    (None, None), ("", None), ("Bearer tok", "tok"), ("bearer tok", "tok"), ("BEARER tok", "tok"),
    ("Bearer  tok ", "tok"), ("Bearer a b", "a b"), ("Bearer", None), ("Bearer ", None), ("Bearer   ", None),
    ("Basic tok", None), ("Bearertok", None), ("tok", None), (" Bearer tok", None)])
def test_bearer_reads_the_token_of_the_bearer_scheme_only(header: str | None, token: str | None) -> None:
    assert _bearer(header) == token


@pytest.mark.parametrize("header", [None, "Basic {admin}", "{admin}", "Bearer {admin}x", "Bearer x{admin}",
                                    "Bearer {metrics}", "Bearer ", "Token {admin}"])
def test_admin_calls_without_the_admin_token_are_refused_word_for_word(env: Env, header: str | None) -> None:
    admin_token, metrics_token = env.config.load_admin_token(), env.config.load_metrics_token()
    headers = {"Authorization": header.format(admin=admin_token, metrics=metrics_token)} if header else {}
    before = len(env.admin.decisions())
    answer = TestClient(env.app).post("/admin/v0/keys", json={"key_id": "nope"}, headers=headers)
    problem = _refused(answer, 401, "admin-unauthorized")
    assert problem == {"type": "urn:cscore:keybroker:admin-unauthorized", "title": "admin unauthorized",
                       "status": 401, "detail": ADMIN_DETAIL, "instance": "/admin/v0/keys",
                       "field": "Authorization"}
    assert answer.headers["www-authenticate"] == 'Bearer realm="admin"'
    assert len(env.admin.decisions()) == before  # nothing created, nothing logged
    assert _admin_error(env.admin.get_key, "nope").status == 404


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_admin_token_is_accepted_under_any_case_of_the_bearer_scheme(env: Env, scheme: str) -> None:
    token = env.config.load_admin_token()
    answer = TestClient(env.app).post("/admin/v0/keys", json={"key_id": "k-1"},
                                      headers={"Authorization": f"{scheme} {token}"})
    assert answer.status_code == 201 and answer.json()["key_id"] == "k-1"


@pytest.mark.parametrize("path", ["/admin/v0/keys", "/admin/v0/keys/k-1", "/admin/v0/grants/b-1", "/admin/v0/owners",
                                  "/admin/v0/decisions"])
def test_every_admin_read_needs_the_admin_token(env: Env, path: str) -> None:
    metrics_token = env.config.load_metrics_token()
    answer = TestClient(env.app).get(path, headers={"Authorization": f"Bearer {metrics_token}"})
    assert _refused(answer, 401, "admin-unauthorized")["detail"] == ADMIN_DETAIL


@pytest.mark.parametrize("header", [None, "Bearer {admin}", "Basic {metrics}", "Bearer {metrics}x"])
def test_metrics_without_the_metrics_token_are_refused_word_for_word(env: Env, header: str | None) -> None:
    admin_token, metrics_token = env.config.load_admin_token(), env.config.load_metrics_token()
    headers = {"Authorization": header.format(admin=admin_token, metrics=metrics_token)} if header else {}
    answer = TestClient(env.app).get("/metrics", headers=headers)
    assert _refused(answer, 401, "metrics-unauthorized") == {
        "type": "urn:cscore:keybroker:metrics-unauthorized", "title": "metrics unauthorized", "status": 401,
        "detail": METRICS_DETAIL, "instance": "/metrics", "field": "Authorization"}
    assert answer.headers["www-authenticate"] == 'Bearer realm="metrics"'
    scraped = TestClient(env.app).get("/metrics", headers={"Authorization": f"bearer {metrics_token}"})
    assert scraped.status_code == 200 and "cscore_broker_decisions" in scraped.text


def test_a_release_without_an_attestation_token_is_refused_with_the_kbs_realm(env: Env) -> None:
    worker = env.worker()
    token = worker.attest().token
    for header in (None, f"Basic {token}", token, f"Bearer {env.config.load_admin_token()}"):
        answer = TestClient(env.app).post("/kbs/v0/release", json=RELEASE,
                                          headers={"Authorization": header} if header else {})
        assert answer.status_code == 401, answer.text
        assert answer.headers["www-authenticate"] == 'Bearer realm="kbs"'
        problem = answer.json()
        if header is not None and header.startswith("Bearer "):  # the admin token is no attestation token
            assert problem["type"] == "urn:cscore:keybroker:token-invalid"
            assert problem["field"] == "Authorization"
            assert problem["detail"].startswith("attestation token is not one this broker signed: ")
            continue
        assert problem == {"type": "urn:cscore:keybroker:token-missing", "title": "token missing", "status": 401,
                           "detail": "no attestation token: send 'Authorization: Bearer <token>' obtained from "
                                     "/kbs/v0/attest", "instance": "/kbs/v0/release", "field": "Authorization",
                           "expected": "Bearer <token>"}


def test_a_token_refusal_after_the_token_names_the_pop_header_with_the_kbs_realm(env: Env) -> None:
    token = env.worker().attest().token
    answer = TestClient(env.app).post("/kbs/v0/release", json=RELEASE,
                                      headers={"Authorization": f"Bearer {token}"})
    assert _refused(answer, 401, "pop-missing")["field"] == "KBS-PoP"
    assert answer.headers["www-authenticate"] == 'Bearer realm="kbs"'


# -- keys ----------------------------------------------------------------------------------------------

def test_create_key_is_logged_once_and_answers_201_then_200(env: Env) -> None:
    http = TestClient(env.app, headers={"Authorization": f"Bearer {env.config.load_admin_token()}"})
    first = http.post("/admin/v0/keys", json={"key_id": "k-1", "measurements": [GOOD]})
    assert first.status_code == 201 and first.json()["new"] is True
    assert (first.json()["key_id"], first.json()["kind"], first.json()["version"]) == ("k-1", "data", 1)
    last = _last(env)
    assert _logged(last) == _allowed("admin.create_key", f"created data key; policy: default; measurements: ['{GOOD}']",
                                     key_id="k-1")
    again = http.post("/admin/v0/keys", json={"key_id": "k-1", "kind": "model"})
    assert again.status_code == 200 and again.json()["new"] is False and again.json()["kind"] == "data"
    assert _last(env)["seq"] == last["seq"]  # not logged again
    assert [k["key_id"] for k in http.get("/admin/v0/keys").json()] == ["k-1"]
    assert http.get("/admin/v0/keys/k-1").json() == {**first.json(), "new": False}


def test_a_key_with_a_quota_and_a_floor_logs_both(env: Env) -> None:
    created = env.admin.create_key("m-1", "true", kind="model", quota={"rows": 50, "period_s": 60},
                                   chip_ids=["aa" * 64])
    assert (created["policy"], created["quota"], created["chip_ids"], created["min_tcb"]) == (
        "true", {"rows": 50, "period_s": 60}, ["aa" * 64], None)
    assert env.admin.get_key("m-1") == {**created, "new": False}
    created, floor = env.admin.decisions()[-2:]
    assert _logged(created) == _allowed(
        "admin.create_key", "created model key; policy: true; measurements: []; quota: {'rows': 50, 'period_s': 60}",
        key_id="m-1")
    assert _logged(floor) == _allowed("admin.set_platform_floor",
                                      f"chip_ids: ['{'aa' * 64}']; min_tcb: broker default", key_id="m-1")
    env.admin.create_key("m-2", kind="model", quota={"rows": 50, "period_s": 60})
    assert _last(env)["operation"] == "admin.create_key"  # a quota alone is no floor


def test_a_policy_that_does_not_compile_is_refused_before_anything_is_stored(env: Env) -> None:
    refused = _admin_error(env.admin.create_key, "k-1", "claims.debug ==")
    assert (refused.status, refused.problem["type"], refused.problem["detail"], refused.problem["field"],
            refused.problem["actual"]) == (400, "urn:cscore:keybroker:policy-invalid",
                                           "policy is not valid CEL: claims.debug ==\n             ^\n", "policy",
                                           "claims.debug ==")
    assert _admin_error(env.admin.get_key, "k-1").status == 404
    env.admin.create_key("k-1")
    assert _admin_error(env.admin.set_policy, "k-1", "1 +").problem["actual"] == "1 +"
    assert env.admin.get_key("k-1")["policy"] is None


def test_an_unknown_key_is_refused_word_for_word_by_every_admin_call(env: Env) -> None:
    detail = "no key 'absent' at broker 'owner'; create it first"
    calls: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = [
        (env.admin.get_key, ("absent",), {}), (env.admin.set_policy, ("absent", None), {}),
        (env.admin.rotate_key, ("absent",), {}), (env.admin.wrap, ("absent", b"k" * 16), {}),
        (env.admin.unwrap, ("absent", b"w" * 44), {}),
        (env.admin.grant, ("b-1", "sha256:m", [GOOD], ["absent"]), {"config_digests": [CONFIG], "rows": 1})]
    for call, args, kwargs in calls:
        refused = _admin_error(call, *args, **kwargs)
        assert (refused.status, refused.problem["type"], refused.problem["detail"], refused.problem["field"],
                refused.problem["actual"]) == (404, "urn:cscore:keybroker:unknown-key", detail, "key_id", "absent")
    assert env.admin.decisions() == []


def test_set_policy_logs_the_policy_and_the_floor_only_when_it_changes(env: Env) -> None:
    env.admin.create_key("k-1")
    env.admin.set_policy("k-1", None, chip_ids=None)  # back to the broker's floor, which it has already
    assert _logged(_last(env)) == _allowed("admin.set_policy", "policy: default; measurements: unchanged",
                                           key_id="k-1")
    assert env.admin.set_policy("k-1", "true")["policy"] == "true"
    assert env.admin.get_key("k-1")["policy"] == "true"
    last = _last(env)
    assert _logged(last) == _allowed("admin.set_policy", "policy: true; measurements: unchanged", key_id="k-1")
    answer = env.admin.set_policy("k-1", None, measurements=[GOOD], min_tcb={"snp": 3})
    assert answer["policy"] is None and answer["measurements"] == [GOOD] and answer["min_tcb"] == {"snp": 3}
    policy, floor = env.admin.decisions()[-2:]
    assert _logged(policy) == _allowed("admin.set_policy", f"policy: default; measurements: ['{GOOD}']", key_id="k-1")
    assert _logged(floor) == _allowed("admin.set_platform_floor", "chip_ids: broker default; min_tcb: {'snp': 3}",
                                      key_id="k-1")
    env.admin.set_policy("k-1", None, min_tcb={"snp": 3})  # the same floor: no floor entry
    assert _last(env)["operation"] == "admin.set_policy"
    env.admin.set_policy("k-1", None, quota={"rows": 5, "period_s": 60})  # a quota is no floor
    assert _last(env)["operation"] == "admin.set_policy" and env.admin.get_key("k-1")["min_tcb"] == {"snp": 3}
    env.admin.set_policy("k-1", None, min_tcb=None)  # back to the broker's
    assert (_last(env)["operation"], _last(env)["reason"]) == ("admin.set_platform_floor",
                                                               "chip_ids: broker default; min_tcb: broker default")
    assert env.admin.get_key("k-1")["min_tcb"] is None


def test_rotation_is_logged_and_a_resource_is_not_rotated(env: Env) -> None:
    env.admin.create_key("k-1")
    assert env.admin.rotate_key("k-1")["version"] == 2
    assert _logged(_last(env)) == _allowed(
        "admin.rotate_key", "master key rotated to version 2; versions 1..1 kept for unwrap", key_id="k-1")
    assert wrapped_version(env.admin.wrap("k-1", b"k" * 16)) == 2
    assert _logged(_last(env)) == _allowed("admin.wrap", "owner wrap (version 2)", key_id="k-1")
    env.admin.put_resource("repo", "type", "tag", b"secret")
    assert _admin_error(env.admin.rotate_key, "res/repo/type/tag").status == 404  # no route takes its id
    with pytest.raises(Problem) as refused:  # nor does the broker, should a route ever pass one on
        env.app.state.broker.rotate_key("res/repo/type/tag")
    problem = refused.value
    assert (problem.status, problem.slug, problem.detail, problem.field, problem.expected, problem.actual) == (
        409, "not-rotatable", "'res/repo/type/tag' is a resource; replace its value with PUT instead", "key_id",
        "a data or model key", "resource")
    assert env.admin.decisions()[-1]["operation"] == "admin.put_resource"


# -- grants, owners, resources -------------------------------------------------------------------------

def test_a_grant_is_recorded_logged_and_read_back_under_a_batch_id_with_slashes(env: Env) -> None:
    env.admin.create_key("k-1")
    recorded = env.admin.grant("t/b-1", "sha256:m", [GOOD], ["k-1"], config_digests=[CONFIG], rows=7)
    assert recorded == env.admin.get_grant("t/b-1")
    assert recorded == {"batch_id": "t/b-1", "model_digest": "sha256:m", "measurements": [GOOD], "key_ids": ["k-1"],
                        "created": recorded["created"], "config_digests": [CONFIG], "rows": 7}
    assert _logged(_last(env)) == _allowed(
        "admin.grant", f"grant keys ['k-1'] to measurements ['{GOOD}']; worker configurations ['{CONFIG}']; 7 rows",
        batch_id="t/b-1", model_digest="sha256:m")
    refused = _admin_error(env.admin.get_grant, "t/b-2")
    assert (refused.status, refused.problem["type"], refused.problem["detail"], refused.problem["field"],
            refused.problem["actual"]) == (404, "urn:cscore:keybroker:unknown-grant", "no grant for batch 't/b-2'",
                                           "batch_id", "t/b-2")


def test_an_owner_is_registered_with_its_public_grant_key_only(env: Env) -> None:
    key = ECKey.generate_key("P-256", private=True)
    public = key.as_dict(private=False)
    answer = env.admin.register_owner("owner-a", key.as_dict(private=True))  # the private part is dropped
    assert answer == {"name": "owner-a", "grant_key": public}
    assert env.admin._call("GET", "/admin/v0/owners") == {"owner-a": public}
    assert _logged(_last(env)) == _allowed("admin.register_owner",
                                           f"owner broker owner-a registered, grant key {key.thumbprint()}")
    refused = _admin_error(env.admin.register_owner, "owner-b", {"kty": "EC", "crv": "P-256", "x": "AA"})
    assert (refused.status, refused.problem["type"], refused.problem["field"]) == (
        422, "urn:cscore:keybroker:grant-key-invalid", "grant_key")
    assert refused.problem["detail"].startswith("grant_key: ")
    assert env.admin._call("GET", "/admin/v0/owners") == {"owner-a": public}
    # a private member is dropped before the key is read: one that is not this key's does not matter
    assert env.admin.register_owner("owner-c", {**public, "d": "AA"}) == {"name": "owner-c", "grant_key": public}
    assert env.admin._call("GET", "/admin/v0/owners") == {"owner-a": public, "owner-c": public}


def test_a_resource_is_stored_under_its_own_id_and_logged(env: Env) -> None:
    answer = env.admin.put_resource("repo", "type", "tag", b"secret", measurements=[GOOD], policy="true")
    assert (answer["key_id"], answer["kind"], answer["policy"]) == ("res/repo/type/tag", "resource", "true")
    assert _logged(_last(env)) == _allowed("admin.put_resource", f"policy: true; measurements: ['{GOOD}']",
                                           key_id="res/repo/type/tag")
    env.admin.put_resource("repo", "type", "tag2", b"secret")
    assert _logged(_last(env)) == _allowed("admin.put_resource", "policy: default; measurements: []",
                                           key_id="res/repo/type/tag2")
    refused = _admin_error(env.admin.put_resource, "repo", "type", "tag3", b"x", policy="1 +")
    assert (refused.status, refused.problem["field"]) == (400, "policy")


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/admin/v0/wrap", {"key_id": "k-1", "key_jwe": "not.a.jwe.at.all"}, "key_jwe"),
    ("/admin/v0/resources/r/t/g", {"value_jwe": "not.a.jwe.at.all", "measurements": []}, "value_jwe")])
def test_a_value_not_encrypted_to_the_broker_key_is_refused_naming_its_field(env: Env, path: str,
                                                                             body: dict[str, Any], field: str) -> None:
    env.admin.create_key("k-1")
    http = TestClient(env.app, headers={"Authorization": f"Bearer {env.config.load_admin_token()}"})
    answer = http.request("POST" if path.endswith("wrap") else "PUT", path, json=body)
    problem = _refused(answer, 400, "jwe-invalid")
    assert problem["field"] == field
    assert problem["detail"].startswith(f"{field} does not decrypt with the broker key (encrypt to GET "
                                        "/kbs/v0/broker-key): ")


def test_the_owners_unwrap_names_its_batch_and_refuses_a_bad_recipient_key(env: Env) -> None:
    env.admin.create_key("k-1")
    wrapped = env.admin.wrap("k-1", b"k" * 16)
    assert env.admin.unwrap("k-1", wrapped, batch_id="b-1") == b"k" * 16
    last = _last(env)
    assert _logged(last) == _allowed("admin.unwrap", "owner unwrap to read batch b-1's results", key_id="k-1",
                                     batch_id="b-1")
    assert env.admin.unwrap("k-1", wrapped) == b"k" * 16
    assert _logged(_last(env)) == _allowed("admin.unwrap", "owner unwrap", key_id="k-1")
    http = TestClient(env.app, headers={"Authorization": f"Bearer {env.config.load_admin_token()}"})
    answer = http.post("/admin/v0/unwrap", json={"key_id": "k-1", "wrapped": base64.b64encode(wrapped).decode(),
                                                 "recipient_jwk": {"kty": "oct", "k": "AA"}})
    problem = _refused(answer, 422, "recipient-jwk-invalid")
    assert problem["field"] == "recipient_jwk" and problem["detail"].startswith("recipient_jwk: ")
    assert _last(env)["seq"] == last["seq"] + 1  # the refusal is not logged as an unwrap


# -- the log, the published keys -----------------------------------------------------------------------

def test_the_decision_log_is_served_from_a_sequence_number_with_a_signed_head(env: Env) -> None:
    env.admin.create_key("k-1")
    env.admin.create_key("k-2")
    http = TestClient(env.app, headers={"Authorization": f"Bearer {env.config.load_admin_token()}"})
    whole, tail = http.get("/admin/v0/decisions").json(), http.get("/admin/v0/decisions?after=1").json()
    assert [e["seq"] for e in whole["entries"]] == [1, 2] and [e["seq"] for e in tail["entries"]] == [2]
    public = ECKey.import_key(http.get("/kbs/v0/token-key").json())
    for answer in (whole, tail, http.get("/admin/v0/decisions?after=2").json()):
        signed = jwt.decode(answer["checkpoint"], public, algorithms=["ES256"])
        assert signed.header["typ"] == "kbs-log-checkpoint"
        assert signed.claims == answer["head"]
        assert (answer["head"]["seq"], answer["head"]["hash"], answer["head"]["broker"]) == (
            2, whole["entries"][-1]["hash"], "owner")
        assert isinstance(answer["head"]["time"], int)


def test_the_published_keys_name_their_use(env: Env) -> None:
    http = TestClient(env.app)
    broker_key, grant_key = http.get("/kbs/v0/broker-key").json(), http.get("/kbs/v0/grant-key").json()
    assert {k: broker_key[k] for k in ("alg", "use", "crv")} == {"alg": "ECDH-ES+A256KW", "use": "enc",
                                                                  "crv": "P-256"}
    assert {k: grant_key[k] for k in ("alg", "use", "crv")} == {"alg": "ES256", "use": "sig", "crv": "P-256"}
    for published in (broker_key, grant_key):
        assert "d" not in published and published["kid"] == ECKey.import_key(published).thumbprint()
    assert broker_key["kid"] != grant_key["kid"]
    challenge = http.post("/kbs/v0/auth", json={"tee": "sev-snp"}).json()
    assert set(challenge) == {"nonce", "session"} and challenge["nonce"] != challenge["session"]


def test_health_and_readiness_answer_in_process(env: Env) -> None:
    http = TestClient(env.app)
    assert http.get("/healthz").json() == {"status": "ok", "name": "owner", "database": "sqlite"}
    assert http.get("/readyz").json() == {"status": "ready", "name": "owner", "database": "sqlite",
                                          "verifier": "loaded"}


def test_the_api_documents_each_route_under_its_tag(env: Env) -> None:
    spec = TestClient(env.app).get("/openapi.json").json()
    assert (spec["info"]["title"], spec["info"]["version"]) == ("cscore key broker (owner)", "0.1.0")
    assert spec["info"]["description"] == "KBS-shaped attestation-gated key release for one key owner."
    tags = {(method.upper(), path): op["tags"] for path, item in spec["paths"].items() for method, op in item.items()}
    assert tags == {
        ("GET", "/healthz"): ["ops"], ("GET", "/readyz"): ["ops"], ("GET", "/metrics"): ["ops"],
        ("POST", "/kbs/v0/auth"): ["kbs"], ("POST", "/kbs/v0/attest"): ["kbs"], ("GET", "/kbs/v0/broker-key"): ["kbs"],
        ("GET", "/kbs/v0/grant-key"): ["kbs"], ("POST", "/kbs/v0/model-grant"): ["kbs"],
        ("POST", "/kbs/v0/release"): ["kbs"], ("GET", "/kbs/v0/token-key"): ["kbs"],
        ("POST", "/kbs/v0/unwrap"): ["kbs"], ("POST", "/kbs/v0/wrap"): ["kbs"],
        ("GET", "/kbs/v0/resource/{repository}/{type_}/{tag}"): ["kbs"],
        ("POST", "/admin/v0/keys"): ["admin"], ("GET", "/admin/v0/keys"): ["admin"],
        ("GET", "/admin/v0/keys/{key_id}"): ["admin"], ("PUT", "/admin/v0/keys/{key_id}/policy"): ["admin"],
        ("POST", "/admin/v0/keys/{key_id}/rotate"): ["admin"], ("POST", "/admin/v0/grants"): ["admin"],
        ("GET", "/admin/v0/grants/{batch_id}"): ["admin"], ("POST", "/admin/v0/owners"): ["admin"],
        ("GET", "/admin/v0/owners"): ["admin"], ("PUT", "/admin/v0/resources/{repository}/{type_}/{tag}"): ["admin"],
        ("POST", "/admin/v0/wrap"): ["admin"], ("POST", "/admin/v0/unwrap"): ["admin"],
        ("GET", "/admin/v0/decisions"): ["admin"]}


def test_a_broker_whose_verifier_cannot_load_is_alive_but_not_ready(tmp_path: Path) -> None:
    roots = tmp_path / "roots"
    roots.mkdir()
    (roots / "ark.pem").write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    env = Env(tmp_path, trusted_roots_dir=str(roots))
    http = TestClient(env.app)
    assert http.get("/healthz").json() == {"status": "ok", "name": "owner", "database": "sqlite"}
    with pytest.raises(Problem) as unavailable:
        env.app.state.broker.verifier()
    detail = unavailable.value.detail
    assert (unavailable.value.status, unavailable.value.slug) == (503, "verifier-unavailable")
    assert detail.startswith(f"cannot verify evidence: trusted_roots_dir: {roots / 'ark.pem'}: ")
    assert _refused(http.get("/readyz"), 503, "not-ready") == {
        "type": "urn:cscore:keybroker:not-ready", "title": "not ready", "status": 503, "detail": detail,
        "instance": "/readyz", "field": "verifier"}
    challenge = http.post("/kbs/v0/auth", json={"tee": "sev-snp"}).json()
    worker = env.worker()
    runtime = {"nonce": challenge["nonce"], "tee_pubkey": worker.tee_public_jwk,
               "receipt_pubkey": worker.receipt_public_jwk}
    attested = http.post("/kbs/v0/attest", json={"session": challenge["session"], "runtime_data": runtime,
                                                 "evidence": {"tee": "sev-snp", "report": ""}})
    assert _refused(attested, 503, "verifier-unavailable")["detail"] == detail


def test_a_key_store_that_does_not_answer_fails_both_probes(env: Env, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    from keybroker.store import StoreError

    def gone() -> None:
        raise StoreError("database is gone")

    monkeypatch.setattr(env.app.state.broker.store, "ping", gone)
    http = TestClient(env.app)
    for path in ("/healthz", "/readyz"):
        assert _refused(http.get(path), 503, "store-unavailable") == {
            "type": "urn:cscore:keybroker:store-unavailable", "title": "store unavailable", "status": 503,
            "detail": "database is gone", "instance": path, "field": "database"}
    said = [r for r in caplog.records if r.name == "keybroker"]
    assert [(r.levelname, r.getMessage(), getattr(r, "check", None)) for r in said] == [
        ("ERROR", "health check failed: database is gone", "database")] * 2


def test_each_decision_is_said_in_the_log_with_its_fields_and_counted_under_its_clause(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    env = Env(tmp_path)  # no metrics token: Env.counted scrapes without one
    caplog.set_level(logging.INFO, logger="keybroker")
    env.admin.create_key("k-1")
    worker = env.worker()
    worker.attest(batch_id="b-1")
    said = [r for r in caplog.records if r.name == "keybroker" and r.getMessage().startswith("decision #")]
    assert [(r.levelname, r.getMessage()) for r in said] == [
        ("INFO", "decision #1 allow admin.create_key key=k-1 batch=None measurement=None: created data key; "
                 "policy: default; measurements: []"),
        ("INFO", f"decision #2 allow attest key=None batch=b-1 measurement={GOOD}: evidence verified and bound")]
    fields = ("seq", "decision", "operation", "clause", "key_id", "batch_id", "measurement")
    assert [{k: getattr(r, k) for k in fields} for r in said] == [
        {"seq": 1, "decision": "allow", "operation": "admin.create_key", "clause": "admin", "key_id": "k-1",
         "batch_id": None, "measurement": None},
        {"seq": 2, "decision": "allow", "operation": "attest", "clause": "evidence", "key_id": None,
         "batch_id": "b-1", "measurement": GOOD}]
    created, attested = env.admin.decisions()
    assert (created["claims_digest"], created["measurement"]) == (None, None)
    assert (attested["batch_id"], attested["claims_digest"], attested["measurement"]) == (
        "b-1", worker.current().claims_digest, GOOD)
    assert env.counted() == {("admin.create_key", "allow", "admin"): 1.0, ("attest", "allow", "evidence"): 1.0}
    assert 'cscore_broker_info{name="owner",store="sqlite"} 1.0' in TestClient(env.app).get("/metrics").text.split("\n")


def test_the_brokers_keys_are_kept_in_its_store_and_its_tokens_name_it(env: Env) -> None:
    broker = env.app.state.broker

    def absent() -> bytes:
        raise AssertionError("the broker's key is not in its store under its name")

    http = TestClient(env.app)
    published = {"token-signing": http.get("/kbs/v0/token-key").json()["kid"],
                 "key-transport": http.get("/kbs/v0/broker-key").json()["kid"],
                 "grant-signing": http.get("/kbs/v0/grant-key").json()["kid"]}
    assert {name: ECKey.import_key(broker.store.broker_secret(name, absent)).thumbprint() for name in published} == (
        published)
    assert len(set(published.values())) == 3
    restarted = TestClient(create_app(env.config))  # a restart on the same store
    assert {name: restarted.get(path).json()["kid"] for name, path in (
        ("token-signing", "/kbs/v0/token-key"), ("key-transport", "/kbs/v0/broker-key"),
        ("grant-signing", "/kbs/v0/grant-key"))} == published
    assert broker.verifier() is broker.verifier()  # built once
    claims = jwt.decode(env.worker().attest().token, ECKey.import_key(http.get("/kbs/v0/token-key").json()),
                        algorithms=["ES256"]).claims
    assert (claims["iss"], claims["exp"] - claims["iat"]) == ("owner", 300)


@pytest.mark.parametrize(("value", "sent"), [
    (None, None), ("tdx", "tdx"), (3, 3), (0.5, 0.5), (False, False), (["aa"], ["aa"]), ({"snp": 3}, {"snp": 3}),
    (b"\x00\xab", "00ab"), (datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "2026-01-02 03:04:05+00:00")])
def test_a_refusals_expected_and_actual_values_are_sent_as_json(value: Any, sent: Any) -> None:
    assert _jsonable(value) == sent and type(_jsonable(value)) is type(sent)


def _pages_of(env: Env, monkeypatch: pytest.MonkeyPatch, size: int, *, hide_after: int | None = None) -> None:
    """The broker's store answers `size` entries a page (10,000 in production), and none after `hide_after`."""
    store = env.app.state.broker.store
    page = store.decisions
    monkeypatch.setattr(store, "decisions", lambda after=0: [] if hide_after is not None and after >= hide_after
                        else page(after, limit=size))


def test_a_page_of_the_log_is_signed_at_its_own_last_entry_and_the_client_reads_every_page(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page cut short (at most 10,000 entries; 2 here) is signed at the last entry it carries; the client asks
    again from there until an empty page, whose signed head is the log's end, and returns the whole log."""
    for key_id in ("k-1", "k-2", "k-3", "k-4", "k-5"):
        env.admin.create_key(key_id, kind="data", measurements=[GOOD])
    whole = env.admin.decisions()
    assert [e["seq"] for e in whole] == [1, 2, 3, 4, 5]
    _pages_of(env, monkeypatch, 2)
    answer = TestClient(env.app).get("/admin/v0/decisions?after=0",
                                     headers={"Authorization": f"Bearer {env.config.load_admin_token()}"}).json()
    head = jwt.decode(answer["checkpoint"], ECKey.import_key(env.admin.token_key()), algorithms=["ES256"]).claims
    assert (len(answer["entries"]), head["seq"], head["hash"]) == (2, 2, whole[1]["hash"])
    assert env.admin.decisions() == whole  # three pages and an empty one, each chain and head verified
    assert env.admin.decisions(3) == whole[3:]  # from the middle: the chain taken from entry 4's prev_hash
    assert env.admin.decisions(5) == [] and env.admin.decisions(5, verify=False) == []


def test_a_log_whose_tail_is_withheld_is_refused_by_its_own_signed_head(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages that stop early (an empty page after seq 2 while the log holds 3): the empty page's signed head is
    the log's real end, so the client refuses instead of returning a truncated log as the whole."""
    for key_id in ("k-1", "k-2", "k-3"):
        env.admin.create_key(key_id, kind="data", measurements=[GOOD])
    whole = env.admin.decisions()
    _pages_of(env, monkeypatch, 2, hide_after=2)
    with pytest.raises(ValueError) as refused:
        env.admin.decisions()
    assert str(refused.value) == (f"signed checkpoint (seq 3, {whole[2]['hash']}) does not match the log "
                                  f"(seq 2, {whole[1]['hash']})")
    assert env.admin.decisions(verify=False) == whole[:2]  # unverified, the truncation is not seen


def test_a_head_signed_by_the_token_key_but_typed_otherwise_is_no_checkpoint(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The token key also signs attestation tokens: a JWS by it over the right seq and hash, typed `JWT`, is not
    taken for the log's checkpoint (explicit typing, RFC 8725 section 3.11)."""
    env.admin.create_key("k-1")
    issuer = env.app.state.broker.issuer
    sign = issuer.sign
    monkeypatch.setattr(issuer, "sign", lambda payload, typ="JWT": sign(payload))
    with pytest.raises(ValueError) as refused:
        env.admin.decisions()
    assert str(refused.value) == "signed checkpoint: typ expected kbs-log-checkpoint, actual JWT"


def test_a_page_read_from_the_middle_whose_first_entry_lost_its_prev_hash_is_refused_not_taken_unchecked(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read from seq 3, the client takes entry 4's prev_hash as where the chain starts. Without one, no chain could
    be checked: an answer edited on the way (entry 4 says `deny` where the broker logged `allow`, its prev_hash
    dropped, the genuine signed head kept) is refused naming the entry, not returned as the broker's log."""
    for key_id in ("k-1", "k-2", "k-3", "k-4", "k-5"):
        env.admin.create_key(key_id, kind="data", measurements=[GOOD])
    whole = env.admin.decisions()
    store = env.app.state.broker.store
    genuine = store.decisions

    def edited(after: int = 0) -> list[dict[str, Any]]:
        page = [dict(e) for e in genuine(after)]
        if page and page[0]["seq"] == 4:
            del page[0]["prev_hash"]
            page[0]["decision"] = "deny"
        return page

    monkeypatch.setattr(store, "decisions", edited)
    with pytest.raises(ValueError) as refused:
        env.admin.decisions(3)
    assert str(refused.value) == "decision 4: prev_hash expected 64 hex (where the page's chain starts), actual None"
    assert env.admin.decisions(3, verify=False)[0]["decision"] == "deny"  # unverified, the edit is not seen
    assert env.admin.decisions(4) == whole[4:]  # the next page, untouched, still reads


def test_a_whole_log_that_does_not_begin_at_genesis_is_refused(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store whose log was cut at its start and chained again from another hash (seq 1 on, every link and the
    broker's signed head consistent): read from seq 0 the first entry must follow GENESIS, so it is refused naming
    entry 1, expected and actual; read from the middle, the same page is taken from its own first link."""
    from wire.decision_log import GENESIS, entry_hash

    for key_id in ("k-1", "k-2", "k-3"):
        env.admin.create_key(key_id, kind="data", measurements=[GOOD])
    start, rechained, prev = "1" * 64, [], "1" * 64
    for entry in env.admin.decisions():
        entry = {**entry, "prev_hash": prev, "hash": entry_hash(prev, entry)}
        rechained.append(entry)
        prev = entry["hash"]
    store = env.app.state.broker.store
    monkeypatch.setattr(store, "decisions", lambda after=0: [e for e in rechained if e["seq"] > after])
    monkeypatch.setattr(store, "head", lambda: {"seq": 3, "hash": prev})
    with pytest.raises(ValueError) as refused:
        env.admin.decisions()
    assert str(refused.value) == f"decision 1: prev_hash expected {GENESIS}, actual {start}"
    assert env.admin.decisions(1) == rechained[1:]


def test_a_page_that_skips_an_entry_is_refused_though_its_head_names_its_last_entry(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read from seq 1, a page that starts at entry 3 (entry 2 left out, every link that is there intact, the head
    signed at entry 5 as the broker signs every page): 3 entries after seq 1 end at seq 4, not 5, so it is refused."""
    for key_id in ("k-1", "k-2", "k-3", "k-4", "k-5"):
        env.admin.create_key(key_id, kind="data", measurements=[GOOD])
    whole = env.admin.decisions()
    store = env.app.state.broker.store
    genuine = store.decisions
    monkeypatch.setattr(store, "decisions", lambda after=0: genuine(2 if after == 1 else after))
    with pytest.raises(ValueError) as refused:
        env.admin.decisions(1)
    assert str(refused.value) == (f"signed checkpoint (seq 5, {whole[4]['hash']}) does not match the log "
                                  f"(seq 4, {whole[4]['hash']})")


def test_a_log_whose_signed_end_is_another_entry_at_the_same_seq_is_refused(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The empty page's head names seq 2 as the pages did, but another hash (a log forked at its last entry: one
    history shown in the pages, another signed as the end): refused naming both."""
    for key_id in ("k-1", "k-2"):
        env.admin.create_key(key_id, kind="data", measurements=[GOOD])
    whole = env.admin.decisions()
    store = env.app.state.broker.store
    monkeypatch.setattr(store, "head", lambda: {"seq": 2, "hash": "f" * 64})
    with pytest.raises(ValueError) as refused:
        env.admin.decisions()
    assert str(refused.value) == (f"signed checkpoint (seq 2, {'f' * 64}) does not match the log "
                                  f"(seq 2, {whole[1]['hash']})")
