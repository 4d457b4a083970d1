"""The worker's client of a key broker: what it sends, what it takes from the broker's answers and what it refuses.

The broker is the real one in process (production verifier, simulated SEV-SNP: `tests.keybroker.inproc`); between
it and the worker sits the platform (`Relay`), which sees every request and may rewrite any answer.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwe
from joserfc.errors import JoseError

from attestation import Evidence
from attestation.snp.report import parse_report
from enclave.kbs_client import (
    BATCHES_REMEMBERED,
    AttestedSession,
    BrokerUnreachable,
    KbsError,
    problem_of,
)
from tests.keybroker.inproc import CONFIG, GOOD, Env, TestClient
from wire.canonical import canonical_json

Rewrite = Callable[[httpx.Request, httpx.Response], httpx.Response]


class Relay:
    """The platform's network between a worker and the in-process broker: each request forwarded, its answer
    handed back as it is or as `rewrite` makes it; every request and answer kept."""

    def __init__(self, env: Env, rewrite: Rewrite | None = None) -> None:
        self._broker = TestClient(env.app)
        self.rewrite = rewrite
        self.sent: list[tuple[str, dict[str, Any] | None, int]] = []  # (path, JSON body, status handed back)
        self.answers: list[bytes] = []
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self._broker.request(request.method, request.url.path, content=request.content,
                                      headers={k: v for k, v in request.headers.items() if k not in ("host",)})
        response = httpx.Response(answer.status_code, headers={"content-type": answer.headers.get("content-type", "")},
                                  content=answer.content)
        if self.rewrite is not None:
            response = self.rewrite(request, response)
        self.sent.append((request.url.path, json.loads(request.content) if request.content else None,
                          response.status_code))
        self.answers.append(response.read())
        return response

    def paths(self) -> list[str]:
        return [path for path, _, _ in self.sent]


def _session(env: Env, relay: Relay, **kwargs: Any) -> AttestedSession:
    client = httpx.Client(base_url="http://testserver", transport=httpx.MockTransport(relay))
    return AttestedSession("http://testserver", env.enclave(), client=client, **kwargs)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    env = Env(tmp_path)
    env.admin.create_key("results-1", kind="result")
    env.data_key()  # data-1, granted with results-1 below for batch-1 and model sha256:m
    env.admin.grant("batch-1", "sha256:m", [GOOD], ["data-1", "results-1"], config_digests=[CONFIG], rows=10)
    return env


def test_attestation_binds_the_nonce_both_keys_the_batch_and_the_brokers_name(env: Env) -> None:
    relay = Relay(env)
    session = _session(env, relay, broker_name="owner")
    result = session.attest("batch-1")
    (_, auth, _), (_, attest, _) = relay.sent
    assert auth == {"tee": "sev-snp"}
    runtime = attest["runtime_data"]  # type: ignore[index]
    assert runtime == {"nonce": runtime["nonce"], "tee_pubkey": session.tee_public_jwk,
                       "receipt_pubkey": session.receipt_public_jwk, "batch_id": "batch-1", "broker": "owner"}
    assert session.runtime_data == runtime and runtime["nonce"] == json.loads(relay.answers[0])["nonce"]
    report = parse_report(Evidence.from_json(attest["evidence"]).report)  # type: ignore[index]
    assert report.report_data == hashlib.sha512(canonical_json(runtime)).digest()
    assert session.evidence is not None and session.evidence.to_json() == attest["evidence"]  # type: ignore[index]
    assert result.claims["measurement"] == GOOD and result.expires_at > time.time()
    assert session.current() is result  # kept, not made again
    plain = Relay(env)
    _session(env, plain).attest()  # no batch, no broker name: neither is claimed
    assert set(plain.sent[1][1]["runtime_data"]) == {"nonce", "tee_pubkey", "receipt_pubkey"}  # type: ignore[index]


def test_the_tee_announced_is_the_callers_else_the_providers(env: Env) -> None:
    relay = Relay(env)
    with pytest.raises(KbsError):
        _session(env, relay, tee="tdx").attest()  # the broker then expects a TDX quote: refused
    assert relay.sent[0][1] == {"tee": "tdx"}


class _Delegate:
    """An evidence provider that does not say which TEE it is (no `tee` attribute)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def get_evidence(self, report_data: bytes) -> Evidence:
        return self._inner.get_evidence(report_data)  # type: ignore[no-any-return]


def test_the_tee_announced_is_the_providers_own_else_sev_snp(env: Env) -> None:
    provider = env.enclave()
    provider.tee = "tdx"  # a TDX guest's provider: the announcement follows it
    named = Relay(env)
    client = httpx.Client(base_url="http://testserver", transport=httpx.MockTransport(named))
    with pytest.raises(KbsError):
        AttestedSession("http://testserver", provider, client=client).attest()  # SEV-SNP evidence for "tdx": refused
    assert named.sent[0][1] == {"tee": "tdx"}
    unnamed = Relay(env)
    client = httpx.Client(base_url="http://testserver", transport=httpx.MockTransport(unnamed))
    result = AttestedSession("http://testserver", _Delegate(env.enclave()), client=client).attest()
    assert unnamed.sent[0][1] == {"tee": "sev-snp"} and result.claims["measurement"] == GOOD


def _answer_rewritten(change: Callable[[dict[str, Any]], dict[str, Any]]) -> Rewrite:
    def rewrite(request: httpx.Request, response: httpx.Response) -> httpx.Response:
        if request.url.path == "/kbs/v0/attest" and response.status_code == 200:
            return httpx.Response(200, json=change(response.json()))
        return response

    return rewrite


def _digest(claims: Any) -> str:
    return hashlib.sha256(canonical_json(claims)).hexdigest()


@pytest.mark.parametrize("change", ["stripped", "emptied", "measurement changed"])
def test_an_attest_answer_whose_claims_are_not_its_tokens_is_refused(env: Env, change: str) -> None:
    """The platform rewrites the broker's answer on the way (a plain-HTTP loopback relay): the token, which the
    broker checks on each use, still works, so the worker would note for the batch a claims digest the broker
    never logged. It refuses the answer instead, and keeps no attestation."""
    signed: list[dict[str, Any]] = []

    def rewritten(answer: dict[str, Any]) -> dict[str, Any]:
        signed.append(answer["claims"])
        if change == "stripped":
            return {k: v for k, v in answer.items() if k != "claims"}
        claims = {} if change == "emptied" else {**answer["claims"], "measurement": "00" * 48}
        return {**answer, "claims": claims}

    session = _session(env, Relay(env, _answer_rewritten(rewritten)))
    with pytest.raises(KbsError) as refused:
        session.attest("batch-1")
    actual = {"stripped": None, "emptied": {}}.get(change, {**signed[0], "measurement": "00" * 48})
    assert (refused.value.status, refused.value.problem["field"], refused.value.problem["expected"],
            refused.value.problem["actual"]) == (502, "claims", _digest(signed[0]), _digest(actual))
    assert refused.value.problem["detail"] == ("the attest answer's claims are not those its token carries "
                                               "(rewritten on the way?); attest again over a connection the "
                                               "platform cannot rewrite (TLS)")
    assert session.runtime_data is None and session.claims_digests("batch-1") == ()


def test_an_attest_answer_whose_token_is_no_jwt_with_claims_is_refused(env: Env) -> None:
    session = _session(env, Relay(env, _answer_rewritten(lambda answer: {**answer, "token": "not-a-jwt"})))
    with pytest.raises(KbsError) as refused:
        session.attest("batch-1")
    assert (refused.value.status, refused.value.problem["field"]) == (502, "token")
    assert str(refused.value) == "broker answered 502: the attest answer's token is not a JWT carrying claims " \
                                 "(field token)"


def test_the_claims_kept_are_the_tokens_and_their_digest_the_one_the_broker_logged(env: Env) -> None:
    session = _session(env, Relay(env))
    result = session.attest("batch-1")
    payload = json.loads(base64.urlsafe_b64decode(result.token.split(".")[1] + "=="))
    assert result.claims == payload["claims"] and result.claims["measurement"] == GOOD
    assert result.claims_digest == payload["claims_digest"] == _digest(payload["claims"])


def test_an_attestation_is_logged_with_the_broker_measurement_and_expiry_never_the_token(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    session = _session(env, Relay(env))
    with caplog.at_level(logging.INFO, logger="enclave.kbs_client"):
        result = session.attest("batch-1")
    assert [r.getMessage() for r in caplog.records if r.name == "enclave.kbs_client"] == [
        f"attested to http://testserver, measurement {GOOD}, token valid until {result.expires_at}"]
    assert result.token not in caplog.text


def test_a_release_gives_the_key_and_its_version_and_an_unwrap_the_key(env: Env) -> None:
    session = _session(env, Relay(env))
    key, version = session.release("results-1", batch_id="batch-1", model_digest="sha256:m")
    assert len(key) == 32 and version == 1 and isinstance(version, int)
    assert session.unwrap("data-1", env.admin.wrap("data-1", b"D" * 16), batch_id="batch-1",
                          model_digest="sha256:m") == b"D" * 16


def test_an_answer_encrypted_with_another_algorithm_than_the_brokers_is_refused(env: Env) -> None:
    """The platform re-encrypts a release to the worker's public tee key under ECDH-ES+A128KW / A128GCM: the
    client takes ECDH-ES+A256KW with A256GCM only, as the broker sends."""
    captured: list[AttestedSession] = []

    def swap(request: httpx.Request, response: httpx.Response) -> httpx.Response:
        if request.url.path != "/kbs/v0/release":
            return response
        from joserfc.jwk import ECKey

        tee = ECKey.import_key(captured[0].tee_public_jwk)
        token = jwe.encrypt_compact({"alg": "ECDH-ES+A128KW", "enc": "A128GCM"},
                                    json.dumps({"key": base64.b64encode(b"P" * 32).decode(), "version": 1}), tee,
                                    algorithms=["ECDH-ES+A128KW", "A128GCM"])
        return httpx.Response(200, json={"jwe": token})

    session = _session(env, Relay(env, swap))
    captured.append(session)
    with pytest.raises(JoseError) as refused:
        session.release("results-1", batch_id="batch-1", model_digest="sha256:m")
    assert "ECDH-ES+A128KW" in str(refused.value) or "A128GCM" in str(refused.value)


def _expired_then(times: int, kind: str = "https://cscore/problems/token-expired") -> Rewrite:
    """The broker's unwrap answered `times` times with a 401 of problem type `kind`, then as it is."""
    left = [times]

    def rewrite(request: httpx.Request, response: httpx.Response) -> httpx.Response:
        if request.url.path == "/kbs/v0/unwrap" and left[0] > 0:
            left[0] -= 1
            return httpx.Response(401, json={"type": kind, "detail": "token expired"})
        return response

    return rewrite


def test_an_expired_token_is_renewed_once_and_the_request_sent_again(env: Env) -> None:
    relay = Relay(env, _expired_then(1))
    session = _session(env, relay)
    wrapped = env.admin.wrap("data-1", b"D" * 16)
    assert session.unwrap("data-1", wrapped, batch_id="batch-1", model_digest="sha256:m") == b"D" * 16
    assert relay.paths() == ["/kbs/v0/auth", "/kbs/v0/attest", "/kbs/v0/unwrap",
                             "/kbs/v0/auth", "/kbs/v0/attest", "/kbs/v0/unwrap"]
    assert relay.sent[4][1]["runtime_data"]["batch_id"] == "batch-1"  # type: ignore[index]  # renewed for it


def test_a_token_expired_twice_or_refused_otherwise_is_the_brokers_refusal(env: Env) -> None:
    wrapped = env.admin.wrap("data-1", b"D" * 16)
    twice = Relay(env, _expired_then(2))
    with pytest.raises(KbsError) as refused:
        _session(env, twice).unwrap("data-1", wrapped, batch_id="batch-1", model_digest="sha256:m")
    assert refused.value.status == 401 and refused.value.type.endswith("token-expired")
    assert twice.paths().count("/kbs/v0/unwrap") == 2 and twice.paths().count("/kbs/v0/attest") == 2
    other = Relay(env, _expired_then(1, "https://cscore/problems/pop-replayed"))
    with pytest.raises(KbsError) as refused:
        _session(env, other).unwrap("data-1", wrapped, batch_id="batch-1", model_digest="sha256:m")
    assert refused.value.type == "https://cscore/problems/pop-replayed"
    assert other.paths() == ["/kbs/v0/auth", "/kbs/v0/attest", "/kbs/v0/unwrap"]  # not attested again


@pytest.mark.parametrize(("left_s", "attests"), [(15, 2), (16, 1)])
def test_a_token_about_to_expire_is_renewed_before_use(env: Env, monkeypatch: pytest.MonkeyPatch, left_s: int,
                                                       attests: int) -> None:
    """Renewed when it has 15 s or less left (REFRESH_MARGIN_S): it must not die mid-request. The client's clock
    stands still (the broker's runs on), so the margin is hit to the second."""
    from enclave import kbs_client

    now = float(int(time.time()))
    monkeypatch.setattr(kbs_client, "time", type("Clock", (), {"time": staticmethod(lambda: now)}))

    def expiring(request: httpx.Request, response: httpx.Response) -> httpx.Response:
        if request.url.path == "/kbs/v0/attest" and response.status_code == 200:
            return httpx.Response(200, json={**response.json(), "expires_at": int(now) + left_s})
        return response

    relay = Relay(env, expiring)
    session = _session(env, relay)
    session.attest("batch-1")
    session.release("results-1", batch_id="batch-1", model_digest="sha256:m")
    assert relay.paths().count("/kbs/v0/attest") == attests


def test_each_request_carries_a_proof_of_possession_of_the_tee_key_over_it(env: Env) -> None:
    from joserfc import jwt
    from joserfc.jwk import ECKey

    from enclave.kbs_client import POP_HEADER, _b64url

    relay = Relay(env)
    session = _session(env, relay)
    session.release("results-1", batch_id="batch-1", model_digest="sha256:m")
    request = relay.requests[-1]
    token = request.headers["authorization"].removeprefix("Bearer ")
    proof = jwt.decode(request.headers[POP_HEADER], ECKey.import_key(session.tee_public_jwk), algorithms=["ES256"])
    assert proof.header == {"alg": "ES256", "typ": "kbs-pop+jwt"}
    assert {k: proof.claims[k] for k in ("htm", "htu", "ath", "bh")} == {
        "htm": "POST", "htu": "/kbs/v0/release", "ath": _b64url(hashlib.sha256(token.encode()).digest()),
        "bh": _b64url(hashlib.sha256(request.content).digest())}
    assert abs(proof.claims["iat"] - time.time()) < 60 and len(proof.claims["jti"]) >= 20


def test_base64url_is_unpadded_whatever_the_last_character() -> None:
    from enclave.kbs_client import _b64url

    assert (_b64url(b"\x00\x00\x17"), _b64url(b"\xff"), _b64url(b"\xfb\xff")) == ("AAAX", "_w", "-_8")


def test_each_batch_remembers_the_claims_digests_its_requests_carried(env: Env) -> None:
    session = _session(env, Relay(env))
    result = session.attest("batch-1")
    assert session.claims_digests("batch-1") == ()  # attested for it, no request yet
    session.release("results-1", batch_id="batch-1", model_digest="sha256:m")
    assert session.claims_digests("batch-1") == (result.claims_digest,)
    assert result.claims_digest == hashlib.sha256(canonical_json(result.claims)).hexdigest()
    session._note_use("batch-1", "0" * 64)  # a renewed token's digest: both kept, sorted
    assert session.claims_digests("batch-1") == ("0" * 64, result.claims_digest)
    for i in range(BATCHES_REMEMBERED - 1):
        session._note_use(f"b{i}", "1" * 64)
    session._note_use("batch-1", "2" * 64)  # used again: the newest, kept
    session._note_use("one-more", "3" * 64)
    assert BATCHES_REMEMBERED == 64 and session.claims_digests("b0") == () and session.claims_digests("b1")
    # sorted, wherever the random attestation's digest falls among the three
    assert session.claims_digests("batch-1") == tuple(sorted(("0" * 64, "2" * 64, result.claims_digest)))


def test_a_refusal_names_the_field_expected_and_actual_cut_at_400_characters() -> None:
    problem = {"detail": "grant refused", "field": "measurement", "expected": ["ab" * 300], "actual": "cd"}
    error = KbsError(403, problem)
    shown = json.dumps(["ab" * 300])[:400] + "..."
    assert str(error) == f'broker answered 403: grant refused (field measurement; expected {shown}; actual "cd")'
    assert (error.status, error.problem, error.type) == (403, problem, "")
    assert str(KbsError(400, {"type": "t", "detail": "bad", "field": "f"})) == "broker answered 400: bad (field f)"
    assert str(KbsError(500, {"title": "x"})) == "broker answered 500: {'title': 'x'}"
    exact = {"detail": "d", "field": "f", "actual": "x" * 398}  # 400 characters as JSON: shown whole
    assert str(KbsError(403, exact)) == f'broker answered 403: d (field f; actual "{"x" * 398}")'


def test_a_refusal_that_is_no_problem_document_is_shown_as_its_text() -> None:
    assert problem_of(httpx.Response(502, text="<html>" + "x" * 600)) == {"detail": "<html>" + "x" * 494}
    assert problem_of(httpx.Response(403, json=["not", "an", "object"])) == {"detail": "['not', 'an', 'object']"}
    assert problem_of(httpx.Response(403, json={"detail": "d"})) == {"detail": "d"}


def test_an_answer_that_is_not_json_is_a_refusal_without_a_type(env: Env) -> None:
    def garbled(request: httpx.Request, response: httpx.Response) -> httpx.Response:
        return httpx.Response(401, text="not json") if request.url.path == "/kbs/v0/unwrap" else response

    relay = Relay(env, garbled)
    with pytest.raises(KbsError) as refused:
        _session(env, relay).unwrap("data-1", b"w", batch_id="batch-1", model_digest="sha256:m")
    assert (refused.value.status, refused.value.type, str(refused.value)) == (401, "", "broker answered 401: not json")
    assert relay.paths().count("/kbs/v0/unwrap") == 1


def test_a_broker_that_does_not_answer_is_named_once_with_what_to_do() -> None:
    sent: list[str] = []

    def refused(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        raise httpx.ConnectError("connection refused")

    client = httpx.Client(base_url="http://127.0.0.1:9", transport=httpx.MockTransport(refused))
    session = AttestedSession("http://127.0.0.1:9/", _NoTee(), client=client)
    with pytest.raises(BrokerUnreachable) as unreachable:
        session.attest()
    assert str(unreachable.value) == ("the key broker at http://127.0.0.1:9 did not answer (ConnectError: connection "
                                      "refused); check that it runs and that this worker can reach it, then resubmit "
                                      "the batch")
    assert unreachable.value.status == 0 and sent == ["/kbs/v0/auth"]  # not sent again: only a reused connection is
    assert unreachable.value.problem == {"detail": "the key broker at http://127.0.0.1:9 did not answer (ConnectError)"}
    assert repr(session) == "AttestedSession('http://127.0.0.1:9', attested=False)"


class _NoTee:
    """A provider that is never asked: the broker never answers."""

    def get_evidence(self, report_data: bytes) -> Evidence:
        raise AssertionError("no evidence without a challenge")


def test_a_model_grant_is_the_owner_brokers_signed_grant_for_this_session_key(env: Env) -> None:
    from joserfc.jwk import ECKey

    from wire.grant import verify_grant

    relay = Relay(env)
    session = _session(env, relay)
    token = session.model_grant(batch_id="batch-1", model_digest="sha256:m")
    assert relay.sent[-1][:2] == ("/kbs/v0/model-grant", {"batch_id": "batch-1", "model_digest": "sha256:m"})
    grant = verify_grant(token, {"owner": env.admin.grant_key()}, now=time.time())
    assert (grant.batch_id, grant.model_digest, grant.measurement) == ("batch-1", "sha256:m", GOOD)
    assert grant.tee_key == ECKey.import_key(session.tee_public_jwk).thumbprint()
    assert session.claims_digests("batch-1") == (session.current().claims_digest,)


def test_a_resource_is_fetched_from_its_repository_type_and_tag_for_no_batch(env: Env) -> None:
    env.admin.put_resource("cscore", "config", "v1", b"resource-value", measurements=[GOOD])
    relay = Relay(env)
    session = _session(env, relay)
    assert session.resource("cscore", "config", "v1") == b"resource-value"
    request = relay.requests[-1]
    assert (request.method, request.url.path, request.content) == ("GET", "/kbs/v0/resource/cscore/config/v1", b"")
    assert "content-type" not in request.headers and request.headers["authorization"].startswith("Bearer ")
    assert session.runtime_data is not None and "batch_id" not in session.runtime_data  # attested for no batch
    assert session._used == {}
    with pytest.raises(KbsError):  # an unwrap naming no batch: refused by the broker, and no batch claimed
        _session(env, relay).unwrap("data-1", b"w", batch_id="", model_digest="sha256:m")
    assert "batch_id" not in relay.sent[-2][1]["runtime_data"]  # type: ignore[index]


def test_a_pinned_broker_is_reached_over_https_with_the_pinned_ca_only(tmp_path: Path) -> None:
    import ssl

    from enclave.kbs_client import broker_tls
    from keybroker.tls import create_local_ca

    ca, _ = create_local_ca(tmp_path / "ca")
    pem = ca.read_text()
    with pytest.raises(ValueError) as refused:
        broker_tls("http://127.0.0.1:1", ca_pem=pem)  # loopback or not: the pin means TLS
    assert str(refused.value) == "broker URL 'http://127.0.0.1:1': a pinned broker is reached over https only"
    context = broker_tls("https://kbs.owner.example", "/nonexistent/bundle.pem", ca_pem=pem)  # the pin wins
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    pinned = ssl.create_default_context(cadata=pem).get_ca_certs()
    assert context.get_ca_certs() == pinned and len(pinned) == 1  # the pinned CA only, not the system roots


@pytest.mark.parametrize(("url", "shown"), [("http://KBS.Owner.example:8080/x", "kbs.owner.example"),
                                           ("http:///kbs", "")])
def test_plain_http_off_loopback_is_refused_naming_the_host(url: str, shown: str) -> None:
    from enclave.kbs_client import broker_tls

    with pytest.raises(ValueError) as refused:
        broker_tls(url)
    assert str(refused.value) == (f"refusing plain HTTP to {shown!r}: broker URLs must be https:// unless the host is "
                                  "loopback (127.0.0.1, ::1, localhost)")
    assert broker_tls("http://LocalHost:1") is True  # loopback whatever the case


def test_the_ca_bundle_is_the_argument_else_the_environments_else_the_system_roots(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ssl

    from enclave.kbs_client import CA_ENV, broker_tls
    from keybroker.tls import create_local_ca

    ca, _ = create_local_ca(tmp_path / "ca")
    local = ssl.create_default_context(cafile=str(ca)).get_ca_certs()
    monkeypatch.setenv(CA_ENV, str(ca))
    from_env = broker_tls("https://kbs.owner.example")
    assert isinstance(from_env, ssl.SSLContext) and from_env.get_ca_certs() == local
    monkeypatch.setenv(CA_ENV, str(tmp_path / "gone.pem"))
    argument = broker_tls("https://kbs.owner.example", ca)  # the argument first
    assert isinstance(argument, ssl.SSLContext) and argument.get_ca_certs() == local
    with pytest.raises(FileNotFoundError) as missing:
        broker_tls("https://kbs.owner.example")
    assert str(missing.value) == (f"broker CA bundle {str(tmp_path / 'gone.pem')!r} does not exist (argument or "
                                  f"${CA_ENV})")
    monkeypatch.setenv(CA_ENV, "")  # set but empty: the system roots
    assert broker_tls("https://kbs.owner.example") is True


def test_an_unwrap_sends_the_model_grant_only_when_there_is_one(env: Env) -> None:
    relay = Relay(env)
    session = _session(env, relay)
    wrapped = env.admin.wrap("data-1", b"D" * 16)
    session.unwrap("data-1", wrapped, batch_id="batch-1", model_digest="sha256:m")
    assert relay.sent[-1][:2] == ("/kbs/v0/unwrap", {"key_id": "data-1", "wrapped": base64.b64encode(wrapped).decode(),
                                                     "batch_id": "batch-1", "model_digest": "sha256:m"})
    session.unwrap("data-1", wrapped, batch_id="batch-1", model_digest="sha256:m", grant="g")  # a data key's: unused
    assert relay.sent[-1][1]["grant"] == "g"  # type: ignore[index]



def test_a_session_of_its_own_verifies_the_pinned_ca_and_gives_up_after_30_s(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a caller's client, the session's own: TLS by `broker_tls` (the pinned CA only, else the CA bundle it
    was given), a 30 s timeout, the URL without its trailing slash (requests are made on paths under it)."""
    import ssl

    from enclave.kbs_client import CA_ENV
    from keybroker.tls import create_local_ca

    ca, _ = create_local_ca(tmp_path / "ca")
    session = AttestedSession("https://kbs.owner.example/brokerX/", _NoTee(), ca_pem=ca.read_text())
    assert session.broker_url == "https://kbs.owner.example/brokerX"
    assert session._http.timeout == httpx.Timeout(30.0)
    context = session._http._transport._pool._ssl_context  # type: ignore[attr-defined]  # httpx's own
    assert context.get_ca_certs() == ssl.create_default_context(cadata=ca.read_text()).get_ca_certs()
    assert (session.runtime_data, session.evidence) == (None, None)  # nothing attested yet
    session.close()
    monkeypatch.delenv(CA_ENV, raising=False)
    bundled = AttestedSession("https://kbs.owner.example", _NoTee(), ca_bundle=ca)
    context = bundled._http._transport._pool._ssl_context  # type: ignore[attr-defined]
    assert context.get_ca_certs() == ssl.create_default_context(cafile=str(ca)).get_ca_certs()
    bundled.close()
