"""Owner/provider-side admin client of a key broker: keys, policies, grants, own wrap/unwrap, audit log.

Keys never cross the wire in clear: `wrap` sends the key as a JWE to the broker's transport key and
`unwrap` receives it as a JWE to a per-call ephemeral key.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import httpx
from joserfc import jwe, jwt
from joserfc.jwk import ECKey, import_key

from enclave.kbs_client import BrokerUnreachable, broker_tls, problem_of  # one TLS rule for every broker client
from wire import owner_unwrap
from wire.decision_log import CHECKPOINT_TYPE, GENESIS, verify_chain

JWE_ALGS = owner_unwrap.JWE_ALGS


class Unchanged:
    """Marker type of UNCHANGED: leave a setting as it is."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = Unchanged()


class BrokerAdminError(RuntimeError):
    """The broker refused an admin call; `problem` is its RFC 7807 document."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.detail = str(problem.get("detail", problem))
        super().__init__(f"key broker answered {status}: {self.detail}")


class BrokerAdmin:
    """Admin API of one key broker, authenticated by the party's admin bearer token.

    `ca_bundle` (or $CSCORE_BROKER_CA) names the CA the broker's TLS certificate must chain to; plain
    `http://` is accepted only for loopback hosts. A caller-supplied `client` (tests) is used as given.
    `party` ("owner", "provider") names whose broker it is when it does not answer (BrokerUnreachable).
    """

    def __init__(self, url: str, admin_token: str, *, timeout_s: float = 30.0,
                 ca_bundle: str | os.PathLike[str] | None = None, client: httpx.Client | None = None,
                 party: str = "") -> None:
        self.url = url.rstrip("/")
        self.party = party
        if client is None:
            client = httpx.Client(base_url=self.url, timeout=timeout_s, verify=broker_tls(self.url, ca_bundle))
        client.headers["Authorization"] = f"Bearer {admin_token}"
        self._http = client
        self._broker_key: Any = None

    def __repr__(self) -> str:
        return f"BrokerAdmin({self.url!r})"

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def create_key(self, key_id: str, policy: str | None = None, *, kind: str = "data",
                   measurements: list[str] | None = None, min_tcb: dict[str, int] | None = None,
                   chip_ids: list[str] | None = None, quota: dict[str, int] | None = None) -> dict[str, Any]:
        """Create a master key inside the broker (no-op returning the existing key if key_id exists).

        kind "data" (default policy: batch grant, unwrap only), "result" (batch grant, released to the worker)
        or "model" (measurement in `measurements` and an owner's model grant). `min_tcb` ({component:
        minimum}) and `chip_ids` hold this key to a platform floor; None: the broker config's. `quota`
        ({"rows", "period_s"}) meters a model key's rows per registered owner.
        """
        body: dict[str, Any] = {"key_id": key_id, "kind": kind, "policy": policy, "measurements": measurements or []}
        body.update({k: v for k, v in (("min_tcb", min_tcb), ("chip_ids", chip_ids), ("quota", quota))
                     if v is not None})
        return self._call("POST", "/admin/v0/keys", body)

    def get_key(self, key_id: str) -> dict[str, Any]:
        """A key's metadata (never its bytes)."""
        return self._call("GET", f"/admin/v0/keys/{key_id}")

    def set_policy(self, key_id: str, policy: str | None, *, measurements: list[str] | None = None,
                   min_tcb: dict[str, int] | None | Unchanged = UNCHANGED,
                   chip_ids: list[str] | None | Unchanged = UNCHANGED,
                   quota: dict[str, int] | None | Unchanged = UNCHANGED) -> dict[str, Any]:
        """Replace a key's CEL policy (None restores the default); optionally its allowed measurements.

        `min_tcb` / `chip_ids`: left out, unchanged; None, back to the broker config's; a value, this
        key's own floor. The change is logged by the broker with the new values.
        """
        body: dict[str, Any] = {"policy": policy, "measurements": measurements}
        body.update({k: v for k, v in (("min_tcb", min_tcb), ("chip_ids", chip_ids), ("quota", quota))
                     if v is not UNCHANGED})
        return self._call("PUT", f"/admin/v0/keys/{key_id}/policy", body)

    def rotate_key(self, key_id: str) -> dict[str, Any]:
        """Add a new master-key version: new wraps use it, data wrapped before still unwraps (no rewrite)."""
        return self._call("POST", f"/admin/v0/keys/{key_id}/rotate")

    def grant(self, batch_id: str, model_digest: str, measurements: list[str], key_ids: list[str], *,
              config_digests: list[str], rows: int) -> dict[str, Any]:
        """Allow enclaves with `measurements`, launched with one of the worker configurations `config_digests`
        (hex SHA-256), running `model_digest`, to use `key_ids` for the `rows` rows of `batch_id`."""
        return self._call("POST", "/admin/v0/grants", {"batch_id": batch_id, "model_digest": model_digest,
                                                       "measurements": measurements, "key_ids": key_ids,
                                                       "config_digests": config_digests, "rows": rows})

    def get_grant(self, batch_id: str) -> dict[str, Any]:
        """The batch's grant as recorded (measurements, config_digests, key_ids, model_digest, rows)."""
        return self._call("GET", f"/admin/v0/grants/{batch_id}")

    def grant_key(self) -> dict[str, Any]:
        """This broker's public model-grant key (an owner hands it to each provider it uses)."""
        return self._call("GET", "/kbs/v0/grant-key")

    def register_owner(self, name: str, grant_key: dict[str, Any]) -> dict[str, Any]:
        """(Provider) accept model grants signed by owner broker `name` with `grant_key`."""
        return self._call("POST", "/admin/v0/owners", {"name": name, "grant_key": grant_key})

    def put_resource(self, repository: str, type_: str, tag: str, value: bytes, *,
                     measurements: list[str] | None = None, policy: str | None = None) -> dict[str, Any]:
        """Store a secret the enclave can fetch with AttestedSession.resource."""
        return self._call("PUT", f"/admin/v0/resources/{repository}/{type_}/{tag}",
                          {"value_jwe": self._to_broker(value), "measurements": measurements or [],
                           "policy": policy})

    def wrap(self, key_id: str, key: bytes) -> bytes:
        """Wrap `key` under the master key `key_id` (nonce || AES-256-GCM, AAD key_id)."""
        answer = self._call("POST", "/admin/v0/wrap", {"key_id": key_id, "key_jwe": self._to_broker(key)})
        return base64.b64decode(answer["wrapped"])

    def unwrap(self, key_id: str, wrapped: bytes, *, batch_id: str | None = None) -> bytes:
        """Unwrap for the owner's own use (wire format: wire/owner_unwrap.py); the key comes back encrypted to a
        one-call ephemeral key.

        `batch_id` names the batch being read in the broker's decision log (the audit's "owner's decryption").
        """
        ephemeral = ECKey.generate_key(owner_unwrap.RECIPIENT_CURVE, private=True)
        body = owner_unwrap.request_body(key_id, base64.b64encode(wrapped).decode(),
                                         ephemeral.as_dict(private=False), batch_id)
        answer = self._call("POST", owner_unwrap.PATH, body)
        return jwe.decrypt_compact(answer[owner_unwrap.RESPONSE_FIELD], ephemeral,
                                   algorithms=owner_unwrap.JWE_ALGS).plaintext or b""

    def for_batch(self, batch_id: str) -> BatchKeys:
        """This broker as a PME key wrapper whose unwraps name `batch_id` in the decision log."""
        return BatchKeys(self, batch_id)

    def decisions(self, after: int = 0, *, verify: bool = True) -> list[dict[str, Any]]:
        """Every entry of the decision log with seq > `after`, oldest first, read page by page (the broker
        answers at most wire.decision_log.PAGE_LIMIT a call) until an empty page.

        With `verify`, each page's hash chain is checked (from GENESIS, or from the first entry's prev_hash when
        `after` is not 0) and so is each page's head, signed by the broker's token key: it must name the page's
        last entry, and at the end the log's head must be where the pages stopped. Raises ValueError naming the
        seq, the expected and the actual value; BrokerAdminError if the broker refuses.
        """
        key = import_key(self.token_key()) if verify else None
        entries: list[dict[str, Any]] = []
        prev = GENESIS if after == 0 else None
        while True:
            answer = self._call("GET", f"/admin/v0/decisions?after={int(after)}")
            page: list[dict[str, Any]] = answer["entries"]
            if key is not None:
                prev = _verified_page(page, answer["checkpoint"], key, after, prev)
            if not page:
                return entries
            entries += page
            after = int(page[-1]["seq"])

    def token_key(self) -> dict[str, Any]:
        """The broker's public token/checkpoint signing key."""
        return self._call("GET", "/kbs/v0/token-key")

    def _to_broker(self, value: bytes) -> str:
        if self._broker_key is None:
            self._broker_key = import_key(self._call("GET", "/kbs/v0/broker-key"))
        return jwe.encrypt_compact({"alg": "ECDH-ES+A256KW", "enc": "A256GCM"}, value, self._broker_key,
                                   algorithms=JWE_ALGS)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.TransportError as exc:
            raise BrokerUnreachable(self.party, self.url, exc, caller="this machine",
                                    then="run the command again") from None
        if response.is_success:
            return response.json()
        raise BrokerAdminError(response.status_code, problem_of(response))


class BatchKeys:
    """A key wrapper (enclave.pme.KeyWrapper) for reading one batch: every unwrap is logged under its id."""

    def __init__(self, admin: BrokerAdmin, batch_id: str) -> None:
        self.admin, self.batch_id = admin, batch_id

    def wrap(self, key_id: str, key: bytes) -> bytes:
        return self.admin.wrap(key_id, key)

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        return self.admin.unwrap(key_id, wrapped, batch_id=self.batch_id)


def _verified_page(page: list[dict[str, Any]], checkpoint: str, key: Any, after: int,
                   prev: str | None) -> str | None:
    """The hash the page's chain ends at, once its signed head is found to name exactly that entry.

    `prev`: the hash the page must follow; None when unknown (reading from `after` > 0), when the first entry's
    prev_hash is taken as given (and must be there: without it no chain would be checked). An empty page's head
    must be where the previous page ended: the log's end.
    Raises ValueError naming the seq, the expected and the actual value.
    """
    start = page[0].get("prev_hash") if prev is None and page else prev
    if page and not isinstance(start, str):  # without a start no chain is checked: the entries would be taken as sent
        raise ValueError(f"decision {page[0].get('seq')}: prev_hash expected 64 hex (where the page's chain starts), "
                         f"actual {start}")
    last = verify_chain(page, start) if start is not None else None
    signed = jwt.decode(checkpoint, key, algorithms=["ES256"])
    seq, hash_ = signed.claims.get("seq"), signed.claims.get("hash")
    if signed.header.get("typ") != CHECKPOINT_TYPE:
        raise ValueError(f"signed checkpoint: typ expected {CHECKPOINT_TYPE}, actual {signed.header.get('typ')}")
    if seq != after + len(page) or (last is not None and hash_ != last):
        raise ValueError(f"signed checkpoint (seq {seq}, {hash_}) does not match the log "
                         f"(seq {after + len(page)}, {last})")
    return last
