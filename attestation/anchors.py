"""Trust anchors: the root certificates a verifier accepts, and where each came from.

``TrustAnchors.amd()`` holds AMD's pinned ARKs (Milan, Genoa, Turin) and their ASK/ASVK
intermediates. ``TrustAnchors.from_dir(path)`` adds a simulated ARK found at ``path/ark.pem``
(see :mod:`attestation.simulated`); evidence that chains to it gets ``claims.root == "simulated"``,
which a production policy (``allowed_roots=["amd"]``) refuses.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from attestation.errors import ParseError, VerificationError
from attestation.snp.amd_roots import PINNED

_PRODUCT_RE = re.compile(r"\b(?:ARK|SEV)-(?:VLEK-)?(Milan|Genoa|Turin)\b")


@dataclass(frozen=True)
class Root:
    """One trusted root: the self-signed ARK, its product and its kind ("amd" or "simulated")."""

    cert: x509.Certificate
    product: str
    kind: str

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the DER certificate, hex."""
        return self.cert.fingerprint(hashes.SHA256()).hex()


@dataclass(frozen=True)
class TrustAnchors:
    """Roots a verifier trusts, plus known intermediates used when evidence carries no chain."""

    roots: tuple[Root, ...]
    intermediates: tuple[x509.Certificate, ...] = ()
    # Intel SGX-style roots trusted besides the pinned Intel SGX Root CA (always trusted for TDX);
    # evidence or collateral chaining to one of these gets ``claims.root == "simulated"``.
    intel_roots: tuple[x509.Certificate, ...] = ()

    @classmethod
    def amd(cls) -> TrustAnchors:
        """AMD's ARKs for Milan, Genoa and Turin, each checked against its pinned fingerprint."""
        roots, inter = [], []
        for (product, role), (fingerprint, pem) in PINNED.items():
            cert = _load_pinned(pem, fingerprint, f"{product} {role.upper()}")
            if role == "ark":
                check_self_signed(cert, f"pinned ARK-{product}")
                roots.append(Root(cert, product, "amd"))
            else:
                inter.append(cert)
        return cls(tuple(roots), tuple(inter))

    @classmethod
    def from_dir(cls, path: str | Path) -> TrustAnchors:
        """AMD's roots plus the simulated ARK in ``path/ark.pem`` (and ASK from ``ask_ark.pem``).

        A directory without ``ark.pem`` adds nothing. An ``ark.pem`` identical to a pinned AMD
        ARK stays "amd"; any other root found there is marked "simulated".
        """
        base = cls.amd()
        ark_path = Path(path) / "ark.pem"
        if not ark_path.is_file():
            return base
        ark = load_pem_certs(ark_path.read_bytes(), str(ark_path))[0]
        check_self_signed(ark, str(ark_path))
        if any(r.cert == ark for r in base.roots):
            return base
        root = Root(ark, product_from_name(ark, str(ark_path)), "simulated")
        extra: list[x509.Certificate] = []
        chain_path = Path(path) / "ask_ark.pem"
        if chain_path.is_file():
            extra = [c for c in load_pem_certs(chain_path.read_bytes(), str(chain_path)) if c != ark]
        return cls(base.roots + (root,), base.intermediates + tuple(extra))

    def root_for(self, cert: x509.Certificate) -> Root | None:
        """The trusted root equal to ``cert``, if any."""
        return next((r for r in self.roots if r.cert == cert), None)


def _load_pinned(pem: str, fingerprint: str, what: str) -> x509.Certificate:
    cert = load_pem_certs(pem.encode(), what)[0]
    actual = cert.fingerprint(hashes.SHA256()).hex()
    if actual != fingerprint:
        raise VerificationError(f"anchors.{what}", f"SHA-256 fingerprint {fingerprint}", actual,
                                "the packaged AMD certificate was modified; reinstall cscore")
    return cert


def load_pem_certs(data: bytes, where: str) -> list[x509.Certificate]:
    """Load every certificate in a PEM blob. ParseError if there is none or one is malformed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # AMD certificates use serial 0, which cryptography warns about
            certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ParseError(where, "PEM certificates", f"unreadable data ({exc})") from exc
    return certs


def load_der_cert(data: bytes, where: str) -> x509.Certificate:
    """Load one DER certificate. ParseError if malformed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # AMD VCEKs have serial number 0
            return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise ParseError(where, "a DER X.509 certificate", f"unreadable data ({exc})") from exc


def product_from_name(cert: x509.Certificate, where: str) -> str:
    """The product named in an AMD-style subject CN (ARK-Milan, SEV-VLEK-Genoa, ...)."""
    match = _PRODUCT_RE.search(cert.subject.rfc4514_string())
    if not match:
        raise ParseError(f"{where}.subject", "a name containing ARK-/SEV-<Milan|Genoa|Turin>",
                         cert.subject.rfc4514_string())
    return match.group(1)


def check_signed_by(cert: x509.Certificate, issuer: x509.Certificate, where: str) -> None:
    """Check ``cert`` is signed by ``issuer`` with RSA-PSS/SHA-384 (AMD's scheme) or ECDSA.

    Raises VerificationError naming ``where`` otherwise.
    """
    if cert.issuer != issuer.subject:
        raise VerificationError(f"{where}.issuer", issuer.subject.rfc4514_string(),
                                cert.issuer.rfc4514_string(), "the chain does not link up")
    key = issuer.public_key()
    params = cert.signature_algorithm_parameters
    if not isinstance(key, rsa.RSAPublicKey) or not isinstance(params, padding.PSS):
        raise VerificationError(f"{where}.signature_algorithm", "RSA-PSS with SHA-384",
                                cert.signature_algorithm_oid.dotted_string)
    digest = cert.signature_hash_algorithm
    if key.key_size < 2048 or not isinstance(digest, hashes.SHA384):
        raise VerificationError(f"{where}.signature_algorithm", "RSA >= 2048 bits, SHA-384",
                                f"RSA {key.key_size}, {digest.name if digest else 'no hash'}")
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes, params, hashes.SHA384())
    except InvalidSignature as exc:
        raise VerificationError(f"{where}.signature", f"a valid signature by {issuer.subject.rfc4514_string()}",
                                "an invalid one", "the certificate was altered or issued by another key") from exc


def check_self_signed(cert: x509.Certificate, where: str) -> None:
    """A root must be self-signed (RSA-PSS SHA-384)."""
    check_signed_by(cert, cert, where)
