"""Verify an SEV-SNP report: the report's ECDSA signature, the VCEK/VLEK certificate chain to a
trusted ARK, validity at a given time, and the VCEK's TCB/hwID extensions against the report.

Verification never appraises (measurement, debug, TCB minimums are policy: see
:func:`attestation.appraise`). Order: chain first (who signed), then the report signature, then
the certificate-to-report bindings. Every failure raises ParseError or VerificationError.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attestation.anchors import (
    Root,
    TrustAnchors,
    check_signed_by,
    load_der_cert,
    load_pem_certs,
    product_from_name,
)
from attestation.errors import ParseError, VerificationError
from attestation.snp.report import SIG_ALGO_ECDSA_P384_SHA384, SnpReport, parse_report

AMD_OID = "1.3.6.1.4.1.3704.1"
OID_PRODUCT_NAME = f"{AMD_OID}.2"
OID_HWID = f"{AMD_OID}.4"
TCB_OIDS = {
    "bootloader": f"{AMD_OID}.3.1",
    "tee": f"{AMD_OID}.3.2",
    "snp": f"{AMD_OID}.3.3",
    "microcode": f"{AMD_OID}.3.8",
    "fmc": f"{AMD_OID}.3.9",  # Turin only
}
_P384_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973


@dataclass(frozen=True)
class VerifiedSnp:
    """What verification established: the parsed report, its product and signer, and the root."""

    report: SnpReport
    product: str
    signing_key: str  # "vcek" | "vlek"
    root: Root
    leaf: x509.Certificate


def verify_snp(report: bytes, leaf_der: bytes, chain_pem: str | bytes, anchors: TrustAnchors,
               at: datetime) -> VerifiedSnp:
    """Verify raw report bytes with the VCEK/VLEK (DER) and its ASK/ASVK-then-ARK chain (PEM).

    ``chain_pem`` may be empty: then the anchors' known intermediates are used. ``at`` is the
    time certificates must be valid at (naive datetimes are taken as UTC).
    """
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    leaf = load_der_cert(leaf_der, "evidence.vcek")
    chain = load_pem_certs(chain_pem.encode() if isinstance(chain_pem, str) else chain_pem,
                           "evidence.cert_chain") if chain_pem else []
    intermediate, root = _verify_chain(leaf, chain, anchors, at)
    product = root.product
    parsed = parse_report(report, product=product)
    signing_key = _check_signer_kind(parsed, leaf, intermediate)
    check_report_signature(parsed, leaf)
    _check_product_name(leaf, product)
    check_tcb_extensions(parsed, leaf)
    if signing_key == "vcek" and not parsed.mask_chip_id:
        check_hwid(parsed, leaf)
    return VerifiedSnp(parsed, product, signing_key, root, leaf)


def _verify_chain(leaf: x509.Certificate, chain: list[x509.Certificate], anchors: TrustAnchors,
                  at: datetime) -> tuple[x509.Certificate, Root]:
    """Find the leaf's issuer and a trusted root above it; check every signature and validity."""
    roots_in_chain = [c for c in chain if c.issuer == c.subject]
    for cert in roots_in_chain:
        if anchors.root_for(cert) is None:
            raise VerificationError(
                "evidence.cert_chain.ark", "one of the trusted ARKs "
                f"({', '.join(r.cert.subject.rfc4514_string() for r in anchors.roots)})",
                f"{cert.subject.rfc4514_string()} (sha256 {cert.fingerprint(hashes.SHA256()).hex()})",
                "the chain ends in a root this verifier does not trust")
    candidates = [c for c in chain if c.issuer != c.subject] or list(anchors.intermediates)
    intermediate = next((c for c in candidates if c.subject == leaf.issuer), None)
    if intermediate is None:
        raise VerificationError(
            "evidence.cert_chain.ask", f"a certificate for the VCEK's issuer {leaf.issuer.rfc4514_string()}",
            ", ".join(c.subject.rfc4514_string() for c in candidates) or "no certificate",
            "the chain belongs to another product or signer; send the ASK (or ASVK) that issued this key")
    root = next((r for r in anchors.roots if r.cert.subject == intermediate.issuer), None)
    if root is None:
        raise VerificationError("evidence.cert_chain.ask.issuer", "a trusted ARK",
                                intermediate.issuer.rfc4514_string(), "the ASK chains to an unknown root")
    check_signed_by(intermediate, root.cert, "evidence.cert_chain.ask")
    check_signed_by(leaf, intermediate, "evidence.vcek")
    for cert, where in ((leaf, "evidence.vcek"), (intermediate, "evidence.cert_chain.ask"),
                        (root.cert, "evidence.cert_chain.ark")):
        check_validity(cert, at, where)
    return intermediate, root


def check_validity(cert: x509.Certificate, at: datetime, where: str) -> None:
    """The certificate must be valid at ``at``."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if not start <= at <= end:
        raise VerificationError(f"{where}.validity", f"{start.isoformat()} .. {end.isoformat()}",
                                at.isoformat(), "the certificate is expired or not yet valid at that time")


def _check_signer_kind(report: SnpReport, leaf: x509.Certificate, intermediate: x509.Certificate) -> str:
    """VCEK reports chain through an ASK, VLEK reports through an ASVK (SEV-VLEK-<product>)."""
    if report.signing_key == "none":
        raise VerificationError("report.signer_info.signing_key", "vcek or vlek", "none",
                                "the report is unsigned")
    via_asvk = "VLEK" in intermediate.subject.rfc4514_string()
    leaf_is_vlek = "VLEK" in leaf.subject.rfc4514_string()
    if (report.signing_key == "vlek") != via_asvk or leaf_is_vlek != via_asvk:
        expected = "a VLEK issued by an ASVK" if report.signing_key == "vlek" else "a VCEK issued by an ASK"
        raise VerificationError("evidence.vcek", expected,
                                f"{leaf.subject.rfc4514_string()} issued by {intermediate.subject.rfc4514_string()}",
                                "the report's SIGNING_KEY does not match the certificate sent")
    product_from_name(intermediate, "evidence.cert_chain.ask")
    return report.signing_key


def check_report_signature(report: SnpReport, leaf: x509.Certificate) -> None:
    """ECDSA P-384 / SHA-384 over bytes 0x000..0x29F of the raw report, by the leaf's key."""
    if report.signature_algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise VerificationError("report.signature_algo", "1 (ECDSA P-384 with SHA-384)", report.signature_algo)
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise VerificationError("evidence.vcek.public_key", "an EC P-384 key", type(key).__name__)
    r, s = report.signature_r, report.signature_s
    try:
        if not (0 < r < _P384_ORDER and 0 < s < _P384_ORDER):
            raise InvalidSignature
        key.verify(encode_dss_signature(r, s), report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature as exc:
        raise VerificationError("report.signature", "a valid ECDSA P-384 signature by the VCEK",
                                "an invalid one", "the report was altered or signed by another chip") from exc


def extension_bytes(cert: x509.Certificate, oid: str) -> bytes | None:
    """Raw value of an extension (AMD's are unrecognised extensions), or None if absent."""
    try:
        value = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid)).value
    except x509.ExtensionNotFound:
        return None
    return bytes(getattr(value, "value", b""))


def _der_small_int(data: bytes, where: str) -> int:
    """Decode a DER INTEGER (AMD's SPL extensions are INTEGER 0..255)."""
    if len(data) < 3 or data[0] != 0x02 or data[1] != len(data) - 2 or data[1] > 2:
        raise ParseError(where, "a DER INTEGER", data)
    return int.from_bytes(data[2:], "big", signed=True)


def check_tcb_extensions(report: SnpReport, leaf: x509.Certificate) -> None:
    """The certificate's TCB extensions must equal the report's REPORTED_TCB, component by component."""
    for name, value in report.reported_tcb.as_dict().items():
        raw = extension_bytes(leaf, TCB_OIDS[name])
        if raw is None:
            raise VerificationError(f"evidence.vcek.tcb.{name}", f"extension {TCB_OIDS[name]}", "absent")
        cert_value = _der_small_int(raw, f"evidence.vcek.tcb.{name}")
        if cert_value != value:
            raise VerificationError(f"report.reported_tcb.{name}", f"{cert_value} (certified by the VCEK)",
                                    value, "the VCEK was issued for another TCB; fetch the VCEK for this TCB")


def check_hwid(report: SnpReport, leaf: x509.Certificate) -> None:
    """The VCEK's hwID extension must equal CHIP_ID (Turin: 8 bytes, the rest of CHIP_ID zero)."""
    hwid = extension_bytes(leaf, OID_HWID)
    if hwid is None:
        raise VerificationError("evidence.vcek.hwid", f"extension {OID_HWID}", "absent")
    expected = hwid + bytes(len(report.chip_id) - len(hwid)) if len(hwid) < len(report.chip_id) else hwid
    if expected != report.chip_id:
        raise VerificationError("report.chip_id", f"{hwid.hex()} (the VCEK's hwID)", report.chip_id.hex(),
                                "the VCEK belongs to another chip")


def _check_product_name(leaf: x509.Certificate, product: str) -> None:
    raw = extension_bytes(leaf, OID_PRODUCT_NAME)
    if raw is None:
        return  # VLEKs and older VCEKs may omit it; the chain already fixed the product
    name = raw[2:].decode("ascii", "replace") if len(raw) > 2 else ""
    if not name.startswith(product):
        raise VerificationError("evidence.vcek.product_name", product, name,
                                "the VCEK's product differs from its chain's")
