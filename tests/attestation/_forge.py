"""Tools for building well-formed forgeries: certificates re-issued by other keys under the same names,
and SEV-SNP evidence signed by any key over any report fields (through the simulated TEE provider).

A forgery built here is correct in every way except the one a check guards, so a test that uses it fails
exactly when that check is removed.
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from attestation import Evidence
from attestation.snp.report import SnpReport
from enclave.tee import SimulatedSnpProvider

MEASUREMENT = bytes(range(48))
NONCE = bytes(range(100, 164))
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def reissue(cert: x509.Certificate, signer: SigningKey, *, public_key: Any = None, issuer: x509.Name | None = None,
            not_before: datetime | None = None, not_after: datetime | None = None,
            extensions: list[x509.Extension[Any]] | None = None, pss: bool = True,
            digest: hashes.SHA256 | hashes.SHA384 | None = None) -> x509.Certificate:
    """A copy of ``cert`` (same subject, key, extensions, validity unless replaced) signed by ``signer``:
    RSA keys sign RSA-PSS/SHA-384 (AMD's scheme; PKCS#1 v1.5 when not ``pss``), EC keys ECDSA/SHA-256
    (Intel's); ``digest`` replaces the hash."""
    builder = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(issuer or cert.issuer)
               .public_key(public_key or cert.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before or cert.not_valid_before_utc)
               .not_valid_after(not_after or cert.not_valid_after_utc))
    for ext in cert.extensions if extensions is None else extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    if isinstance(signer, rsa.RSAPrivateKey):
        return builder.sign(signer, digest or hashes.SHA384(), rsa_padding=_PSS if pss else padding.PKCS1v15())
    return builder.sign(signer, digest or hashes.SHA256())


def pem(*certs: x509.Certificate) -> str:
    """The certificates as one PEM text, in order."""
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


class _ForgingProvider(SimulatedSnpProvider):
    """The simulated TEE, with chosen report fields replaced before signing."""

    def __init__(self, sim_dir: Path, overrides: dict[str, Any]) -> None:
        super().__init__(sim_dir, MEASUREMENT)
        self._overrides = overrides

    def _report(self, report_data: bytes) -> SnpReport:
        return replace(super()._report(report_data), **self._overrides)


def snp_evidence(tmp: Path, signer: ec.EllipticCurvePrivateKey, leaf: x509.Certificate,
                 chain: list[x509.Certificate], **report: Any) -> Evidence:
    """SEV-SNP evidence whose report (TCB and chip id read from ``leaf``, fields in ``report`` replaced)
    is signed by ``signer``, sent with ``leaf`` and ``chain`` (ASK/ASVK then ARK, or fewer)."""
    folder = tmp / secrets.token_hex(4)
    folder.mkdir()
    key_pem = signer.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
    (folder / "vcek.key").write_bytes(key_pem)
    (folder / "vcek.der").write_bytes(leaf.public_bytes(serialization.Encoding.DER))
    (folder / "ask_ark.pem").write_text(pem(*chain))
    return _ForgingProvider(folder, report).get_evidence(NONCE)
