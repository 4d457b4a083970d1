"""The key broker's FastAPI application: KBS-shaped attestation and key release, plus the admin API."""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request, Response
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from keybroker import models as m
from keybroker.config import BrokerConfig
from keybroker.crypto import (
    UnwrapError,
    b64decode_any,
    canonical_json,
    decrypt_from,
    encrypt_to,
    public_jwk,
    sha256_hex,
    unwrap_key,
    wrap_key,
    wrapped_version,
)
from keybroker.metrics import METRICS_MEDIA_TYPE, BrokerMetrics, MetricsMiddleware
from keybroker.middleware import LimitsMiddleware
from keybroker.policy import PolicyEngine, PolicyError
from keybroker.problems import Problem, install_handlers
from keybroker.sessions import NonceError, SessionTable
from keybroker.store import KeyRecord, KeyStore, QuotaExceeded, StoreError
from keybroker.tokens import POP_HEADER, TokenIssuer, TokenRejected
from keybroker.verifier import EvidenceRejected, Verifier, attestation_verifier, report_data_for
from wire import owner_unwrap
from wire.decision_log import CHECKPOINT_TYPE
from wire.errors import FormatError
from wire.grant import GRANT_TTL_S, ModelGrant, sign_grant, verify_grant
from wire.worker_config import config_digest_from_claims

log = logging.getLogger("keybroker")
MAX_KEY_BYTES = 1024
FLOOR = frozenset({"min_tcb", "chip_ids"})  # per-key platform floor (keybroker.policy.PLATFORM_CLAUSES)
SETTINGS = FLOOR | {"quota"}  # and a model key's row quota per owner
KBS = "/kbs/v0"
ADMIN = "/admin/v0"


def _ec_key_from_store(store: KeyStore, name: str) -> ECKey:
    """A P-256 broker key pair kept sealed in the store, so a restart keeps tokens and JWEs valid."""
    pem = store.broker_secret(name, lambda: ECKey.generate_key("P-256", private=True).as_pem(private=True))
    return ECKey.import_key(pem)


class Broker:
    """State of one running broker; route handlers are thin wrappers around its methods."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.store = KeyStore(config.store_target, config.load_kek())
        self.admin_token = config.load_admin_token()
        self.engine = PolicyEngine()
        self.sessions = SessionTable(config.nonce_ttl_s, config.max_sessions)
        self.issuer = TokenIssuer(_ec_key_from_store(self.store, "token-signing"), config.name, config.token_ttl_s)
        self.transport_key = _ec_key_from_store(self.store, "key-transport")
        self.grant_key = _ec_key_from_store(self.store, "grant-signing")  # signs model grants for providers
        self._verifier: Verifier | None = None
        self.metrics = BrokerMetrics(config.name, self.store.backend)
        self.metrics_token = config.load_metrics_token()

    def verifier(self) -> Verifier:
        """The evidence verifier, built on first use (the attestation library loads lazily)."""
        if self._verifier is None:
            try:
                self._verifier = attestation_verifier(self.config.trusted_roots_dir, self.config.accept_simulated)
            except (ImportError, ValueError, OSError) as exc:
                raise Problem(503, "verifier-unavailable", f"cannot verify evidence: {exc}") from exc
        return self._verifier

    def decide(self, *, decision: str, operation: str, reason: str, key_id: str | None = None,
               batch_id: str | None = None, model_digest: str | None = None,
               claims: dict[str, Any] | None = None, clause: str = "admin") -> None:
        """Append to the decision log, count it (`clause`: the deciding rule's name, a metric label) and say it
        on stderr (never any key bytes)."""
        entry = self.store.log_decision(
            operation=operation, key_id=key_id, batch_id=batch_id, model_digest=model_digest, decision=decision,
            reason=reason, claims_digest=sha256_hex(canonical_json(claims)) if claims else None,
            measurement=(claims or {}).get("measurement"))
        self.metrics.decision(operation, decision, clause)
        log.info("decision #%s %s %s key=%s batch=%s measurement=%s: %s", entry["seq"], decision, operation,
                 key_id, batch_id, entry["measurement"], reason,
                 extra={"seq": entry["seq"], "decision": decision, "operation": operation, "clause": clause,
                        "key_id": key_id, "batch_id": batch_id, "measurement": entry["measurement"]})

    # -- attestation ------------------------------------------------------------------------------
    def attest(self, req: m.AttestRequest) -> m.AttestResponse:
        """Check the nonce, verify the evidence and its binding, then issue a token.

        The decision is logged with the batch the requester named in runtime_data (`batch_id`): bound by the
        evidence when it is accepted, only the requester's word when it is refused (the audit says which).
        """
        runtime = req.runtime_data.model_dump()
        named, audience = runtime.pop("batch_id", None), runtime.pop("broker", None)
        # Absent from report_data when not sent: older workers' bindings still verify.
        runtime.update({k: v for k, v in (("batch_id", named), ("broker", audience)) if v is not None})
        try:
            session = self.sessions.consume(req.session, req.runtime_data.nonce)
            tee_key, _ = public_jwk(runtime["tee_pubkey"]), runtime["receipt_pubkey"]
        except NonceError as exc:
            self.decide(decision="deny", operation="attest", reason=str(exc), clause="nonce", batch_id=named)
            raise Problem(401, "nonce-invalid", str(exc), field="runtime_data.nonce") from exc
        except (ValueError, JoseError) as exc:
            raise Problem(422, "tee-pubkey-invalid", f"runtime_data.tee_pubkey: {exc}",
                          field="runtime_data.tee_pubkey") from exc
        try:
            claims = self.verifier()(req.evidence, report_data_for(runtime), datetime.now(UTC))
        except EvidenceRejected as exc:
            self.decide(decision="deny", operation="attest", reason=exc.reason, clause="evidence", batch_id=named)
            raise Problem(403, "evidence-rejected", exc.reason, field=exc.field, expected=_jsonable(exc.expected),
                          actual=_jsonable(exc.actual)) from exc
        if claims.get("tee") != session.tee:  # the session was opened for one TEE kind; evidence of another is not it
            reason = (f"evidence is from a '{claims.get('tee')}' TEE, but this session was opened for "
                      f"'{session.tee}' at /kbs/v0/auth")
            self.decide(decision="deny", operation="attest", reason=reason, clause="evidence", batch_id=named)
            raise Problem(403, "evidence-rejected", reason, field="evidence.tee", expected=session.tee,
                          actual=claims.get("tee"))
        if audience is not None and audience != self.config.name:
            # The worker takes whoever answers under that name for this broker: a relay the configuration lists
            # under another name would pass our keys on and answer what it likes (a result key of its own).
            reason = (f"the worker attests to broker '{audience}' of its configuration, this is broker "
                      f"'{self.config.name}': it reached this broker through another name's URL")
            self.decide(decision="deny", operation="attest", reason=reason, clause="evidence", batch_id=named)
            raise Problem(403, "evidence-rejected", reason, field="runtime_data.broker", expected=self.config.name,
                          actual=audience)
        token, exp = self.issuer.issue(claims, tee_key.as_dict(private=False), runtime["receipt_pubkey"])
        self.decide(decision="allow", operation="attest", reason="evidence verified and bound", claims=claims,
                    clause="evidence", batch_id=named)
        return m.AttestResponse(token=token, expires_at=exp, claims=claims)

    def token_payload(self, request: Request, body: bytes, authorization: str | None,
                      pop: str | None) -> dict[str, Any]:
        """Validate bearer token + proof of possession for this exact request."""
        token = _bearer(authorization)
        try:
            payload = self.issuer.check(token)
            self.issuer.check_pop(payload, token or "", pop, request.method, request.url.path, body)
        except TokenRejected as exc:
            raise Problem(401, exc.slug, exc.reason, field=exc.field, expected=exc.expected, actual=exc.actual,
                          headers={"WWW-Authenticate": 'Bearer realm="kbs"'}) from exc
        return payload

    # -- release ----------------------------------------------------------------------------------
    def key_or_404(self, key_id: str, operation: str, **ctx: Any) -> KeyRecord:
        """Fetch a key; an unknown id is a logged refusal."""
        record = self.store.get_key(key_id)
        if record is None:
            reason = f"key '{key_id}' is not held by broker '{self.config.name}'"
            self.decide(decision="deny", operation=operation, reason=reason, key_id=key_id, clause="unknown-key", **ctx)
            raise Problem(404, "unknown-key", reason + " (ask the broker of the key's owner)", field="key_id",
                          actual=key_id)
        return record

    def authorize(self, record: KeyRecord, operation: str, payload: dict[str, Any], batch_id: str,
                  model_digest: str, extra: dict[str, Any] | None = None,
                  owner_grant: tuple[dict[str, Any], str | None] = ({}, None)) -> None:
        """Evaluate the key's policy; refusals are logged and answered 403 with the failing field.

        `owner_grant` is a verified model grant's payload (or `{}`) and, when it did not verify, why.
        """
        claims = payload["claims"]  # logged as attested: the audit joins releases to attestations by its digest
        grant = self.store.get_grant(batch_id) if batch_id else None
        ctx = {
            "claims": {**claims, "config_digest": _config_digest(claims)},
            "request": {"operation": operation, "key_id": record.key_id, "batch_id": batch_id,
                        "model_digest": model_digest, **(extra or {})},
            "grant": grant.as_dict() if grant else {},
            "key": {"key_id": record.key_id, "kind": record.kind, "measurements": record.measurements,
                    "version": record.version, "simulated_allowed": self.config.simulated_allowed(record.key_id),
                    **self.platform_floor(record)},
            "owner_grant": owner_grant[0],
            "owner_grant_error": owner_grant[1] or "",
        }
        verdict = self.engine.evaluate(record.policy, record.kind, ctx)
        self.decide(decision="allow" if verdict.allowed else "deny", operation=operation, reason=verdict.reason,
                    key_id=record.key_id, batch_id=batch_id or None, model_digest=model_digest or None,
                    claims=claims, clause=verdict.clause)
        if not verdict.allowed:
            raise Problem(403, "policy-denied", f"key '{record.key_id}': {verdict.reason}", field=verdict.field,
                          expected=_jsonable(verdict.expected), actual=_jsonable(verdict.actual))

    def platform_floor(self, record: KeyRecord) -> dict[str, Any]:
        """The key's `min_tcb` and `chip_ids`: its own settings where set, else the broker config's."""
        return {"min_tcb": record.settings.get("min_tcb", self.config.min_tcb),
                "chip_ids": record.settings.get("chip_ids", self.config.chip_ids)}

    def unwrap(self, req: m.UnwrapRequest, payload: dict[str, Any]) -> m.JweResponse:
        """Unwrap a DEK for an attested TEE and return it as a JWE to its tee_pubkey.

        A model key also needs `grant`: an owner broker's model grant for this batch, this model and this
        very worker session, from an owner registered here; its rows are metered against the key's quota.
        """
        ctx = {"batch_id": req.batch_id or None, "model_digest": req.model_digest or None}
        record = self.key_or_404(req.key_id, "unwrap", claims=payload["claims"], **ctx)
        owner_grant = self.owner_grant(req, payload) if record.kind == "model" else ({}, None)
        self.authorize(record, "unwrap", payload, req.batch_id, req.model_digest, owner_grant=owner_grant)
        if owner_grant[0]:
            self.meter(record, owner_grant[0])
        key = self._unwrap_bytes(record, req.wrapped)
        return m.JweResponse(jwe=encrypt_to(payload["tee_pubkey"], key))

    def owner_grant(self, req: m.UnwrapRequest, payload: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """The request's model grant, verified and matched to this request and session; else ({}, why)."""
        if not req.grant:
            return {}, "no grant sent"
        try:
            grant = verify_grant(req.grant, self.store.owners(), now=time.time())
        except FormatError as exc:
            return {}, str(exc)
        claims = payload["claims"]
        expected = {"batch_id": req.batch_id, "model_digest": req.model_digest,
                    "measurement": claims.get("measurement"),
                    "config_digest": _config_digest(claims), "tee_key": payload.get("cnf", {}).get("jkt")}
        for name, value in expected.items():
            if getattr(grant, name) != value:
                return {}, f"grant.{name}: expected {value!r} (this request and session), got {getattr(grant, name)!r}"
        return grant.to_json(), None

    def meter(self, record: KeyRecord, grant: dict[str, Any]) -> None:
        """Count the granted batch's rows against the key's quota (`settings.quota`), once per batch."""
        quota = record.settings.get("quota")
        if not quota:
            return
        try:
            used = self.store.meter(grant["issuer"], grant["batch_id"], record.key_id, grant["rows"],
                                    quota=quota["rows"], period_s=quota["period_s"])
        except (QuotaExceeded, ValueError) as exc:  # ValueError: rows below 1, which the grant's parser refuses first
            reason = f"quota: owner {grant['issuer']} {exc}"
            self.decide(decision="deny", operation="unwrap", reason=reason, key_id=record.key_id,
                        batch_id=grant["batch_id"], model_digest=grant["model_digest"], clause="quota")
            if not isinstance(exc, QuotaExceeded):
                raise Problem(403, "policy-denied", f"key '{record.key_id}': {reason}", field="grant.rows",
                              expected="at least 1", actual=grant["rows"]) from None
            raise Problem(429, "quota-exceeded", f"key '{record.key_id}': {reason}; wait for the period to pass "
                          "or ask the provider for a larger quota", field="rows",
                          expected=f"<= {quota['rows'] - exc.used}", actual=exc.rows) from exc
        self.decide(decision="allow", operation="meter", key_id=record.key_id, batch_id=grant["batch_id"],
                    model_digest=grant["model_digest"], clause="quota",
                    reason=f"owner {grant['issuer']}: {grant['rows']} rows, {used} of {quota['rows']} in the period")

    def release(self, req: m.ReleaseRequest, payload: dict[str, Any]) -> m.JweResponse:
        """Release a batch's result key (newest version) to a granted worker, as a JWE to its tee_pubkey.

        The worker wraps result data keys under it itself, so results are never wrapped to a key it has not
        authenticated (DESIGN §4).
        """
        ctx = {"batch_id": req.batch_id or None, "model_digest": req.model_digest or None}
        record = self.key_or_404(req.key_id, "release", claims=payload["claims"], **ctx)
        self.authorize(record, "release", payload, req.batch_id, req.model_digest)
        body = canonical_json({"key": base64.b64encode(record.material).decode(), "version": record.version})
        return m.JweResponse(jwe=encrypt_to(payload["tee_pubkey"], body))

    def model_grant(self, req: m.ModelGrantRequest, payload: dict[str, Any]) -> m.ModelGrantResponse:
        """Sign a model grant for the provider: this batch, this model, this attested worker session."""
        claims = payload["claims"]
        grant = self.store.get_grant(req.batch_id)
        pseudo = KeyRecord(key_id=f"grant:{req.batch_id}", kind="model-grant", policy=None, measurements=[],
                           created=0.0, updated=0.0, versions={1: b""}, settings={})  # no material: signs only
        self.authorize(pseudo, "model-grant", payload, req.batch_id, req.model_digest)
        assert grant is not None  # the batch-granted clause held
        now = int(time.time())
        signed = ModelGrant(issuer=self.config.name, batch_id=req.batch_id, model_digest=req.model_digest,
                            measurement=str(claims.get("measurement")),
                            config_digest=_config_digest(claims),
                            tee_key=str(payload.get("cnf", {}).get("jkt")), rows=grant.rows, issued_at=now,
                            expires_at=now + GRANT_TTL_S)
        return m.ModelGrantResponse(grant=sign_grant(signed, self.grant_key), expires_at=signed.expires_at)

    def wrap(self, req: m.WrapRequest, payload: dict[str, Any]) -> m.WrappedResponse:
        """Wrap a DEK the TEE sent encrypted to the broker's transport key."""
        ctx = {"batch_id": req.batch_id or None, "model_digest": req.model_digest or None}
        record = self.key_or_404(req.key_id, "wrap", claims=payload["claims"], **ctx)
        self.authorize(record, "wrap", payload, req.batch_id, req.model_digest)
        key = self._decrypt_transport(req.key_jwe, "key_jwe")
        return _wrapped(record, key)

    def resource(self, repository: str, type_: str, tag: str, payload: dict[str, Any]) -> m.JweResponse:
        """Release a stored resource (a secret value) as a JWE to the TEE."""
        name = f"{repository}/{type_}/{tag}"
        record = self.key_or_404(resource_key_id(repository, type_, tag), "resource", claims=payload["claims"])
        self.authorize(record, "resource", payload, "", "", {"resource": name})
        return m.JweResponse(jwe=encrypt_to(payload["tee_pubkey"], record.material))

    def _unwrap_bytes(self, record: KeyRecord, wrapped_b64: str) -> bytes:
        """Unwrap with the master-key version the blob names (older versions are kept for this)."""
        try:
            blob = b64decode_any(wrapped_b64)
        except (binascii.Error, ValueError) as exc:
            raise Problem(400, "wrapped-invalid", f"wrapped is not base64: {exc}", field="wrapped") from exc
        named = wrapped_version(blob)
        # A version-1 blob's random nonce starts like a versioned header with probability 2**-32: try both.
        for version in dict.fromkeys((named, 1)):
            if version in record.versions:
                try:
                    return unwrap_key(record.versions[version], record.key_id, blob, version)
                except UnwrapError:
                    continue
        if named not in record.versions:
            raise Problem(400, "wrapped-invalid", f"wrapped names version {named} of key '{record.key_id}', "
                          f"which has versions 1..{record.version}", field="wrapped",
                          expected=f"1..{record.version}", actual=named)
        raise Problem(400, "wrapped-invalid", f"wrapped key does not authenticate under key '{record.key_id}' "
                      f"version {named}; was it wrapped by this broker under this key_id?", field="wrapped")

    def _decrypt_transport(self, token: str, field: str) -> bytes:
        try:
            key = decrypt_from(self.transport_key, token)
        except (JoseError, ValueError) as exc:
            raise Problem(400, "jwe-invalid", f"{field} does not decrypt with the broker key "
                          f"(encrypt to GET {KBS}/broker-key): {type(exc).__name__}", field=field) from exc
        if not 1 <= len(key) <= MAX_KEY_BYTES:
            raise Problem(400, "key-size", f"{field}: key must be 1..{MAX_KEY_BYTES} bytes", field=field,
                          expected=f"1..{MAX_KEY_BYTES}", actual=len(key))
        return key

    # -- operations -------------------------------------------------------------------------------
    def health(self) -> dict[str, str]:
        """Liveness with the database: 503 `store-unavailable` when the key store does not answer."""
        try:
            self.store.ping()
        except StoreError as exc:
            log.error("health check failed: %s", exc, extra={"check": "database"})
            raise Problem(503, "store-unavailable", str(exc), field="database") from exc
        return {"status": "ok", "name": self.config.name, "database": self.store.backend}

    def readiness(self) -> dict[str, str]:
        """Ready to serve attestations: the database answers and the evidence verifier is loaded (trust anchors,
        the attestation library); 503 naming what is not."""
        health = self.health()
        try:
            self.verifier()
        except Problem as exc:
            raise Problem(503, "not-ready", exc.detail, field="verifier") from exc
        return {**health, "status": "ready", "verifier": "loaded"}

    def check_metrics(self, authorization: str | None) -> None:
        """With a metrics token configured, a scrape must present it (constant-time comparison)."""
        if self.metrics_token is None:
            return
        token = _bearer(authorization) or ""
        if not secrets.compare_digest(token.encode(), self.metrics_token.encode()):
            where = getattr(self.config.metrics_token_path, "name", "")
            raise Problem(401, "metrics-unauthorized", "/metrics needs 'Authorization: Bearer <metrics token>' (the "
                          f"token in {where} of broker '{self.config.name}')",
                          field="Authorization", headers={"WWW-Authenticate": 'Bearer realm="metrics"'})

    # -- admin ------------------------------------------------------------------------------------
    def check_admin(self, authorization: str | None) -> None:
        """Constant-time comparison of the admin bearer token."""
        token = _bearer(authorization) or ""
        if not secrets.compare_digest(token.encode(), self.admin_token.encode()):
            raise Problem(401, "admin-unauthorized", "admin endpoints need 'Authorization: Bearer <admin token>' "
                          f"(the token in {self.config.admin_token_path.name} of broker '{self.config.name}')",
                          field="Authorization", headers={"WWW-Authenticate": 'Bearer realm="admin"'})

    def compile_or_400(self, policy: str | None) -> None:
        """Reject a policy that does not compile before storing it."""
        if policy is None:
            return
        try:
            self.engine.compile(policy)
        except PolicyError as exc:
            raise Problem(400, "policy-invalid", str(exc), field="policy", actual=policy) from exc

    def create_key(self, req: m.CreateKeyRequest) -> m.KeyInfo:
        """Generate a 256-bit master key inside the broker (idempotent by key_id)."""
        self.compile_or_400(req.policy)
        settings = {k: v for k in SETTINGS if (v := getattr(req, k)) is not None}
        record, new = self.store.create_key(req.key_id, req.kind, secrets.token_bytes(32), req.policy,
                                            req.measurements, settings)
        if new:
            self.decide(decision="allow", operation="admin.create_key", key_id=req.key_id,
                        reason=f"created {req.kind} key; policy: {req.policy or 'default'}; "
                        f"measurements: {req.measurements}" + (f"; quota: {req.quota}" if req.quota else ""))
            if settings.keys() & FLOOR:
                self.log_floor(req.key_id, settings)
        return m.KeyInfo(**record.public(), new=new)

    def set_policy(self, key_id: str, req: m.SetPolicyRequest) -> m.KeyInfo:
        """Replace a key's policy (and optionally measurements, min_tcb, chip_ids); logged in full.

        `min_tcb` / `chip_ids` absent from the request: unchanged; null: inherit the broker config's.
        """
        record = self.admin_key(key_id)
        self.compile_or_400(req.policy)
        settings = dict(record.settings)
        for name in SETTINGS & req.model_fields_set:
            value = getattr(req, name)
            if value is None:
                settings.pop(name, None)
            else:
                settings[name] = value
        changed = settings != record.settings
        self.store.set_policy(key_id, req.policy, req.measurements, settings if changed else None)
        self.decide(decision="allow", operation="admin.set_policy", key_id=key_id,
                    reason=f"policy: {req.policy or 'default'}; measurements: "
                    f"{'unchanged' if req.measurements is None else req.measurements}")
        if changed and {k: settings.get(k) for k in FLOOR} != {k: record.settings.get(k) for k in FLOOR}:
            self.log_floor(key_id, settings)
        return m.KeyInfo(**self.admin_key(key_id).public())

    def log_floor(self, key_id: str, settings: dict[str, Any]) -> None:
        """Log a key's new min_tcb / chip_ids as its own entry.

        Kept out of the admin.set_policy reason, whose "policy: ...; measurements: ..." text the audit
        tools parse (audit.collect.parse_policy_reason).
        """
        self.decide(decision="allow", operation="admin.set_platform_floor", key_id=key_id,
                    reason=_describe(settings))

    def rotate_key(self, key_id: str) -> m.KeyInfo:
        """Add a new master-key version; wraps use it from now on, older versions still unwrap.

        Why broker-side versions and not pyarrow's external key material + `rotate_master_keys`:
        that API rewrites the key-material files of every Parquet file (needing write access to all
        of them, and files kept beside each one), and our files use internal key material. Here a
        wrapped blob names its version in an authenticated header, so nothing written before a
        rotation is touched: the data keys in old files' footers unwrap under the old version, new
        wraps (new files, new results) use the newest. Retiring an old version (once nothing needs
        it) would be a later, separate operation.
        """
        record = self.admin_key(key_id)
        if record.kind == "resource":
            raise Problem(409, "not-rotatable", f"'{key_id}' is a resource; replace its value with PUT instead",
                          field="key_id", expected="a data or model key", actual=record.kind)
        version = self.store.rotate_key(key_id, secrets.token_bytes(32))
        self.decide(decision="allow", operation="admin.rotate_key", key_id=key_id,
                    reason=f"master key rotated to version {version}; versions 1..{version - 1} kept for unwrap")
        return m.KeyInfo(**self.admin_key(key_id).public())

    def grant(self, req: m.GrantRequest) -> dict[str, Any]:
        """Record the owner's grant for a batch; every key it names must exist here."""
        for key_id in req.key_ids:
            self.admin_key(key_id)
        grant = self.store.put_grant(req.batch_id, req.model_digest, req.measurements, req.key_ids,
                                     config_digests=req.config_digests, rows=req.rows)
        self.decide(decision="allow", operation="admin.grant", batch_id=req.batch_id, model_digest=req.model_digest,
                    reason=f"grant keys {req.key_ids} to measurements {req.measurements}; worker configurations "
                    f"{req.config_digests}; {req.rows} rows")
        return grant.as_dict()

    def register_owner(self, req: m.RegisterOwnerRequest) -> dict[str, Any]:
        """Accept model grants signed by this owner broker's grant key (a provider's broker)."""
        try:
            key = ECKey.import_key({k: v for k, v in req.grant_key.items() if k != "d"})
        except (JoseError, ValueError) as exc:
            raise Problem(422, "grant-key-invalid", f"grant_key: {exc}", field="grant_key") from exc
        public = key.as_dict(private=False)
        self.store.register_owner(req.name, public)
        self.decide(decision="allow", operation="admin.register_owner",
                    reason=f"owner broker {req.name} registered, grant key {key.thumbprint()}")
        return {"name": req.name, "grant_key": public}

    def put_resource(self, repository: str, type_: str, tag: str, req: m.ResourceRequest) -> m.KeyInfo:
        """Store (or replace) a resource value, sent as a JWE to the broker's transport key."""
        self.compile_or_400(req.policy)
        value = self._decrypt_transport(req.value_jwe, "value_jwe")
        key_id = resource_key_id(repository, type_, tag)
        self.store.put_resource(key_id, value, req.policy, req.measurements)
        self.decide(decision="allow", operation="admin.put_resource", key_id=key_id,
                    reason=f"policy: {req.policy or 'default'}; measurements: {req.measurements}")
        return m.KeyInfo(**self.admin_key(key_id).public())

    def admin_key(self, key_id: str) -> KeyRecord:
        """A key for an admin call, 404 if unknown."""
        record = self.store.get_key(key_id)
        if record is None:
            raise Problem(404, "unknown-key", f"no key '{key_id}' at broker '{self.config.name}'; create it first",
                          field="key_id", actual=key_id)
        return record

    def admin_wrap(self, req: m.AdminWrapRequest) -> m.WrappedResponse:
        """Owner's own wrap (e.g. the provider publishing a model DEK)."""
        record = self.admin_key(req.key_id)
        key = self._decrypt_transport(req.key_jwe, "key_jwe")
        self.decide(decision="allow", operation="admin.wrap", key_id=req.key_id,
                    reason=f"owner wrap (version {record.version})")
        return _wrapped(record, key)

    def admin_unwrap(self, req: m.AdminUnwrapRequest) -> m.JweResponse:
        """Owner's own unwrap (e.g. reading results), answered as a JWE to the caller's ephemeral key."""
        record = self.admin_key(req.key_id)
        try:
            public_jwk(req.recipient_jwk)
        except (ValueError, JoseError) as exc:
            raise Problem(422, "recipient-jwk-invalid", f"recipient_jwk: {exc}", field="recipient_jwk") from exc
        key = self._unwrap_bytes(record, req.wrapped)
        purpose = f" to read batch {req.batch_id}'s results" if req.batch_id else ""
        self.decide(decision="allow", operation="admin.unwrap", key_id=req.key_id, batch_id=req.batch_id,
                    reason=f"owner unwrap{purpose}")
        return m.JweResponse(jwe=encrypt_to(req.recipient_jwk, key))

    def decisions(self, after: int) -> m.DecisionsResponse:
        """At most PAGE_LIMIT entries after seq `after`, with a signed head: the page's last entry, or the log's
        head when the page is empty, which tells a client it has read to the end (wire/decision_log.py)."""
        entries = self.store.decisions(after)
        last = {"seq": entries[-1]["seq"], "hash": entries[-1]["hash"]} if entries else self.store.head()
        head = {**last, "broker": self.config.name, "time": int(datetime.now(UTC).timestamp())}
        return m.DecisionsResponse(entries=entries, head=head,
                                   checkpoint=self.issuer.sign(head, typ=CHECKPOINT_TYPE))


def _config_digest(claims: dict[str, Any]) -> str:
    """The worker configuration digest the evidence carries (SEV-SNP HOST_DATA, TDX MRCONFIGID)."""
    try:
        return config_digest_from_claims(str(claims.get("host_data") or ""))
    except ValueError:
        return ""


def _wrapped(record: KeyRecord, key: bytes) -> m.WrappedResponse:
    """Wrap under the newest version of the key."""
    return m.WrappedResponse(wrapped=base64.b64encode(wrap_key(record.material, record.key_id, key,
                                                               record.version)).decode())


def _describe(settings: dict[str, Any]) -> str:
    """Settings as logged: each one's value, or that the broker config's applies."""
    return "; ".join(f"{k}: {settings[k] if k in settings else 'broker default'}" for k in sorted(FLOOR))


def resource_key_id(repository: str, type_: str, tag: str) -> str:
    """Resources live in the key table under ids no admin-created key can take (they contain '/')."""
    return f"res/{repository}/{type_}/{tag}"


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool | list | dict):
        return value
    return value.hex() if isinstance(value, bytes) else str(value)


def create_app(config: BrokerConfig) -> FastAPI:
    """Build the broker app."""
    broker = Broker(config)
    app = FastAPI(title=f"cscore key broker ({config.name})", version="0.1.0",
                  description="KBS-shaped attestation-gated key release for one key owner.")
    app.state.broker = broker
    install_handlers(app)
    app.add_middleware(LimitsMiddleware, max_body_bytes=config.max_body_bytes, rate=config.rate_limit_rps,
                       burst=config.rate_limit_burst)
    app.add_middleware(MetricsMiddleware, metrics=broker.metrics)  # outermost: counts the limits' answers too
    _kbs_routes(app, broker)
    _admin_routes(app, broker)
    return app


async def _raw_body(request: Request) -> bytes:
    return await request.body()


# Module-level: FastAPI resolves these string annotations against module globals.
Auth = Annotated[str | None, Header(alias="Authorization")]
Pop = Annotated[str | None, Header(alias=POP_HEADER)]
Body = Annotated[bytes, Depends(_raw_body)]


def _kbs_routes(app: FastAPI, broker: Broker) -> None:
    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return broker.health()

    @app.get("/readyz", tags=["ops"])
    def readyz() -> dict[str, str]:
        return broker.readiness()

    @app.get("/metrics", tags=["ops"], response_class=Response)
    def metrics(authorization: Auth = None) -> Response:
        broker.check_metrics(authorization)
        return Response(broker.metrics.render(), media_type=METRICS_MEDIA_TYPE)

    @app.post(f"{KBS}/auth", response_model=m.AuthResponse, tags=["kbs"])
    def auth(req: m.AuthRequest) -> m.AuthResponse:
        s = broker.sessions.new(req.tee)
        return m.AuthResponse(nonce=s.nonce, session=s.session_id)

    @app.post(f"{KBS}/attest", response_model=m.AttestResponse, tags=["kbs"])
    def attest(req: m.AttestRequest) -> m.AttestResponse:
        return broker.attest(req)

    @app.get(f"{KBS}/broker-key", tags=["kbs"])
    def broker_key() -> dict[str, Any]:
        """Public JWK to encrypt `key_jwe` / `value_jwe` to (ECDH-ES+A256KW, A256GCM)."""
        return {**broker.transport_key.as_dict(private=False), "alg": "ECDH-ES+A256KW", "use": "enc",
                "kid": broker.transport_key.thumbprint()}

    @app.get(f"{KBS}/grant-key", tags=["kbs"])
    def grant_key() -> dict[str, Any]:
        """Public JWK verifying this broker's model grants (a provider registers it: POST /admin/v0/owners)."""
        return {**broker.grant_key.as_dict(private=False), "alg": "ES256", "use": "sig",
                "kid": broker.grant_key.thumbprint()}

    @app.post(f"{KBS}/model-grant", response_model=m.ModelGrantResponse, tags=["kbs"])
    def model_grant(req: m.ModelGrantRequest, request: Request, body: Body, authorization: Auth = None,
                    pop: Pop = None) -> m.ModelGrantResponse:
        return broker.model_grant(req, broker.token_payload(request, body, authorization, pop))

    @app.post(f"{KBS}/release", response_model=m.JweResponse, tags=["kbs"])
    def release(req: m.ReleaseRequest, request: Request, body: Body, authorization: Auth = None,
                pop: Pop = None) -> m.JweResponse:
        return broker.release(req, broker.token_payload(request, body, authorization, pop))

    @app.get(f"{KBS}/token-key", tags=["kbs"])
    def token_key() -> dict[str, Any]:
        """Public JWK verifying attestation tokens and decision-log checkpoints."""
        return broker.issuer.public_jwk()

    @app.post(f"{KBS}/unwrap", response_model=m.JweResponse, tags=["kbs"])
    def unwrap(req: m.UnwrapRequest, request: Request, body: Body, authorization: Auth = None,
               pop: Pop = None) -> m.JweResponse:
        return broker.unwrap(req, broker.token_payload(request, body, authorization, pop))

    @app.post(f"{KBS}/wrap", response_model=m.WrappedResponse, tags=["kbs"])
    def wrap(req: m.WrapRequest, request: Request, body: Body, authorization: Auth = None,
             pop: Pop = None) -> m.WrappedResponse:
        return broker.wrap(req, broker.token_payload(request, body, authorization, pop))

    @app.get(f"{KBS}/resource/{{repository}}/{{type_}}/{{tag}}", response_model=m.JweResponse, tags=["kbs"])
    def resource(repository: str, type_: str, tag: str, request: Request, authorization: Auth = None,
                 pop: Pop = None) -> m.JweResponse:
        payload = broker.token_payload(request, b"", authorization, pop)
        return broker.resource(repository, type_, tag, payload)


def _admin_routes(app: FastAPI, broker: Broker) -> None:
    def admin(authorization: Auth = None) -> None:
        broker.check_admin(authorization)

    deps = [Depends(admin)]

    @app.post(f"{ADMIN}/keys", response_model=m.KeyInfo, dependencies=deps, tags=["admin"])
    def create_key(req: m.CreateKeyRequest, response: Response) -> m.KeyInfo:
        info = broker.create_key(req)
        response.status_code = 201 if info.new else 200
        return info

    @app.get(f"{ADMIN}/keys", dependencies=deps, tags=["admin"])
    def list_keys() -> list[dict[str, Any]]:
        return broker.store.list_keys()

    @app.get(f"{ADMIN}/keys/{{key_id}}", response_model=m.KeyInfo, dependencies=deps, tags=["admin"])
    def get_key(key_id: str) -> m.KeyInfo:
        return m.KeyInfo(**broker.admin_key(key_id).public())

    @app.put(f"{ADMIN}/keys/{{key_id}}/policy", response_model=m.KeyInfo, dependencies=deps, tags=["admin"])
    def set_policy(key_id: str, req: m.SetPolicyRequest) -> m.KeyInfo:
        return broker.set_policy(key_id, req)

    @app.post(f"{ADMIN}/keys/{{key_id}}/rotate", response_model=m.KeyInfo, dependencies=deps, tags=["admin"])
    def rotate_key(key_id: str) -> m.KeyInfo:
        return broker.rotate_key(key_id)

    @app.post(f"{ADMIN}/grants", dependencies=deps, tags=["admin"])
    def grant(req: m.GrantRequest) -> dict[str, Any]:
        return broker.grant(req)

    @app.get(f"{ADMIN}/grants/{{batch_id:path}}", dependencies=deps, tags=["admin"])
    def get_grant(batch_id: str) -> dict[str, Any]:
        found = broker.store.get_grant(batch_id)
        if found is None:
            raise Problem(404, "unknown-grant", f"no grant for batch '{batch_id}'", field="batch_id", actual=batch_id)
        return found.as_dict()

    @app.post(f"{ADMIN}/owners", dependencies=deps, tags=["admin"])
    def register_owner(req: m.RegisterOwnerRequest) -> dict[str, Any]:
        return broker.register_owner(req)

    @app.get(f"{ADMIN}/owners", dependencies=deps, tags=["admin"])
    def owners() -> dict[str, Any]:
        return broker.store.owners()

    @app.put(f"{ADMIN}/resources/{{repository}}/{{type_}}/{{tag}}", response_model=m.KeyInfo, dependencies=deps,
             tags=["admin"])
    def put_resource(repository: str, type_: str, tag: str, req: m.ResourceRequest) -> m.KeyInfo:
        return broker.put_resource(repository, type_, tag, req)

    @app.post(f"{ADMIN}/wrap", response_model=m.WrappedResponse, dependencies=deps, tags=["admin"])
    def admin_wrap(req: m.AdminWrapRequest) -> m.WrappedResponse:
        return broker.admin_wrap(req)

    @app.post(owner_unwrap.PATH, response_model=m.JweResponse, dependencies=deps, tags=["admin"])
    def admin_unwrap(req: m.AdminUnwrapRequest) -> m.JweResponse:
        return broker.admin_unwrap(req)

    @app.get(f"{ADMIN}/decisions", response_model=m.DecisionsResponse, dependencies=deps, tags=["admin"])
    def decisions(after: int = 0) -> m.DecisionsResponse:
        return broker.decisions(after)
