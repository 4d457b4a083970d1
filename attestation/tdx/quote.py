"""Intel TDX quotes (DCAP, version 4 and 5): parse and verify.

Layout from Intel's TDX DCAP Quoting Library API (appendix: quote format), cross-checked with
google/go-tdx-guest. Verification: the quote signature (ECDSA P-256, raw r||s) by the attestation
key over header||body; the QE report signed by the PCK key; QE report_data[:32] equal to
SHA-256(attestation key || QE auth data); the PCK chain (PCK -> Platform/Processor CA -> Intel SGX
Root CA) valid at ``at`` and ending in the pinned Intel root. TCB status (Intel PCS collateral) is
evaluated in :mod:`attestation.tdx.collateral`. Errors are ParseError/VerificationError naming the field.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attestation.anchors import load_pem_certs
from attestation.errors import ParseError, VerificationError
from attestation.tdx.intel_root import pinned_intel_root, verify_intel_chain

HEADER_SIZE = 48
TD10_BODY, TD15_BODY = 584, 648
QE_REPORT_SIZE = 384
TEE_TDX = 0x81
CERT_TYPE_QE_REPORT, CERT_TYPE_PCK_CHAIN = 6, 5



@dataclass(frozen=True)
class TdxQuote:
    """The fields of a TDX quote that appraisal needs, and the parts verification uses."""

    version: int
    tee_type: int
    qe_vendor_id: bytes
    tee_tcb_svn: bytes
    mr_seam: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, ...]
    report_data: bytes
    signed: bytes  # header || body: what the attestation key signed
    signature: bytes
    attestation_key: bytes
    qe_report: bytes
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes
    mr_signer_seam: bytes = bytes(48)
    seam_attributes: bytes = bytes(8)
    body_type: int = 2  # 2: TDX 1.0 body (584 bytes), 3: TDX 1.5 body (648 bytes)
    tee_tcb_svn2: bytes = b""  # TDX 1.5 only
    mr_servicetd: bytes = b""  # TDX 1.5 only

    @property
    def debug(self) -> bool:
        """TD_ATTRIBUTES bit 0 (DEBUG): the host may inspect the TD."""
        return bool(self.td_attributes[0] & 1)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ParseError(f"quote.{what}", f"{n} more bytes at offset {self.pos}",
                             f"{len(self.data) - self.pos} left", "the quote is truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u16(self, what: str) -> int:
        return int(struct.unpack("<H", self.take(2, what))[0])

    def u32(self, what: str) -> int:
        return int(struct.unpack("<I", self.take(4, what))[0])


def parse_quote(data: bytes) -> TdxQuote:
    """Parse a TDX quote v4 or v5 (trailing zero padding allowed). Raises ParseError."""
    rd = _Reader(bytes(data))
    header = rd.take(HEADER_SIZE, "header")
    version, key_type, tee_type = struct.unpack_from("<HHI", header)
    if version not in (4, 5):
        raise ParseError("quote.version", "4 or 5", version)
    if key_type != 2 or tee_type != TEE_TDX:
        raise ParseError("quote.header", "ECDSA P-256 key (2), TDX (0x81)", f"key {key_type}, tee 0x{tee_type:x}")
    body_size, body_type = TD10_BODY, 2
    if version == 5:
        body_type, body_size = rd.u16("body_type"), rd.u32("body_size")
        if (body_type, body_size) not in ((2, TD10_BODY), (3, TD15_BODY)):
            raise ParseError("quote.body_type", "2 (584 bytes) or 3 (648 bytes)", f"{body_type} ({body_size})")
    body = rd.take(body_size, "body")
    signed = rd.data[:rd.pos]
    sig_len = rd.u32("signature_data_len")
    sig = _Reader(rd.take(sig_len, "signature_data"))
    return _assemble(version, header, body, signed, sig, body_type)


def _assemble(version: int, header: bytes, body: bytes, signed: bytes, sig: _Reader, body_type: int) -> TdxQuote:
    signature, att_key = sig.take(64, "signature"), sig.take(64, "attestation_key")
    if sig.u16("certification_data.type") != CERT_TYPE_QE_REPORT:
        raise ParseError("quote.certification_data.type", CERT_TYPE_QE_REPORT, "another type")
    qe = _Reader(sig.take(sig.u32("certification_data.size"), "certification_data"))
    qe_report, qe_sig = qe.take(QE_REPORT_SIZE, "qe_report"), qe.take(64, "qe_report_signature")
    auth = qe.take(qe.u16("qe_auth_data.size"), "qe_auth_data")
    if qe.u16("pck_certification_data.type") != CERT_TYPE_PCK_CHAIN:
        raise ParseError("quote.pck_certification_data.type", CERT_TYPE_PCK_CHAIN, "another type")
    pck = qe.take(qe.u32("pck_certification_data.size"), "pck_chain").rstrip(b"\x00")
    m = [body[o:o + 48] for o in range(16, 16 + 48 * 2, 48)]
    regs = [body[o:o + 48] for o in range(136, 136 + 48 * 8, 48)]
    return TdxQuote(
        version=version, tee_type=TEE_TDX, qe_vendor_id=header[12:28], tee_tcb_svn=body[:16], mr_seam=m[0],
        td_attributes=body[120:128], xfam=body[128:136], mr_td=regs[0], mr_config_id=regs[1], mr_owner=regs[2],
        mr_owner_config=regs[3], rtmrs=tuple(regs[4:8]), report_data=body[520:584], signed=signed,
        signature=signature, attestation_key=att_key, qe_report=qe_report, qe_report_signature=qe_sig,
        qe_auth_data=auth, pck_chain_pem=pck, mr_signer_seam=m[1], seam_attributes=body[112:120],
        body_type=body_type, tee_tcb_svn2=body[584:600], mr_servicetd=body[600:648],
    )


def _p256_verify(key: ec.EllipticCurvePublicKey, raw_sig: bytes, message: bytes, field: str, hint: str) -> None:
    r, s = int.from_bytes(raw_sig[:32], "big"), int.from_bytes(raw_sig[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise VerificationError(field, "a valid ECDSA P-256 signature", "an invalid one", hint) from exc


def verify_quote(data: bytes, at: datetime, intel_root: x509.Certificate | None = None) -> TdxQuote:
    """Parse and verify a TDX quote at time ``at``; return it. ``intel_root`` replaces the pinned
    Intel SGX Root CA (tests only)."""
    roots = (intel_root,) if intel_root is not None else (pinned_intel_root(),)
    return verify_quote_and_pck(data, at, roots)[0]


def verify_quote_and_pck(data: bytes, at: datetime,
                         roots: tuple[x509.Certificate, ...] | None = None) -> tuple[TdxQuote, x509.Certificate]:
    """As :func:`verify_quote`, trusting ``roots`` (default: the pinned Intel root); also returns the
    verified PCK certificate (for its SGX extensions). The PCK chain's root is ``certs[-1]`` of it."""
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    quote = parse_quote(data)
    try:
        att_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + quote.attestation_key)
    except ValueError as exc:
        raise VerificationError("quote.attestation_key", "a P-256 point", "an invalid one") from exc
    _p256_verify(att_key, quote.signature, quote.signed, "quote.signature",
                 "the quote was altered or signed by another key")
    pck = _verify_pck_chain(quote.pck_chain_pem, at, roots or (pinned_intel_root(),))
    pck_key = pck.public_key()
    if not isinstance(pck_key, ec.EllipticCurvePublicKey):
        raise VerificationError("quote.pck.public_key", "an EC P-256 key", type(pck_key).__name__)
    _p256_verify(pck_key, quote.qe_report_signature, quote.qe_report, "quote.qe_report_signature",
                 "the QE report was not signed by this platform's PCK")
    expected = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest() + bytes(32)
    if quote.qe_report[320:384] != expected:
        raise VerificationError("quote.qe_report.report_data", expected.hex(), quote.qe_report[320:384].hex(),
                                "the attestation key is not the one the quoting enclave certified")
    return quote, pck


def _verify_pck_chain(pem: bytes, at: datetime, roots: tuple[x509.Certificate, ...]) -> x509.Certificate:
    certs = load_pem_certs(pem, "quote.pck_chain")
    return verify_intel_chain(certs, at, roots, "quote.pck_chain", ("pck", "ca", "root"))
