"""keybroker/crypto.py on its own: the at-rest sealing's label binding, the JWE algorithms, the public-key checks."""

from __future__ import annotations

import base64
import json
import os

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc import jwe
from joserfc.errors import UnsupportedAlgorithmError
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

from keybroker.crypto import b64decode_any, b64url, decrypt_from, encrypt_to, public_jwk, seal, unseal

KEK = bytes(range(32))


def _header(token: str) -> dict[str, str]:
    return json.loads(b64decode_any(token.split(".")[0]))


def test_b64url_is_url_safe_and_unpadded() -> None:
    assert b64url(b"\xfb\xff") == "-_8"
    assert b64url(b"\xfb\xff\xfe") == "-__-"
    assert b64url(b"\x00\x00\x17") == "AAAX"  # only padding is stripped, not a trailing letter


@pytest.mark.parametrize("text", ["+/8=", "+/8", "-_8", "-_8=", "  +/8=\n"])
def test_b64decode_any_reads_standard_and_url_safe_padded_or_not(text: str) -> None:
    assert b64decode_any(text) == b"\xfb\xff"


def test_a_sealed_secret_is_nonce_then_aes_gcm_under_the_kek_with_the_label_as_aad() -> None:
    sealed = seal(KEK, b"secret", "wrap:key-1")
    assert len(sealed) == 12 + len(b"secret") + 16
    # the stored format, read without unseal: a store written by one version is read by the next
    assert AESGCM(KEK).decrypt(sealed[:12], sealed[12:], b"wrap:key-1") == b"secret"
    assert unseal(KEK, sealed, "wrap:key-1") == b"secret"
    assert seal(KEK, b"secret", "wrap:key-1")[:12] != sealed[:12]  # a fresh nonce each time


def test_unseal_reads_a_secret_sealed_by_hand_in_the_stored_format() -> None:
    nonce = os.urandom(12)
    sealed = nonce + AESGCM(KEK).encrypt(nonce, b"secret", b"wrap:key-1")
    assert unseal(KEK, sealed, "wrap:key-1") == b"secret"


def test_a_sealed_secret_does_not_open_under_another_label_or_kek() -> None:
    sealed = seal(KEK, b"secret", "wrap:key-1")
    with pytest.raises(InvalidTag):
        unseal(KEK, sealed, "wrap:key-2")  # a record moved to another id
    with pytest.raises(InvalidTag):
        unseal(KEK, sealed, "")
    with pytest.raises(InvalidTag):
        unseal(bytes(32), sealed, "wrap:key-1")
    with pytest.raises(InvalidTag):
        AESGCM(KEK).decrypt(sealed[:12], sealed[12:], None)  # the label really is bound, not left out


@pytest.mark.parametrize("jwk", [[], "EC", None])
def test_public_jwk_refuses_what_is_not_a_dict(jwk: object) -> None:
    with pytest.raises(ValueError) as refused:
        public_jwk(jwk)  # type: ignore[arg-type]
    assert str(refused.value) == f"expected an EC or RSA public JWK, got kty={type(jwk).__name__!r}"


def test_public_jwk_refuses_other_key_types_naming_them() -> None:
    octet = OctKey.generate_key(256).as_dict()
    okp = OKPKey.generate_key("X25519").as_dict(private=False)
    for jwk, kty in ((octet, "oct"), (okp, "OKP"), ({"x": "AA"}, None)):
        with pytest.raises(ValueError) as refused:
            public_jwk(jwk)
        assert str(refused.value) == f"expected an EC or RSA public JWK, got kty={kty!r}"


def test_public_jwk_refuses_a_p521_key_and_accepts_p256_and_p384() -> None:
    with pytest.raises(ValueError) as refused:
        public_jwk(ECKey.generate_key("P-521").as_dict(private=False))
    assert str(refused.value) == "EC curve P-521 not accepted (P-256 or P-384)"
    for curve in ("P-256", "P-384"):
        jwk = ECKey.generate_key(curve).as_dict(private=False)
        key = public_jwk(jwk)
        assert isinstance(key, ECKey) and key.curve_name == curve and key.thumbprint() == ECKey.import_key(
            jwk).thumbprint()


def test_public_jwk_refuses_rsa_below_2048_bits_and_accepts_2048() -> None:
    # 2047 bits, one short: joserfc generates multiples of 8 only
    small = RSAKey.import_key(rsa.generate_private_key(65537, 2047).public_key())
    with pytest.raises(ValueError) as refused:
        public_jwk(small.as_dict(private=False))
    assert str(refused.value) == "RSA keys shorter than 2048 bits are not accepted"
    key = public_jwk(RSAKey.generate_key(2048).as_dict(private=False))
    assert isinstance(key, RSAKey) and key.raw_value.key_size == 2048


@pytest.mark.parametrize("kind", ["EC", "RSA"])
def test_public_jwk_drops_the_private_members_a_client_sent(kind: str) -> None:
    private = ECKey.generate_key("P-256") if kind == "EC" else RSAKey.generate_key(2048)
    key = public_jwk(private.as_dict(private=True))
    assert not key.is_private
    assert key.as_dict(private=False) == private.as_dict(private=False)
    # the imported key holds no private member at all (joserfc keeps what it was given, even unused)
    assert set(key.dict_value) == set(private.as_dict(private=False))


@pytest.mark.parametrize(("kind", "alg"), [("EC", "ECDH-ES+A256KW"), ("RSA", "RSA-OAEP-256")])
def test_encrypt_to_uses_the_key_types_algorithm_and_a256gcm(kind: str, alg: str) -> None:
    private = ECKey.generate_key("P-256") if kind == "EC" else RSAKey.generate_key(2048)
    token = encrypt_to(private.as_dict(private=False), b"key bytes")
    header = _header(token)
    assert (header["alg"], header["enc"]) == (alg, "A256GCM")
    assert decrypt_from(private, token) == b"key bytes"


def test_encrypt_to_refuses_a_key_public_jwk_refuses() -> None:
    with pytest.raises(ValueError) as refused:
        encrypt_to(ECKey.generate_key("P-521").as_dict(private=False), b"key bytes")
    assert str(refused.value) == "EC curve P-521 not accepted (P-256 or P-384)"


def test_decrypt_from_gives_empty_bytes_for_an_empty_plaintext() -> None:
    private = ECKey.generate_key("P-256")
    assert decrypt_from(private, encrypt_to(private.as_dict(private=False), b"")) == b""


@pytest.mark.parametrize(("alg", "enc", "refused_name"), [("ECDH-ES", "A256GCM", "ECDH-ES"),
                                                          ("ECDH-ES+A128KW", "A256GCM", "ECDH-ES+A128KW"),
                                                          ("ECDH-ES+A256KW", "A128GCM", "A128GCM")])
def test_decrypt_from_refuses_algorithms_outside_the_allowed_list(alg: str, enc: str, refused_name: str) -> None:
    private = ECKey.generate_key("P-256")
    token = jwe.encrypt_compact({"alg": alg, "enc": enc}, b"key bytes", private, algorithms=[alg, enc])
    with pytest.raises(UnsupportedAlgorithmError) as refused:
        decrypt_from(private, token)
    assert str(refused.value) == f"unsupported_algorithm: Algorithm of '{refused_name}' is not allowed"


def test_b64decode_any_of_a_jwe_header() -> None:
    private = ECKey.generate_key("P-256")
    token = encrypt_to(private.as_dict(private=False), b"x")
    assert base64.urlsafe_b64decode(token.split(".")[0] + "==") == b64decode_any(token.split(".")[0])


def test_b64decode_any_reads_back_b64url_of_every_length() -> None:
    # lengths whose encoding needs two pad characters after 10, 30, ... characters, not only after 2
    for size in range(41):
        data = bytes(range(size))
        assert b64decode_any(b64url(data)) == data
        assert b64decode_any(base64.b64encode(data).decode()) == data
