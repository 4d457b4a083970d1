"""wire/keywrap.py on its own: both wrapped-key formats byte for byte, the version a blob names, and each refusal
word for word (milliseconds; the brokers' use is tests/keybroker/test_unwrap_versions.py and test_rotation.py)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from wire.keywrap import HEADER_LEN, NONCE_LEN, VERSIONED_MIN, UnwrapError, unwrap_key, wrap_key, wrapped_version

MASTER, OTHER, KEY = bytes(range(32)), bytes(range(1, 33)), b"K" * 32


def test_version_1_is_a_nonce_then_aes_gcm_with_the_key_id_as_aad() -> None:
    wrapped = wrap_key(MASTER, "k-1", KEY)
    assert len(wrapped) == NONCE_LEN + len(KEY) + 16 == 60
    nonce = wrapped[:12]
    assert wrapped[12:] == AESGCM(MASTER).encrypt(nonce, KEY, b"k-1")
    assert unwrap_key(MASTER, "k-1", wrapped) == KEY and unwrap_key(MASTER, "k-1", wrapped, 1) == KEY
    assert wrap_key(MASTER, "k-1", KEY)[:12] != nonce  # a fresh nonce each time


def test_version_n_is_kbw2_and_n_big_endian_then_a_nonce_then_aes_gcm_over_header_and_key_id() -> None:
    wrapped = wrap_key(MASTER, "k-1", KEY, 258)
    assert wrapped[:8] == b"KBW2\x00\x00\x01\x02" and HEADER_LEN == 8 and VERSIONED_MIN == 36
    nonce = wrapped[8:20]
    assert wrapped[20:] == AESGCM(MASTER).encrypt(nonce, KEY, b"KBW2\x00\x00\x01\x02k-1")
    assert unwrap_key(MASTER, "k-1", wrapped, 258) == KEY
    assert wrapped_version(wrapped) == 258 and wrapped_version(wrap_key(MASTER, "k-1", KEY, 2)) == 2
    assert wrapped_version(wrap_key(MASTER, "k-1", KEY)) == 1


def test_a_blob_names_a_version_only_with_the_magic_and_room_for_nonce_and_tag() -> None:
    header = b"KBW2\x00\x00\x00\x07"
    assert wrapped_version(header + bytes(28)) == 7  # exactly header, nonce and tag
    assert wrapped_version(header + bytes(27)) == 1  # one byte short: an unversioned blob
    assert wrapped_version(b"KBW3\x00\x00\x00\x07" + bytes(28)) == 1
    assert wrapped_version(b"") == 1


@pytest.mark.parametrize(("version", "key_id", "master", "tamper"), [
    (1, "k-2", MASTER, False), (1, "k-1", OTHER, False), (1, "k-1", MASTER, True),
    (3, "k-2", MASTER, False), (3, "k-1", OTHER, False), (3, "k-1", MASTER, True)])
def test_a_blob_that_does_not_authenticate_is_refused_naming_key_and_version(version: int, key_id: str,
                                                                            master: bytes, tamper: bool) -> None:
    wrapped = wrap_key(MASTER, "k-1", KEY, version)
    if tamper:
        wrapped = wrapped[:-1] + bytes([wrapped[-1] ^ 1])
    with pytest.raises(UnwrapError) as refused:
        unwrap_key(master, key_id, wrapped, version)
    assert str(refused.value) == f"wrapped key does not authenticate under key '{key_id}' version {version}"


def test_the_header_is_authenticated_so_a_blob_is_not_read_under_another_version() -> None:
    wrapped = wrap_key(MASTER, "k-1", KEY, 3)
    relabelled = b"KBW2\x00\x00\x00\x02" + wrapped[HEADER_LEN:]
    with pytest.raises(UnwrapError) as refused:
        unwrap_key(MASTER, "k-1", relabelled, 2)
    assert str(refused.value) == "wrapped key does not authenticate under key 'k-1' version 2"
    with pytest.raises(UnwrapError):
        unwrap_key(MASTER, "k-1", wrapped, 1)  # the versioned blob read as version 1: the header is no nonce


@pytest.mark.parametrize(("version", "length"), [(1, 27), (1, 0), (2, 35), (2, 8), (2, 3)])
def test_a_blob_too_short_for_its_nonce_and_tag_is_refused_naming_its_length(version: int, length: int) -> None:
    with pytest.raises(UnwrapError) as refused:
        unwrap_key(MASTER, "k-1", bytes(length), version)
    assert str(refused.value) == f"wrapped key is {length} bytes, shorter than its header, nonce and tag"


def test_a_blob_of_exactly_nonce_and_tag_is_tried_not_called_short() -> None:
    empty = wrap_key(MASTER, "k-1", b"")
    assert len(empty) == 28 and unwrap_key(MASTER, "k-1", empty) == b""
    versioned = wrap_key(MASTER, "k-1", b"", 2)
    assert len(versioned) == 36 and unwrap_key(MASTER, "k-1", versioned, 2) == b""
