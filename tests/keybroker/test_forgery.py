"""Key broker forgeries, in-process with the production verifier and the simulated SEV-SNP TEE: each request
is well formed except for the one thing a check guards, and the refusal names field, expected and actual.

Attestation: evidence bound to another runtime_data (tee key, receipt key, another session's nonce), a nonce
of another session still in progress, evidence from a second hierarchy with the trusted names. Requests:
proof of possession over another body, path, method or token, dated outside the window, with a reused jti;
tokens of another broker, expired tokens.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

from enclave.kbs_client import AttestedSession
from keybroker import create_app
from keybroker.crypto import b64url, canonical_json
from keybroker.tokens import POP_WINDOW_S
from tests.keybroker.inproc import GOOD, Env, SimEnclave, TestClient, make_config
from wire.pop import POP_HEADER, POP_TYPE

UNWRAP = "/kbs/v0/unwrap"


def _digest(runtime: dict[str, Any]) -> bytes:
    return hashlib.sha512(canonical_json(runtime)).digest()


def _runtime(nonce: str, worker: AttestedSession, **replace: Any) -> dict[str, Any]:
    return {"nonce": nonce, "tee_pubkey": worker.tee_public_jwk, "receipt_pubkey": worker.receipt_public_jwk,
            **replace}


def _other_pubkey() -> dict[str, Any]:
    return ECKey.generate_key("P-256", private=True).as_dict(private=False)


class Client:
    """Raw HTTP to the in-process broker: challenges, attestation, and requests with hand-made PoPs."""

    def __init__(self, env: Env) -> None:
        self.env, self.http = env, TestClient(env.app)

    def auth(self, tee: str = "sev-snp") -> dict[str, str]:
        return dict(self.http.post("/kbs/v0/auth", json={"tee": tee}).json())

    def attest(self, session: str, runtime: dict[str, Any], evidence: dict[str, Any]) -> httpx.Response:
        return self.http.post("/kbs/v0/attest", json={"session": session, "runtime_data": runtime,
                                                       "evidence": evidence})

    def unwrap(self, token: str, key: ECKey, body: dict[str, Any], typ: str = POP_TYPE,
               **pop: Any) -> httpx.Response:
        content = canonical_json(body)
        claims = {"htm": "POST", "htu": UNWRAP, "iat": int(time.time()), "jti": secrets.token_urlsafe(16),
                  "ath": b64url(hashlib.sha256(token.encode()).digest()),
                  "bh": b64url(hashlib.sha256(content).digest()), **pop}
        proof = jwt.encode({"alg": "ES256", "typ": typ}, claims, key, algorithms=["ES256"])
        return self.http.post(UNWRAP, content=content, headers={
            "Authorization": f"Bearer {token}", POP_HEADER: proof, "Content-Type": "application/json"})


@pytest.fixture
def client(env: Env) -> Client:
    return Client(env)


@pytest.fixture
def attested(env: Env) -> tuple[str, ECKey, dict[str, Any]]:
    """(token, tee key, unwrap body) of an enclave attested to the broker, with a data key granted."""
    wrapped = env.data_key()
    worker = env.worker()
    token = worker.attest().token
    body = {"key_id": "data-1", "wrapped": base64.b64encode(wrapped).decode(), "batch_id": "batch-1",
            "model_digest": "sha256:m"}
    return token, worker._tee_key, body


def _problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    problem: dict[str, Any] = response.json()
    assert problem["type"].endswith(slug), problem
    return problem


# -- attestation: the evidence must bind this session's nonce and these keys --------------------------

def test_hand_built_attestation_is_accepted(env: Env, client: Client) -> None:  # guards the forgeries below
    worker, challenge = env.worker(), client.auth()
    runtime = _runtime(challenge["nonce"], worker)
    answer = client.attest(challenge["session"], runtime, env.enclave().get_evidence(_digest(runtime)).to_json())
    assert answer.status_code == 200 and answer.json()["claims"]["root"] == "simulated"


@pytest.mark.parametrize("swapped", ["tee_pubkey", "receipt_pubkey"])
def test_evidence_bound_to_other_keys_is_refused(env: Env, client: Client, swapped: str) -> None:
    worker, challenge = env.worker(), client.auth()
    honest = _runtime(challenge["nonce"], worker)
    evidence = env.enclave().get_evidence(_digest(honest)).to_json()  # the enclave's evidence, keys swapped in
    forged = {**honest, swapped: _other_pubkey()}
    problem = _problem(client.attest(challenge["session"], forged, evidence), 403, "evidence-rejected")
    assert (problem["field"], problem["expected"], problem["actual"]) == (
        "report_data", _digest(forged).hex(), _digest(honest).hex())


def test_the_batch_an_attestation_names_is_bound_and_logged(env: Env) -> None:
    worker = env.worker()
    claims = worker.attest("batch-7").claims
    assert worker.runtime_data is not None and worker.runtime_data["batch_id"] == "batch-7"
    assert claims["report_data"] == _digest(worker.runtime_data).hex()  # the evidence binds the batch
    last = env.admin.decisions()[-1]
    assert (last["operation"], last["decision"], last["batch_id"]) == ("attest", "allow", "batch-7")
    env.worker().attest()  # a worker that names no batch: the old binding, logged without one
    assert env.admin.decisions()[-1]["batch_id"] is None


def test_a_batch_rewritten_in_transit_is_refused_and_logged_as_the_requester_said(env: Env, client: Client) -> None:
    worker, challenge = env.worker(), client.auth()
    honest = _runtime(challenge["nonce"], worker, batch_id="batch-7")
    evidence = env.enclave().get_evidence(_digest(honest)).to_json()
    relabelled = {**honest, "batch_id": "batch-8"}  # the platform names another batch for the enclave's evidence
    problem = _problem(client.attest(challenge["session"], relabelled, evidence), 403, "evidence-rejected")
    assert (problem["field"], problem["expected"], problem["actual"]) == (
        "report_data", _digest(relabelled).hex(), _digest(honest).hex())
    # Logged under the batch the request named: the audit shows it as the requester's word, not proven.
    last = env.admin.decisions()[-1]
    assert (last["operation"], last["decision"], last["batch_id"]) == ("attest", "deny", "batch-8")
    bad = client.auth()
    malformed = _runtime(bad["nonce"], worker, batch_id="no spaces allowed")
    assert client.attest(bad["session"], malformed, evidence).status_code == 422


def test_evidence_of_another_tee_than_the_session_was_opened_for_is_refused(env: Env, client: Client) -> None:
    worker, challenge = env.worker(), client.auth("tdx")  # announced TDX; sends genuine, bound SEV-SNP evidence
    runtime = _runtime(challenge["nonce"], worker)
    evidence = env.enclave().get_evidence(_digest(runtime)).to_json()
    problem = _problem(client.attest(challenge["session"], runtime, evidence), 403, "evidence-rejected")
    assert (problem["field"], problem["expected"], problem["actual"]) == ("evidence.tee", "tdx", "sev-snp")
    assert problem["detail"] == ("evidence is from a 'sev-snp' TEE, but this session was opened for 'tdx' at "
                                 "/kbs/v0/auth")
    assert client.attest(challenge["session"], runtime, evidence).status_code == 401  # the nonce is spent


def test_the_enclave_announces_its_providers_tee_at_auth(env: Env) -> None:
    """The session's TEE comes from the evidence provider: one that says "tdx" is held to TDX evidence."""
    from enclave.kbs_client import KbsError
    from tests.keybroker.inproc import SimEnclave

    class SaysTdx(SimEnclave):
        tee = "tdx"

    assert env.worker().attest().claims["tee"] == "sev-snp"  # the simulated SEV-SNP provider says "sev-snp"
    with pytest.raises(KbsError) as refused:
        env.worker(SaysTdx(env.sim_dir)).attest()
    assert (refused.value.status, refused.value.problem["field"], refused.value.problem["expected"],
            refused.value.problem["actual"]) == (403, "evidence.tee", "tdx", "sev-snp")


def test_nonce_of_another_session_still_in_progress_is_refused(env: Env, client: Client) -> None:
    worker, first, second = env.worker(), client.auth(), client.auth()
    runtime = _runtime(first["nonce"], worker)
    evidence = env.enclave().get_evidence(_digest(runtime)).to_json()
    problem = _problem(client.attest(second["session"], runtime, evidence), 401, "nonce-invalid")
    assert problem["field"] == "runtime_data.nonce" and "not this session's nonce" in problem["detail"]
    assert client.attest(first["session"], runtime, evidence).status_code == 200  # its own session: fine


def test_evidence_bound_to_another_sessions_nonce_is_refused(env: Env, client: Client) -> None:
    worker, first, second = env.worker(), client.auth(), client.auth()
    bound = _runtime(first["nonce"], worker)
    sent = _runtime(second["nonce"], worker)
    evidence = env.enclave().get_evidence(_digest(bound)).to_json()
    problem = _problem(client.attest(second["session"], sent, evidence), 403, "evidence-rejected")
    assert (problem["field"], problem["expected"], problem["actual"]) == (
        "report_data", _digest(sent).hex(), _digest(bound).hex())


def test_evidence_from_a_second_hierarchy_with_the_trusted_names_is_refused(env: Env, client: Client,
                                                                            tmp_path: Path) -> None:
    from attestation.simulated import create_simulated_firmware

    create_simulated_firmware(tmp_path / "rogue")  # same names as the broker's simulated root, other keys
    worker, challenge = env.worker(), client.auth()
    runtime = _runtime(challenge["nonce"], worker)
    evidence = SimEnclave(tmp_path / "rogue").get_evidence(_digest(runtime)).to_json()
    problem = _problem(client.attest(challenge["session"], runtime, evidence), 403, "evidence-rejected")
    assert problem["field"] == "evidence.cert_chain.ark"


def test_broker_without_accept_simulated_refuses_the_simulated_root(tmp_path: Path) -> None:
    env = Env(tmp_path, accept_simulated=False)
    client, worker = Client(env), env.worker()
    challenge = client.auth()
    runtime = _runtime(challenge["nonce"], worker)
    evidence = env.enclave().get_evidence(_digest(runtime)).to_json()
    problem = _problem(client.attest(challenge["session"], runtime, evidence), 403, "evidence-rejected")
    assert problem["field"] == "evidence.cert_chain.ark" and "ARK-Milan" in problem["expected"]


# -- proof of possession: exactly this request, now, once ---------------------------------------------

def test_hand_built_request_is_served(client: Client, attested: tuple[str, ECKey, dict[str, Any]]) -> None:
    token, key, body = attested
    assert client.unwrap(token, key, body).status_code == 200


def test_pop_over_a_different_body_is_refused(client: Client, attested: tuple[str, ECKey, dict[str, Any]]) -> None:
    token, key, body = attested
    signed = b64url(hashlib.sha256(canonical_json({**body, "batch_id": "batch-2"})).digest())
    problem = _problem(client.unwrap(token, key, body, bh=signed), 401, "pop-invalid")
    assert (problem["field"], problem["expected"], problem["actual"]) == (
        f"{POP_HEADER}.bh", b64url(hashlib.sha256(canonical_json(body)).digest()), signed)


@pytest.mark.parametrize("typ", ["JWT", "kbs-log-checkpoint", "dpop+jwt"])  # JWT: joserfc's default
def test_a_jws_not_typed_as_a_pop_is_refused(client: Client, attested: tuple[str, ECKey, dict[str, Any]],
                                             typ: str) -> None:
    # signed by the attested key over exactly this request: only its type says it was not made as a proof
    token, key, body = attested
    problem = _problem(client.unwrap(token, key, body, typ=typ), 401, "pop-invalid")
    assert (problem["field"], problem["expected"], problem["actual"]) == (f"{POP_HEADER}.typ", POP_TYPE, typ)
    assert problem["detail"] == f"the {POP_HEADER} header is not typed as a proof of possession"


@pytest.mark.parametrize(("name", "value"), [("htu", "/kbs/v0/wrap"), ("htm", "GET"), ("ath", "other-token")])
def test_pop_for_another_request_is_refused(client: Client, attested: tuple[str, ECKey, dict[str, Any]],
                                            name: str, value: str) -> None:
    token, key, body = attested
    problem = _problem(client.unwrap(token, key, body, **{name: value}), 401, "pop-invalid")
    assert (problem["field"], problem["actual"]) == (f"{POP_HEADER}.{name}", value)


@pytest.mark.parametrize("offset", [POP_WINDOW_S + 60, -(POP_WINDOW_S + 60)])
def test_pop_dated_in_the_future_or_too_old_is_refused(client: Client, attested: tuple[str, ECKey, dict[str, Any]],
                                                       offset: int) -> None:
    token, key, body = attested
    iat = int(time.time()) + offset
    problem = _problem(client.unwrap(token, key, body, iat=iat), 401, "pop-invalid")
    assert (problem["field"], problem["expected"], problem["actual"]) == (
        f"{POP_HEADER}.iat", f"within {POP_WINDOW_S} s of now", iat)


def test_pop_inside_the_window_is_accepted(client: Client, attested: tuple[str, ECKey, dict[str, Any]]) -> None:
    token, key, body = attested
    assert client.unwrap(token, key, body, iat=int(time.time()) - POP_WINDOW_S + 30).status_code == 200


def test_pop_reusing_a_jti_is_refused(client: Client, attested: tuple[str, ECKey, dict[str, Any]]) -> None:
    token, key, body = attested
    jti = secrets.token_urlsafe(16)
    assert client.unwrap(token, key, body, jti=jti).status_code == 200
    again = client.unwrap(token, key, body, jti=jti)  # a fresh signature, a fresh iat: the id alone repeats
    assert _problem(again, 401, "pop-replayed")["field"] == f"{POP_HEADER}.jti"


@pytest.mark.parametrize("jti", [None, "", 7])
def test_pop_without_a_string_jti_is_refused(client: Client, attested: tuple[str, ECKey, dict[str, Any]],
                                             jti: Any) -> None:
    """Without an id the replay cache cannot tell two uses of one captured PoP apart."""
    token, key, body = attested
    content = canonical_json(body)
    claims = {"htm": "POST", "htu": UNWRAP, "iat": int(time.time()),
              "ath": b64url(hashlib.sha256(token.encode()).digest()), "bh": b64url(hashlib.sha256(content).digest())}
    if jti is not None:
        claims["jti"] = jti
    proof = jwt.encode({"alg": "ES256", "typ": POP_TYPE}, claims, key, algorithms=["ES256"])
    headers = {"Authorization": f"Bearer {token}", POP_HEADER: proof, "Content-Type": "application/json"}
    for _ in range(2):  # neither the first use nor a replay is served
        problem = _problem(client.http.post(UNWRAP, content=content, headers=headers), 401, "pop-invalid")
        assert (problem["field"], problem["expected"], problem.get("actual")) == (
            f"{POP_HEADER}.jti", "a non-empty string", jti)
        assert problem["detail"] == "proof of possession has no jti (a unique id per request)"


def test_pop_signed_by_another_key_is_refused(client: Client, attested: tuple[str, ECKey, dict[str, Any]]) -> None:
    token, _, body = attested
    problem = _problem(client.unwrap(token, ECKey.generate_key("P-256", private=True), body), 401, "pop-key-mismatch")
    assert problem["field"] == "tee_pubkey"


# -- tokens: this broker's, unexpired --------------------------------------------------------------

def test_token_of_another_broker_sharing_the_signing_key_is_refused(
        env: Env, tmp_path: Path, attested: tuple[str, ECKey, dict[str, Any]]) -> None:
    token, key, body = attested
    other = Client.__new__(Client)  # a broker named "provider" over the same store: same token-signing key
    other.env, other.http = env, TestClient(create_app(make_config(tmp_path, name="provider")))
    problem = _problem(other.unwrap(token, key, body), 401, "token-invalid")
    assert (problem["field"], problem["expected"], problem["actual"]) == ("iss", "provider", "owner")
    assert problem["detail"] == "token issued by another broker"


def test_token_signed_by_another_brokers_key_is_refused(tmp_path: Path,
                                                        attested: tuple[str, ECKey, dict[str, Any]]) -> None:
    token, key, body = attested
    elsewhere = Client(Env(tmp_path / "elsewhere"))  # another broker, its own key, the same name
    problem = _problem(elsewhere.unwrap(token, key, body), 401, "token-invalid")
    assert problem["field"] == "Authorization"
    assert problem["detail"].startswith("attestation token is not one this broker signed: ")


@pytest.mark.parametrize("age", [0, 60])
def test_expired_token_is_refused(env: Env, client: Client, attested: tuple[str, ECKey, dict[str, Any]],
                                  age: int) -> None:
    token, key, body = attested
    issuer = env.app.state.broker.issuer
    payload = jwt.decode(token, issuer._key, algorithms=["ES256"]).claims
    exp = int(time.time()) - age
    stale = issuer.sign({**payload, "exp": exp})
    problem = _problem(client.unwrap(stale, key, body), 401, "token-expired")
    assert (problem["field"], problem["detail"]) == ("exp", "attestation token expired; attest again")
    assert problem["expected"].startswith("> ")
    assert problem["actual"] == exp


def test_request_without_pop_is_refused(client: Client, attested: tuple[str, ECKey, dict[str, Any]]) -> None:
    token, _, body = attested
    response = client.http.post(UNWRAP, json=body, headers={"Authorization": f"Bearer {token}"})
    problem = _problem(response, 401, "pop-missing")
    assert problem["field"] == POP_HEADER and POP_HEADER in problem["detail"]


def test_request_without_token_is_refused(client: Client, attested: tuple[str, ECKey, dict[str, Any]]) -> None:
    problem = _problem(client.http.post(UNWRAP, json=attested[2]), 401, "token-missing")
    assert (problem["field"], problem["expected"]) == ("Authorization", "Bearer <token>")
    assert problem["detail"] == ("no attestation token: send 'Authorization: Bearer <token>' obtained from "
                                 "/kbs/v0/attest")


# -- published keys: public halves only ----------------------------------------------------------------

@pytest.mark.parametrize(("path", "alg", "use"), [("/kbs/v0/token-key", "ES256", "sig"),
                                                  ("/kbs/v0/broker-key", "ECDH-ES+A256KW", "enc")])
def test_published_keys_hold_no_private_part(client: Client, path: str, alg: str, use: str) -> None:
    jwk = client.http.get(path).json()
    assert "d" not in jwk and (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("EC", "P-256", alg, use)
    assert jwk["kid"] == ECKey.import_key(jwk).thumbprint()


def test_tokens_verify_with_the_published_key(client: Client, attested: tuple[str, ECKey, dict[str, Any]]) -> None:
    published = client.http.get("/kbs/v0/token-key").json()
    token = jwt.decode(attested[0], ECKey.import_key(published), algorithms=["ES256"])
    assert token.header["kid"] == published["kid"] and token.claims["iss"] == "owner"


# -- every refusal, word for word, and the PoP window to the second ------------------------------------

def test_refusal_details_word_for_word(client: Client, attested: tuple[str, ECKey, dict[str, Any]]) -> None:
    token, key, body = attested
    jkt = ECKey.import_key(key.as_dict(private=False)).thumbprint()
    no_pop = client.http.post(UNWRAP, json=body, headers={"Authorization": f"Bearer {token}"})
    assert _problem(no_pop, 401, "pop-missing")["detail"] == (
        f"missing {POP_HEADER} header (proof of possession of the attested tee key)")
    other_key = _problem(client.unwrap(token, ECKey.generate_key("P-256", private=True), body), 401,
                         "pop-key-mismatch")
    assert (other_key["detail"], other_key["expected"]) == (
        "the request is not signed by the tee key this token was issued to", jkt)
    assert _problem(client.unwrap(token, key, body, bh="x"), 401, "pop-invalid")["detail"] == (
        "proof of possession does not cover this request (bh)")
    assert _problem(client.unwrap(token, key, body, iat=0), 401, "pop-invalid")["detail"] == (
        "proof of possession is stale or from the future; check clocks")
    client.unwrap(token, key, body, jti="once")
    assert _problem(client.unwrap(token, key, body, jti="once"), 401, "pop-replayed")["detail"] == (
        "proof of possession already used; sign each request anew")


def test_pop_without_iat_is_stale(client: Client, attested: tuple[str, ECKey, dict[str, Any]]) -> None:
    token, key, body = attested
    content = canonical_json(body)
    claims = {"htm": "POST", "htu": UNWRAP, "jti": secrets.token_urlsafe(16),
              "ath": b64url(hashlib.sha256(token.encode()).digest()), "bh": b64url(hashlib.sha256(content).digest())}
    proof = jwt.encode({"alg": "ES256", "typ": POP_TYPE}, claims, key, algorithms=["ES256"])
    response = client.http.post(UNWRAP, content=content, headers={
        "Authorization": f"Bearer {token}", POP_HEADER: proof, "Content-Type": "application/json"})
    assert _problem(response, 401, "pop-invalid")["field"] == f"{POP_HEADER}.iat"


@pytest.mark.parametrize(("offset", "served"), [(-POP_WINDOW_S, True), (POP_WINDOW_S, True),
                                                (-POP_WINDOW_S - 1, False), (POP_WINDOW_S + 1, False)])
def test_pop_window_to_the_second(monkeypatch: pytest.MonkeyPatch, client: Client,
                                  attested: tuple[str, ECKey, dict[str, Any]], offset: int, served: bool) -> None:
    from types import SimpleNamespace

    from keybroker import tokens

    token, key, body = attested
    now = int(time.time())
    monkeypatch.setattr(tokens, "time", SimpleNamespace(time=lambda: float(now)))  # the broker's clock, frozen
    response = client.unwrap(token, key, body, iat=now + offset)
    assert response.status_code == (200 if served else 401), response.text


def test_token_without_exp_is_expired(env: Env, client: Client, attested: tuple[str, ECKey, dict[str, Any]]) -> None:
    token, key, body = attested
    issuer = env.app.state.broker.issuer
    payload = jwt.decode(token, issuer._key, algorithms=["ES256"]).claims
    forever = issuer.sign({k: v for k, v in payload.items() if k != "exp"})  # the broker's own key, no expiry
    problem = _problem(client.unwrap(forever, key, body), 401, "token-expired")
    assert problem["field"] == "exp" and problem.get("actual") is None


def test_token_claims_shape(env: Env, attested: tuple[str, ECKey, dict[str, Any]]) -> None:
    token, key, _ = attested
    claims = jwt.decode(token, env.app.state.broker.issuer._key, algorithms=["ES256"]).claims
    assert set(claims) == {"iss", "iat", "exp", "jti", "cnf", "tee_pubkey", "receipt_pubkey", "claims",
                           "claims_digest"}
    assert claims["exp"] - claims["iat"] == env.config.token_ttl_s and len(claims["jti"]) == 16
    assert claims["cnf"] == {"jkt": ECKey.import_key(key.as_dict(private=False)).thumbprint()}
    assert claims["claims_digest"] == hashlib.sha256(canonical_json(claims["claims"])).hexdigest()
    assert jwt.decode(token, env.app.state.broker.issuer._key, algorithms=["ES256"]).header["typ"] == "JWT"


# -- the production verifier itself ---------------------------------------------------------------------

def test_verifier_needs_the_simulated_root_folder_to_accept_simulated() -> None:
    from keybroker.verifier import attestation_verifier

    with pytest.raises(ValueError) as err:
        attestation_verifier(None, True)
    assert str(err.value) == "accept_simulated needs trusted_roots_dir (the folder holding ark.pem)"


@pytest.mark.parametrize("error", [KeyError("vcek"), ValueError("bad length"), TypeError("not bytes")])
def test_a_parser_error_the_library_did_not_wrap_is_a_refusal(env: Env, monkeypatch: pytest.MonkeyPatch,
                                                              error: Exception) -> None:
    """Defence in depth: a shape the parser forgot to name still refuses (403, field "evidence"), never a 500."""
    from datetime import UTC, datetime

    import attestation
    from keybroker.verifier import EvidenceRejected, attestation_verifier

    def unwrapped(*_: Any, **__: Any) -> Any:
        raise error

    monkeypatch.setattr(attestation, "verify_evidence", unwrapped)
    verify = attestation_verifier(env.sim_dir, True)
    with pytest.raises(EvidenceRejected) as err:
        verify(env.enclave().get_evidence(bytes(64)).to_json(), bytes(64), datetime.now(UTC))
    assert (err.value.field, str(err.value)) == ("evidence", f"evidence is malformed: {error}")


@pytest.mark.parametrize(("claims", "actual"), [({}, ""), ({"report_data": None}, ""),
                                                ({"report_data": "AB" * 64}, "ab" * 64)])
def test_binding_refusal_shows_the_report_data_found(claims: dict[str, Any], actual: str) -> None:
    from keybroker.verifier import EvidenceRejected, check_binding

    with pytest.raises(EvidenceRejected) as err:
        check_binding(claims, bytes(64))
    assert (err.value.field, err.value.expected, err.value.actual) == ("report_data", "00" * 64, actual)
    assert str(err.value) == "evidence report_data does not bind this runtime_data (nonce and keys)"
    check_binding({"report_data": "00" * 64}, bytes(64))  # upper or lower case hex: the same 64 bytes bind
    check_binding({"report_data": "AB" * 64}, bytes.fromhex("ab" * 64))


def test_attested_claims_carry_every_verified_claim(env: Env) -> None:
    """Custom CEL policies may name any claim (vmpl, launch_tcb, ...): the broker passes on all of them."""
    from dataclasses import fields

    from attestation.evidence import Claims

    claims = env.worker().attest().claims
    assert set(claims) == {f.name for f in fields(Claims)}
    assert (claims["vmpl"], claims["launch_tcb"], claims["rtmrs"]) == (0, claims["tcb"], [])


def test_an_unreadable_simulated_root_is_named_when_the_verifier_is_built(tmp_path: Path) -> None:
    from keybroker.verifier import attestation_verifier

    (tmp_path / "ark.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(ValueError) as err:
        attestation_verifier(tmp_path, True)
    assert str(err.value).startswith(f"trusted_roots_dir: {tmp_path / 'ark.pem'}: expected PEM certificates, got ")


@pytest.mark.parametrize(("evidence", "field", "expected", "actual"), [
    ({"tee": "nitro"}, "evidence.tee", "one of ['sev-snp', 'tdx']", "nitro"),
    ({"tee": "sev-snp", "report": "!"}, "evidence.report", "standard base64",
     "undecodable text (Only base64 data is allowed)")])
def test_verifier_names_the_field_of_a_malformed_envelope(env: Env, evidence: dict[str, Any], field: str,
                                                          expected: str, actual: str) -> None:
    from datetime import UTC, datetime

    from keybroker.verifier import EvidenceRejected, attestation_verifier

    verify = attestation_verifier(env.sim_dir, True)
    with pytest.raises(EvidenceRejected) as err:
        verify(evidence, bytes(64), datetime.now(UTC))
    assert (err.value.field, err.value.expected, err.value.actual) == (field, expected, actual)
    assert str(err.value) == f"evidence rejected: {field}: expected {expected}, got {actual}"


def test_pop_replayed_late_in_its_window_is_refused(monkeypatch: pytest.MonkeyPatch, client: Client,
                                                    attested: tuple[str, ECKey, dict[str, Any]]) -> None:
    """The replay cache must remember a PoP id for as long as the PoP itself is accepted."""
    from types import SimpleNamespace

    from keybroker import sessions, tokens

    token, key, body = attested
    now, base, later = float(int(time.time())), time.monotonic(), 0.0
    monkeypatch.setattr(tokens, "time", SimpleNamespace(time=lambda: now + later))
    monkeypatch.setattr(sessions, "time", SimpleNamespace(monotonic=lambda: base + later))
    assert client.unwrap(token, key, body, jti="captured", iat=int(now)).status_code == 200
    later = POP_WINDOW_S - 1.0  # the captured PoP is still inside its window
    replayed = client.unwrap(token, key, body, jti="captured", iat=int(now))
    assert _problem(replayed, 401, "pop-replayed")["field"] == f"{POP_HEADER}.jti"


def test_claims_to_dict_keeps_every_claim_of_a_tdx_quote_and_has_no_partial_fallback() -> None:
    """No subset of claim names to fall back on: a custom policy naming `vmpl`, `rtmrs` or `tcb_status`
    sees them on real TDX claims, and anything but `attestation.Claims` is a TypeError, not a partial view."""
    import dataclasses
    from dataclasses import fields
    from datetime import UTC, datetime

    from attestation import Claims, Evidence, TrustAnchors, verify_evidence
    from keybroker.verifier import claims_to_dict
    from tests.attestation._attestation_data import read

    claims = verify_evidence(Evidence(tee="tdx", report=read("tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat")),
                             TrustAnchors.amd(), datetime(2026, 1, 1, tzinfo=UTC))
    out = claims_to_dict(claims)
    assert set(out) == {f.name for f in fields(Claims)}
    assert (out["vmpl"], out["rtmrs"], out["tcb_status"]) == (claims.vmpl, claims.rtmrs, claims.tcb_status)
    assert len(out["rtmrs"]) == 4 and out == claims.to_dict()

    class Partial:  # the old fallback's shape: the twelve base claims as attributes, no to_dict
        tee, vmpl = "sev-snp", 0

    with pytest.raises(TypeError) as err:
        claims_to_dict(Partial())
    assert str(err.value) == "claims: expected attestation.Claims, got Partial"
    with pytest.raises(TypeError):  # a claim JSON cannot carry is loud, not turned into text
        claims_to_dict(dataclasses.replace(claims, advisory_ids=[b"\x01"]))  # type: ignore[list-item]


# -- attestation: each refusal logged, counted and answered word for word -----------------------------

ATTEST_LOGGED = ("decision", "operation", "key_id", "batch_id", "model_digest", "measurement", "claims_digest",
                 "reason")


def _last_attest(env: Env) -> dict[str, Any]:
    last = env.admin.decisions()[-1]
    return {k: last[k] for k in ATTEST_LOGGED}


def _denied(reason: str, batch: str | None = "batch-7") -> dict[str, Any]:
    return {"decision": "deny", "operation": "attest", "key_id": None, "batch_id": batch, "model_digest": None,
            "measurement": None, "claims_digest": None, "reason": reason}


def test_an_accepted_attestation_is_logged_with_its_claims_and_answered_with_a_bound_token(env: Env,
                                                                                           client: Client) -> None:
    worker, challenge = env.worker(), client.auth()
    runtime = _runtime(challenge["nonce"], worker, batch_id="batch-7", broker="owner")  # this broker's own name
    answer = client.attest(challenge["session"], runtime, env.enclave().get_evidence(_digest(runtime)).to_json())
    assert answer.status_code == 200, answer.text
    claims = answer.json()["claims"]
    assert (claims["measurement"], claims["report_data"]) == (GOOD, _digest(runtime).hex())
    assert _last_attest(env) == {"decision": "allow", "operation": "attest", "key_id": None, "batch_id": "batch-7",
                                 "model_digest": None, "measurement": claims["measurement"],
                                 "claims_digest": hashlib.sha256(canonical_json(claims)).hexdigest(),
                                 "reason": "evidence verified and bound"}
    assert env.counted()[("attest", "allow", "evidence")] == 1
    token = jwt.decode(answer.json()["token"], env.app.state.broker.issuer._key, algorithms=["ES256"]).claims
    assert token["exp"] == answer.json()["expires_at"] and token["claims"] == claims
    assert token["cnf"] == {"jkt": ECKey.import_key(worker.tee_public_jwk).thumbprint()}
    assert (token["tee_pubkey"], token["receipt_pubkey"]) == (worker.tee_public_jwk, worker.receipt_public_jwk)


def test_a_nonce_of_another_session_is_refused_logged_and_counted(env: Env, client: Client) -> None:
    worker, first, second = env.worker(), client.auth(), client.auth()
    runtime = _runtime(first["nonce"], worker, batch_id="batch-7")
    evidence = env.enclave().get_evidence(_digest(runtime)).to_json()
    problem = _problem(client.attest(second["session"], runtime, evidence), 401, "nonce-invalid")
    assert (problem["field"], problem["detail"]) == ("runtime_data.nonce",
                                                     "runtime_data.nonce is not this session's nonce")
    assert _last_attest(env) == _denied("runtime_data.nonce is not this session's nonce")
    assert env.counted()[("attest", "deny", "nonce")] == 1
    unknown = _problem(client.attest("no-such-session", runtime, evidence), 401, "nonce-invalid")
    assert unknown["detail"] == "unknown or evicted session; call /kbs/v0/auth again"


@pytest.mark.parametrize("tee_pubkey", [{"kty": "oct", "k": "AA"}, {"kty": "EC", "crv": "P-256", "x": "AA"},
                                        {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "d": "AA"}])
def test_a_tee_key_that_is_no_public_key_is_refused_before_the_evidence_is_read(env: Env, client: Client,
                                                                              tee_pubkey: dict[str, Any]) -> None:
    worker, challenge = env.worker(), client.auth()
    runtime = _runtime(challenge["nonce"], worker, tee_pubkey=tee_pubkey)
    evidence = env.enclave().get_evidence(_digest(runtime)).to_json()  # bound: only the key is wrong
    problem = _problem(client.attest(challenge["session"], runtime, evidence), 422, "tee-pubkey-invalid")
    assert problem["field"] == "runtime_data.tee_pubkey" and problem["detail"].startswith("runtime_data.tee_pubkey: ")
    assert env.admin.decisions() == []  # nothing attested, nothing logged
    assert _problem(client.attest(challenge["session"], runtime, evidence), 401, "nonce-invalid")["detail"] == (
        "nonce already used; every attestation needs a fresh /kbs/v0/auth")


def test_evidence_bound_to_another_runtime_is_refused_logged_and_counted(env: Env, client: Client) -> None:
    worker, challenge = env.worker(), client.auth()
    honest = _runtime(challenge["nonce"], worker, batch_id="batch-7")
    evidence = env.enclave().get_evidence(_digest({**honest, "receipt_pubkey": _other_pubkey()})).to_json()
    problem = _problem(client.attest(challenge["session"], honest, evidence), 403, "evidence-rejected")
    reason = "evidence report_data does not bind this runtime_data (nonce and keys)"
    assert (problem["detail"], problem["field"], problem["expected"]) == (reason, "report_data",
                                                                          _digest(honest).hex())
    assert isinstance(problem["actual"], str) and problem["actual"] != problem["expected"]
    assert _last_attest(env) == _denied(reason)
    assert env.counted()[("attest", "deny", "evidence")] == 1


def test_evidence_of_another_tee_is_logged_under_the_batch_named(env: Env, client: Client) -> None:
    worker, challenge = env.worker(), client.auth("tdx")
    runtime = _runtime(challenge["nonce"], worker, batch_id="batch-7")
    evidence = env.enclave().get_evidence(_digest(runtime)).to_json()
    _problem(client.attest(challenge["session"], runtime, evidence), 403, "evidence-rejected")
    assert _last_attest(env) == _denied("evidence is from a 'sev-snp' TEE, but this session was opened for 'tdx' "
                                        "at /kbs/v0/auth")
    assert env.counted()[("attest", "deny", "evidence")] == 1


def test_a_worker_attesting_to_another_brokers_name_is_refused_logged_and_counted(env: Env, client: Client) -> None:
    worker, challenge = env.worker(), client.auth()
    runtime = _runtime(challenge["nonce"], worker, batch_id="batch-7", broker="provider")  # bound, and honest
    evidence = env.enclave().get_evidence(_digest(runtime)).to_json()
    problem = _problem(client.attest(challenge["session"], runtime, evidence), 403, "evidence-rejected")
    reason = ("the worker attests to broker 'provider' of its configuration, this is broker 'owner': it reached "
              "this broker through another name's URL")
    assert (problem["detail"], problem["field"], problem["expected"], problem["actual"]) == (
        reason, "runtime_data.broker", "owner", "provider")
    assert _last_attest(env) == _denied(reason)
    assert env.counted()[("attest", "deny", "evidence")] == 1
    assert client.attest(challenge["session"], runtime, evidence).status_code == 401  # the nonce is spent


def test_a_worker_naming_no_batch_and_no_broker_is_bound_without_them(env: Env, client: Client) -> None:
    worker, challenge = env.worker(), client.auth()
    runtime = _runtime(challenge["nonce"], worker)
    with_nulls = {**runtime, "batch_id": None, "broker": None}  # sent as null: the same binding as absent
    answer = client.attest(challenge["session"], with_nulls, env.enclave().get_evidence(_digest(runtime)).to_json())
    assert answer.status_code == 200, answer.text
    assert _last_attest(env)["batch_id"] is None
    second = client.auth()
    bound_with_nulls = {**_runtime(second["nonce"], worker), "batch_id": None, "broker": None}
    evidence = env.enclave().get_evidence(_digest(bound_with_nulls)).to_json()
    problem = _problem(client.attest(second["session"], bound_with_nulls, evidence), 403, "evidence-rejected")
    assert problem["expected"] == _digest(_runtime(second["nonce"], worker)).hex()
