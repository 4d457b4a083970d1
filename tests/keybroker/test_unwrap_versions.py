"""Which master-key version the production broker (in process) unwraps a blob with (`Broker._unwrap_bytes`): the
version the blob's header names, and version 1 again for an unversioned blob whose random nonce happens to read as
a header; a blob that is not base64, names a version the key does not have, or does not authenticate under the
version it names is refused word for word.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc.jwk import ECKey

from enclave.kbs_client import KbsError
from sdk.broker_admin import BrokerAdminError
from tests.keybroker.inproc import CONFIG, GOOD, Env
from wire import owner_unwrap
from wire.keywrap import WRAP_MAGIC

DEK = b"D" * 16


@pytest.fixture
def env(tmp_path: Path) -> Env:
    """Key `data-1` rotated once: versions 1 and 2."""
    env = Env(tmp_path)
    env.admin.create_key("data-1")
    env.admin.rotate_key("data-1")
    return env


def _refusal(env: Env, wrapped: str) -> dict[str, Any]:
    recipient = ECKey.generate_key(owner_unwrap.RECIPIENT_CURVE).as_dict(private=False)
    with pytest.raises(BrokerAdminError) as refused:
        env.admin._call("POST", owner_unwrap.PATH, owner_unwrap.request_body("data-1", wrapped, recipient, None))
    assert refused.value.status == 400 and refused.value.problem["type"].endswith("wrapped-invalid")
    return {k: refused.value.problem.get(k) for k in ("detail", "field", "expected", "actual")}


def _b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode()


def test_an_unversioned_blob_whose_nonce_reads_as_a_header_unwraps_under_version_1(env: Env) -> None:
    """A version-1 blob (nonce || AES-GCM) whose random nonce starts with "KBW2" and version 2: the broker tries
    version 2, whose tag fails, then version 1 (one blob in 2**32 has such a nonce)."""
    master_1 = env.app.state.broker.store.get_key("data-1").versions[1]
    nonce = WRAP_MAGIC + (2).to_bytes(4, "big") + os.urandom(4)
    blob = nonce + AESGCM(master_1).encrypt(nonce, DEK, b"data-1")
    assert env.admin.unwrap("data-1", blob) == DEK
    assert env.admin.unwrap("data-1", env.admin.wrap("data-1", DEK)) == DEK  # a version-2 blob, as wrapped now


def test_a_wrapped_value_that_is_not_base64_is_refused(env: Env) -> None:
    refused = _refusal(env, "AAAAA")
    assert refused["detail"].startswith("wrapped is not base64: ") and refused["field"] == "wrapped"


def test_a_blob_naming_a_version_the_key_does_not_have_is_refused(env: Env) -> None:
    blob = WRAP_MAGIC + (7).to_bytes(4, "big") + os.urandom(40)
    assert _refusal(env, _b64(blob)) == {
        "detail": "wrapped names version 7 of key 'data-1', which has versions 1..2", "field": "wrapped",
        "expected": "1..2", "actual": 7}


def test_a_blob_that_does_not_authenticate_under_the_version_it_names_is_refused(env: Env) -> None:
    blob = WRAP_MAGIC + (2).to_bytes(4, "big") + os.urandom(40)
    assert _refusal(env, _b64(blob)) == {
        "detail": "wrapped key does not authenticate under key 'data-1' version 2; was it wrapped by this broker "
                  "under this key_id?", "field": "wrapped", "expected": None, "actual": None}


def test_a_keys_policy_sees_its_id_kind_and_newest_version(env: Env) -> None:
    """A worker's unwrap under a policy that names the key's own id, kind and version (2 after the rotation)."""
    env.admin.grant("batch-1", "sha256:m", [GOOD], ["data-1"], config_digests=[CONFIG], rows=10)
    wrapped = env.admin.wrap("data-1", DEK)
    env.admin.set_policy("data-1", 'key.key_id == "data-1" && key.kind == "data" && key.version == 2')
    assert env.worker().unwrap("data-1", wrapped, batch_id="batch-1", model_digest="sha256:m") == DEK
    env.admin.set_policy("data-1", 'key.key_id == "data-1" && key.kind == "data" && key.version == 1')
    with pytest.raises(KbsError) as refused:
        env.worker().unwrap("data-1", wrapped, batch_id="batch-1", model_digest="sha256:m")
    assert refused.value.status == 403 and refused.value.problem["field"] == "policy"
