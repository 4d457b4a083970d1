"""Master-key rotation without rewriting data: old Parquet files still decrypt, new wraps use the new version."""

from __future__ import annotations

import base64
import secrets

import pyarrow as pa
import pytest

from enclave.pme import EncryptedParquet, write_encrypted
from keybroker.crypto import wrapped_version
from sdk.broker_admin import BrokerAdmin, BrokerAdminError
from tests.keybroker.inproc import CONFIG, GOOD, Env
from wire.keywrap import wrap_key


def _table(n: int) -> pa.Table:
    return pa.table({"message_id": [f"m-{i}" for i in range(n)], "text": [f"email body {i}" for i in range(n)]})


def test_parquet_written_before_rotation_still_decrypts(admin: BrokerAdmin) -> None:
    admin.create_key("rot-pme")
    before = _table(5)
    old_file = write_encrypted(before, admin, footer_key="rot-pme", column_key="rot-pme", row_group_size=2)
    assert admin.get_key("rot-pme")["version"] == 1
    assert admin.rotate_key("rot-pme")["version"] == 2
    assert wrapped_version(admin.wrap("rot-pme", b"k" * 16)) == 2  # new wraps use the new version
    with EncryptedParquet(old_file, admin) as old:  # no rewrite: the file's wrapped keys name version 1
        assert old.read().equals(before)
    assert admin.rotate_key("rot-pme")["version"] == 3
    after = _table(3)
    new_file = write_encrypted(after, admin, footer_key="rot-pme", column_key="rot-pme", row_group_size=2)
    for data, table in ((old_file, before), (new_file, after)):
        with EncryptedParquet(data, admin) as f:
            assert f.read().equals(table)
    rotations = [e for e in admin.decisions() if e["operation"] == "admin.rotate_key" and e["key_id"] == "rot-pme"]
    assert [e["reason"].split(";")[0] for e in rotations] == ["master key rotated to version 2",
                                                               "master key rotated to version 3"]


def test_wrapped_blobs_name_their_version_and_unknown_versions_are_refused(admin: BrokerAdmin) -> None:
    admin.create_key("rot-fmt")
    v1 = admin.wrap("rot-fmt", b"a" * 32)
    assert wrapped_version(v1) == 1 and len(v1) == 12 + 32 + 16  # the original format, unchanged
    admin.rotate_key("rot-fmt")
    v2 = admin.wrap("rot-fmt", b"b" * 32)
    assert v2[:4] == b"KBW2" and int.from_bytes(v2[4:8], "big") == 2
    assert admin.unwrap("rot-fmt", v1) == b"a" * 32 and admin.unwrap("rot-fmt", v2) == b"b" * 32
    forged = v2[:4] + (9).to_bytes(4, "big") + v2[8:]
    with pytest.raises(BrokerAdminError) as unknown:
        admin.unwrap("rot-fmt", forged)
    assert unknown.value.status == 400 and unknown.value.problem["actual"] == 9
    assert unknown.value.problem["expected"] == "1..2"
    downgraded = v2[:4] + (1).to_bytes(4, "big") + v2[8:]  # the header is authenticated
    with pytest.raises(BrokerAdminError):
        admin.unwrap("rot-fmt", downgraded)


def test_resources_are_not_rotated(admin: BrokerAdmin) -> None:
    admin.put_resource("rot", "cfg", "x", b"value")
    with pytest.raises(BrokerAdminError) as refused:
        admin.rotate_key("res/rot/cfg/x")
    assert refused.value.status == 404  # resource ids are not addressable as keys; PUT replaces a resource


def test_rotation_needs_the_admin_token(admin: BrokerAdmin) -> None:
    admin.create_key("rot-auth")
    refused = admin._http.post("/admin/v0/keys/rot-auth/rotate", headers={"Authorization": "Bearer nope"})
    assert refused.status_code == 401
    assert admin.get_key("rot-auth")["version"] == 1


def test_enclave_unwraps_old_wraps_and_wraps_under_the_new_version(env: Env) -> None:
    wrapped = env.data_key()
    env.admin.create_key("results-1", kind="result")
    env.admin.grant("batch-1", "sha256:m", [GOOD], ["data-1", "results-1"], config_digests=[CONFIG], rows=10)
    worker = env.worker()
    env.admin.rotate_key("data-1")
    env.admin.rotate_key("results-1")
    assert worker.unwrap("data-1", wrapped, batch_id="batch-1", model_digest="sha256:m") == b"D" * 16
    master, version = worker.release("results-1", batch_id="batch-1", model_digest="sha256:m")
    result_key = secrets.token_bytes(16)
    new = wrap_key(master, "results-1", result_key, version)  # the enclave wraps locally, newest version
    assert version == 2 and wrapped_version(new) == 2 and env.admin.unwrap("results-1", new) == result_key
    assert base64.b64encode(new)  # opaque to the enclave: same wire format as before
