"""Signed releases of worker measurements: what owners grant and providers allow, without the source tree.

A release document lists, for one release of the worker image, the digests of its artifacts and the
launch measurements expected on real hardware (SEV-SNP per vCPU type; TDX where computed), and is
signed with the project's release key (Ed25519 over the canonical JSON of the document):

    {"release": {"version": 1, "name": "...", "image": {"vmlinuz": sha256, "initrd.img": sha256,
                 "ovmf": sha256, "cmdline": "..."}, "sev_snp": {"EPYC-Milan": hex, ...}, "tdx": null,
                 "sbom_sha256": hex | null},
     "signature": {"alg": "Ed25519", "key_sha256": hex of the raw public key, "value": base64}}

``measurements_to_allow`` is the one place ``cscore provider publish`` and ``cscore owner submit``
take their allowed measurements from: ``--measurement`` (hex), ``--release FILE`` verified with
``--release-key`` (a PEM public key the user pinned), or, with neither, the simulated TEE's
measurement of this checkout (the local stack only, and said so).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

RELEASE_VERSION = 1
MEASUREMENT_HEX = 96  # 48 bytes: SNP MEASUREMENT, TDX MRTD


class ReleaseError(ValueError):
    """A release document, its signature or a measurement is not acceptable; the message names which."""


def _canonical(doc: Any) -> bytes:
    # Until wire's RFC 8785 canonical JSON lands: the document holds strings, ints and null only.
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sign_release(release: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """The signed release document for ``release`` (the inner object)."""
    body = {"version": RELEASE_VERSION, **release}
    _check_body(body, "release")
    return {"release": body, "signature": {
        "alg": "Ed25519", "key_sha256": hashlib.sha256(_raw(key.public_key())).hexdigest(),
        "value": base64.b64encode(key.sign(_canonical(body))).decode()}}


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (ReleaseError naming the file otherwise)."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ReleaseError(f"--release-key {path}: expected an Ed25519 public key (PEM), got: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ReleaseError(f"--release-key {path}: expected an Ed25519 public key, got {type(key).__name__}")
    return key


def verify_release(path: Path, key: Ed25519PublicKey) -> dict[str, Any]:
    """The release object of the signed document at ``path``, once its signature verifies with ``key``."""
    try:
        signed = json.loads(Path(path).read_text())
        body, sig = signed["release"], signed["signature"]
        value = base64.b64decode(sig["value"], validate=True)
    except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise ReleaseError(f"--release {path}: expected a signed release document, got: {exc!r}") from exc
    if sig.get("alg") != "Ed25519" or sig.get("key_sha256") != hashlib.sha256(_raw(key)).hexdigest():
        raise ReleaseError(f"--release {path}: signature.key_sha256: expected the pinned release key "
                           f"{hashlib.sha256(_raw(key)).hexdigest()}, got {sig.get('key_sha256')} ({sig.get('alg')})")
    try:
        key.verify(value, _canonical(body))
    except InvalidSignature as exc:
        raise ReleaseError(f"--release {path}: signature does not verify with the pinned release key: "
                           "the document was changed or signed by another key") from exc
    _check_body(body, f"--release {path}: release")
    return dict(body)


def _check_body(body: Any, where: str) -> None:
    if not isinstance(body, dict) or body.get("version") != RELEASE_VERSION:
        got = body.get("version") if isinstance(body, dict) else body
        raise ReleaseError(f"{where}.version: expected {RELEASE_VERSION}, got {got!r}")
    snp = body.get("sev_snp")
    if not isinstance(snp, dict) or not snp:
        raise ReleaseError(f"{where}.sev_snp: expected measurements per vCPU type, got {snp!r}")
    for cpu, value in snp.items():
        check_measurement(value, f"{where}.sev_snp.{cpu}")


def check_measurement(value: Any, where: str) -> str:
    """The measurement as lower-case hex (ReleaseError naming ``where`` unless 48 bytes of hex)."""
    if not isinstance(value, str) or len(value) != MEASUREMENT_HEX:
        raise ReleaseError(f"{where}: expected {MEASUREMENT_HEX} hex digits (48 bytes), got {value!r}")
    try:
        return bytes.fromhex(value).hex()
    except ValueError as exc:
        raise ReleaseError(f"{where}: expected hex digits, got {value!r}") from exc


def measurements_to_allow(measurement: list[str] | None, release: Path | None,
                          release_key: Path | None) -> list[str]:
    """The measurements to grant/allow: explicit, from a verified release, or the simulated TEE's (local)."""
    if measurement and release:
        raise ReleaseError("give --measurement or --release, not both")
    if release is not None:
        if release_key is None:
            raise ReleaseError(f"--release {release}: needs --release-key (the project's release public key, "
                               "pinned from a channel you trust)")
        body = verify_release(release, load_public_key(release_key))
        return sorted({check_measurement(v, "release") for v in body["sev_snp"].values()})
    if measurement:
        return [check_measurement(m, "--measurement") for m in measurement]
    from enclave.measurement import code_measurement  # the local stack's SIMULATED TEE only

    return [code_measurement().hex()]


def release_from_measure(measure: dict[str, Any], *, name: str, sbom: Path | None = None) -> dict[str, Any]:
    """The release object from ``cscore worker measure --json`` output (and the SBOM's digest)."""
    return {"name": name, "image": {**measure["artifacts"], "cmdline": measure["launch"]["cmdline"]},
            "launch": measure["launch"], "sev_snp": measure["sev_snp"], "tdx": None,
            "sbom_sha256": hashlib.sha256(sbom.read_bytes()).hexdigest() if sbom else None}
