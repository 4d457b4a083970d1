"""Worker-side client of a key broker: attest once, then unwrap / wrap / fetch with a short-lived token.

Runs inside the CVM, so it imports only stdlib, httpx, joserfc, cryptography and attestation. Keys it
receives exist only in memory and are never logged.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets
import ssl
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from joserfc import jwe, jwt
from joserfc.jwk import ECKey

from wire.canonical import canonical_json
from wire.endpoint import is_loopback
from wire.pop import POP_HEADER, POP_TYPE

if TYPE_CHECKING:
    from collections.abc import Callable

    from attestation import Evidence

log = logging.getLogger("enclave.kbs_client")
REFRESH_MARGIN_S = 15  # re-attest this long before expiry, so a token never dies mid-request
JWE_ALGS = ["ECDH-ES+A256KW", "A256GCM"]
SHOWN_CHARS = 400  # of a refusal's expected / actual value in an error message
CA_ENV = "CSCORE_BROKER_CA"  # PEM bundle of the CA(s) broker certificates chain to (the local stack's CA)
BATCHES_REMEMBERED = 64  # batches whose claims digests a session keeps for their receipts (a worker keeps 8 batches)


class EvidenceProvider(Protocol):
    """What `enclave.tee` providers offer: evidence whose report_data is the 64 bytes given."""

    def get_evidence(self, report_data: bytes) -> Evidence: ...


class KbsError(RuntimeError):
    """The broker refused or failed; `problem` is its RFC 7807 document (detail, field, expected, actual)."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.type = str(problem.get("type", ""))
        super().__init__(f"broker answered {status}: {problem.get('detail', problem)}{_failing_field(problem)}")


def _failing_field(problem: dict[str, Any]) -> str:
    """The problem's field, expected and actual value: why a refusal happened, not only which clause (the
    broker puts only shareable values there: claims, digests, key ids, reasons)."""
    if "field" not in problem:
        return ""
    shown = {k: (v if len(v := json.dumps(problem[k], default=str)) <= SHOWN_CHARS else v[:SHOWN_CHARS] + "...")
             for k in ("expected", "actual") if k in problem}
    return f" (field {problem['field']}" + "".join(f"; {k} {v}" for k, v in shown.items()) + ")"


class BrokerUnreachable(KbsError):
    """No answer from a key broker at all (refused, reset, timed out, TLS failed): names whose broker it is,
    its URL and what to do. Carries no secret, so the platform may see it."""

    def __init__(self, party: str, url: str, exc: httpx.TransportError, *, caller: str = "this worker",
                 then: str = "resubmit the batch") -> None:
        whose = f"the {party}'s key broker" if party else "the key broker"
        super().__init__(0, {"detail": f"{whose} at {url} did not answer ({type(exc).__name__})"})
        self.args = (f"{whose} at {url} did not answer ({type(exc).__name__}: {exc}); check that it runs "
                     f"and that {caller} can reach it, then {then}",)


@dataclass(frozen=True)
class EnclaveKeys:
    """The enclave's ephemeral key pairs, one set per worker process, shared by all its broker sessions:
    releases are encrypted to `tee_key`, receipts and usage records signed by `receipt_key`. A model grant
    names `tee_key`, so the provider's broker sees the very key the owner's broker granted."""

    tee_key: ECKey = field(default_factory=lambda: ECKey.generate_key("P-256", private=True), repr=False)
    receipt_key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate, repr=False)


@dataclass(frozen=True)
class AttestationResult:
    """A token (useless without the tee private key), its expiry (epoch s), and the broker's claims."""

    token: str = field(repr=False)
    expires_at: int
    claims: dict[str, Any]

    @property
    def claims_digest(self) -> str:
        """SHA-256 hex of the claims' canonical JSON: the digest the broker logs in its decisions."""
        return hashlib.sha256(canonical_json(self.claims)).hexdigest()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def broker_tls(broker_url: str, ca_bundle: str | os.PathLike[str] | None = None, *,
               ca_pem: str | None = None) -> ssl.SSLContext | bool:
    """TLS verification for a broker URL: `ca_pem` (PEM text, the worker's measured pin), else `ca_bundle`,
    else $CSCORE_BROKER_CA, else the system roots.

    Raises ValueError for plain `http://` to a host that is not loopback (and for any `http://` with
    `ca_pem`): keys, tokens and admin credentials never travel unencrypted off the machine.
    """
    if ca_pem is not None:
        if urlsplit(broker_url).scheme != "https":
            raise ValueError(f"broker URL {broker_url!r}: a pinned broker is reached over https only")
        return ssl.create_default_context(cadata=ca_pem)
    parts = urlsplit(broker_url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"broker URL {broker_url!r}: scheme must be https (or http on loopback)")
    if parts.scheme == "http" and not is_loopback(host):
        raise ValueError(f"refusing plain HTTP to {host!r}: broker URLs must be https:// unless the host is "
                         "loopback (127.0.0.1, ::1, localhost)")
    path = ca_bundle if ca_bundle is not None else (os.environ.get(CA_ENV) or None)
    if path is None:
        return True
    if not Path(path).is_file():
        raise FileNotFoundError(f"broker CA bundle {os.fspath(path)!r} does not exist (argument or ${CA_ENV})")
    return ssl.create_default_context(cafile=os.fspath(path))


class AttestedSession:
    """One attested relationship between this enclave and one broker (thread-safe).

    `ca_bundle` (or $CSCORE_BROKER_CA) names the CA the broker's TLS certificate must chain to; plain
    `http://` is accepted only for loopback hosts. A caller-supplied `client` is used as given. `party`
    ("owner", "provider") names whose broker it is in errors. `tee` is the TEE kind announced at
    /kbs/v0/auth, which the broker holds the evidence to; default: the provider's `tee` ("sev-snp" if it has none).
    """

    def __init__(self, broker_url: str, provider: EvidenceProvider, *, tee: str | None = None,
                 timeout_s: float = 30.0, client: httpx.Client | None = None,
                 ca_bundle: str | os.PathLike[str] | None = None, ca_pem: str | None = None,
                 keys: EnclaveKeys | None = None, party: str = "", broker_name: str = "") -> None:
        self.broker_url = broker_url.rstrip("/")
        self.party = party
        self.broker_name = broker_name  # the broker's name in the measured configuration, bound into each attestation
        self._provider = provider
        self._tee = tee
        self._http = client or httpx.Client(base_url=self.broker_url, timeout=timeout_s,
                                            verify=broker_tls(self.broker_url, ca_bundle, ca_pem=ca_pem))
        keys = keys or EnclaveKeys()
        self._tee_key = keys.tee_key
        self.receipt_private_key = keys.receipt_key
        self.runtime_data: dict[str, Any] | None = None
        self.evidence: Evidence | None = None
        self._result: AttestationResult | None = None
        self._used: OrderedDict[str, set[str]] = OrderedDict()  # batch id -> claims digests its requests carried
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AttestedSession({self.broker_url!r}, attested={self._result is not None})"

    @property
    def tee_public_jwk(self) -> dict[str, Any]:
        """The ephemeral public key releases are encrypted to."""
        return self._tee_key.as_dict(private=False)

    @property
    def receipt_public_jwk(self) -> dict[str, Any]:
        """The receipt verification key bound into the evidence."""
        raw = self.receipt_private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw)}

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def attest(self, batch_id: str | None = None) -> AttestationResult:
        """auth -> evidence bound to (nonce, tee key, receipt key, batch) -> attest; stores and returns the token.

        `batch_id`: the batch (or training job) this attestation is made for; the broker logs it with its
        decision, and the evidence binds it (a refused attestation's batch is the requester's word only).
        """
        tee = self._tee or str(getattr(self._provider, "tee", "sev-snp"))
        challenge = self._post_json("/kbs/v0/auth", {"tee": tee})
        runtime_data = {"nonce": challenge["nonce"], "tee_pubkey": self.tee_public_jwk,
                        "receipt_pubkey": self.receipt_public_jwk}
        if batch_id:
            runtime_data["batch_id"] = batch_id
        if self.broker_name:  # the broker refuses a worker that knows it by another name (a relay's)
            runtime_data["broker"] = self.broker_name
        evidence = self._provider.get_evidence(hashlib.sha512(canonical_json(runtime_data)).digest())
        answer = self._post_json("/kbs/v0/attest", {"session": challenge["session"], "runtime_data": runtime_data,
                                                    "evidence": evidence.to_json()})
        result = AttestationResult(answer["token"], int(answer["expires_at"]), _signed_claims(answer))
        with self._lock:
            self.runtime_data, self.evidence, self._result = runtime_data, evidence, result
        log.info("attested to %s, measurement %s, token valid until %d", self.broker_url,
                 result.claims.get("measurement"), result.expires_at)
        return result

    def unwrap(self, key_id: str, wrapped: bytes, *, batch_id: str, model_digest: str,
               grant: str | None = None) -> bytes:
        """Ask the broker to unwrap `wrapped` under `key_id`; returns the key (kept in memory only).

        `grant`: for a model key, the owner broker's model grant for this batch (`model_grant`).
        """
        body: dict[str, Any] = {"key_id": key_id, "wrapped": base64.b64encode(wrapped).decode(),
                                "batch_id": batch_id, "model_digest": model_digest}
        if grant is not None:
            body["grant"] = grant
        return self._open(self._authorized("POST", "/kbs/v0/unwrap", body)["jwe"])

    def release(self, key_id: str, *, batch_id: str, model_digest: str) -> tuple[bytes, int]:
        """A batch's result key (its newest version), released to this attested session: (key, version)."""
        body = {"key_id": key_id, "batch_id": batch_id, "model_digest": model_digest}
        released = json.loads(self._open(self._authorized("POST", "/kbs/v0/release", body)["jwe"]))
        return base64.b64decode(released["key"]), int(released["version"])

    def model_grant(self, *, batch_id: str, model_digest: str) -> str:
        """The owner broker's signed model grant for this batch and this session (to show the provider)."""
        body = {"batch_id": batch_id, "model_digest": model_digest}
        return str(self._authorized("POST", "/kbs/v0/model-grant", body)["grant"])

    def resource(self, repository: str, type_: str, tag: str) -> bytes:
        """Fetch a stored resource released to this enclave."""
        return self._open(self._authorized("GET", f"/kbs/v0/resource/{repository}/{type_}/{tag}", None)["jwe"])

    def claims_digests(self, batch_id: str) -> tuple[str, ...]:
        """Claims digests of the attested tokens this session's requests for `batch_id` carried, sorted
        (empty when none named it, or it is older than the last BATCHES_REMEMBERED batches)."""
        with self._lock:
            return tuple(sorted(self._used.get(batch_id, ())))

    # -- internals --------------------------------------------------------------------------------
    def current(self, batch_id: str | None = None) -> AttestationResult:
        """This session's attestation, renewed first (for `batch_id`) if it is missing or about to expire."""
        with self._lock:
            result = self._result
        if result is None or result.expires_at - REFRESH_MARGIN_S <= time.time():
            result = self.attest(batch_id)
        return result

    def _authorized(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        """Send with token + proof of possession; on an expired token, attest again once."""
        for attempt in (1, 2):
            named = str(body.get("batch_id") or "") if body is not None else ""
            result = self.current(named or None)  # a (re-)attestation names the batch that needed it
            token = result.token
            if named:
                self._note_use(named, result.claims_digest)
            content = canonical_json(body) if body is not None else b""

            def headers(token: str = token, content: bytes = content) -> dict[str, str]:
                signed = {"Authorization": f"Bearer {token}", POP_HEADER: self._pop(token, method, path, content)}
                return signed | ({"Content-Type": "application/json"} if body is not None else {})

            response = self._send(method, path, content, headers)
            if response.status_code == 401 and attempt == 1 and _problem_type(response).endswith("token-expired"):
                with self._lock:
                    self._result = None
                continue
            return _json_or_raise(response)
        raise AssertionError("unreachable")

    def _note_use(self, batch_id: str, digest: str) -> None:
        with self._lock:
            self._used.setdefault(batch_id, set()).add(digest)
            self._used.move_to_end(batch_id)
            while len(self._used) > BATCHES_REMEMBERED:
                self._used.popitem(last=False)

    def _pop(self, token: str, method: str, path: str, content: bytes) -> str:
        """Proof of possession: a JWS by the tee key over this request."""
        claims = {"htm": method, "htu": path, "iat": int(time.time()), "jti": secrets.token_urlsafe(16),
                  "ath": _b64url(hashlib.sha256(token.encode()).digest()),
                  "bh": _b64url(hashlib.sha256(content).digest())}
        return jwt.encode({"alg": "ES256", "typ": POP_TYPE}, claims, self._tee_key, algorithms=["ES256"])

    def _open(self, token: str) -> bytes:
        return jwe.decrypt_compact(token, self._tee_key, algorithms=JWE_ALGS).plaintext or b""

    def _post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return _json_or_raise(self._send("POST", path, canonical_json(body),
                                         lambda: {"Content-Type": "application/json"}))

    def _send(self, method: str, path: str, content: bytes,
              headers: Callable[[], dict[str, str]]) -> httpx.Response:
        """One request; sent once more, on a new connection with fresh headers (a new PoP jti), when the
        broker or a proxy closed a kept-alive connection as it was reused (RemoteProtocolError, no answer).

        Raises BrokerUnreachable for any other transport failure, or a second closed connection.
        """
        for attempt in (1, 2):
            try:
                return self._http.request(method, path, content=content, headers=headers())
            except httpx.RemoteProtocolError as exc:
                if attempt == 1:
                    log.info("the %s broker at %s closed a kept-alive connection unanswered; sending again",
                             self.party or "key", self.broker_url)
                    continue
                error = BrokerUnreachable(self.party, self.broker_url, exc)
            except httpx.TransportError as exc:
                error = BrokerUnreachable(self.party, self.broker_url, exc)
            raise error  # outside the handler: the original's context stays out of what the platform sees
        raise AssertionError("unreachable")


def _problem_type(response: httpx.Response) -> str:
    try:
        return str(response.json().get("type", ""))
    except ValueError:
        return ""


def problem_of(response: httpx.Response) -> dict[str, Any]:
    """A refusal's problem details (RFC 9457 JSON object); a body that is not one becomes {"detail": text}."""
    try:
        problem = response.json()
    except ValueError:
        return {"detail": response.text[:500]}
    return problem if isinstance(problem, dict) else {"detail": str(problem)}


def _signed_claims(answer: dict[str, Any]) -> dict[str, Any]:
    """The answer's claims, which must be those its token carries: the broker checks the token's signature on
    every use, while a relay could rewrite the answer's copy (the worker records its digest for the audit).

    Raises KbsError (status 502, field `claims`, expected and actual digests) when they differ.
    """
    try:
        payload = json.loads(base64.urlsafe_b64decode(answer["token"].split(".")[1] + "=="))
        signed = payload["claims"]
    except (ValueError, IndexError, KeyError, TypeError, AttributeError) as exc:
        raise KbsError(502, {"detail": "the attest answer's token is not a JWT carrying claims",
                             "field": "token"}) from exc
    claims = answer.get("claims")
    if claims != signed:
        raise KbsError(502, {"detail": "the attest answer's claims are not those its token carries (rewritten on "
                             "the way?); attest again over a connection the platform cannot rewrite (TLS)",
                             "field": "claims", "expected": hashlib.sha256(canonical_json(signed)).hexdigest(),
                             "actual": hashlib.sha256(canonical_json(claims)).hexdigest()})
    return dict(signed)


def _json_or_raise(response: httpx.Response) -> dict[str, Any]:
    if response.is_success:
        return response.json()
    raise KbsError(response.status_code, problem_of(response))
