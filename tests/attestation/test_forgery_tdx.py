"""TDX forgeries built from a real quote (go-tdx-guest's SPR E4 quote): its PCK chain re-issued under a
simulated Intel root with Intel's very names, its attestation key replaced, its QE report re-bound and
re-signed. Each forgery is correct except for the one link a check guards; the refusal is exact.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from attestation import Evidence, TrustAnchors, verify_evidence
from attestation.anchors import load_pem_certs
from attestation.errors import ParseError, VerificationError
from attestation.tdx import parse_quote, verify_quote
from attestation.tdx.intel_root import INTEL_ROOT_SHA256, pinned_intel_root
from tests.attestation._attestation_data import read
from tests.attestation._forge import pem, reissue

BASE = read("tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat")
AT = datetime(2026, 1, 1, tzinfo=UTC)  # inside every certificate of the real chain
_REAL_PCK, _REAL_CA, _REAL_ROOT = load_pem_certs(parse_quote(BASE).pck_chain_pem, "real")


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@dataclass(frozen=True)
class Intel:
    """An Intel-shaped hierarchy (Intel's subject names and PCK extensions, our keys)."""

    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    ca: x509.Certificate
    pck_key: ec.EllipticCurvePrivateKey
    pck: x509.Certificate

    @classmethod
    def generate(cls) -> Intel:
        root_key, ca_key, pck_key = _key(), _key(), _key()
        root = reissue(_REAL_ROOT, root_key, public_key=root_key.public_key())
        ca = reissue(_REAL_CA, root_key, public_key=ca_key.public_key())
        return cls(root_key, root, ca_key, ca, pck_key, reissue(_REAL_PCK, ca_key, public_key=pck_key.public_key()))

    @property
    def chain(self) -> list[x509.Certificate]:
        return [self.pck, self.ca, self.root]


@pytest.fixture(scope="module")
def intel() -> Intel:
    return Intel.generate()


@pytest.fixture(scope="module")
def rogue() -> Intel:
    return Intel.generate()


@pytest.fixture(scope="module")
def anchors(intel: Intel) -> TrustAnchors:
    return dataclasses.replace(TrustAnchors.amd(), intel_roots=(intel.root,))


def _raw_sign(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _point(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]


def forge_quote(chain: list[x509.Certificate], pck_signer: ec.EllipticCurvePrivateKey, *,
                att_key: ec.EllipticCurvePrivateKey | None = None,
                quote_signer: ec.EllipticCurvePrivateKey | None = None,
                bound: bytes | None = None, auth: bytes | None = None, signed: bytes | None = None) -> bytes:
    """The real quote's header and body (or ``signed``, the same length), signed by a fresh attestation key; its
    QE report re-bound to that key (or to ``bound``: the 64 report_data bytes) and signed by ``pck_signer``;
    ``chain`` as PCK chain."""
    base = parse_quote(BASE)
    base = base if signed is None else dataclasses.replace(base, signed=signed)
    att_key = att_key or _key()
    auth = base.qe_auth_data if auth is None else auth
    certified = hashlib.sha256(_point(att_key) + base.qe_auth_data).digest() + bytes(32)
    report_data = bound if bound is not None else certified
    qe_report = base.qe_report[:320] + report_data
    chain_pem = pem(*chain).encode()
    cert_data = (qe_report + _raw_sign(pck_signer, qe_report) + struct.pack("<H", len(auth)) + auth
                 + struct.pack("<HI", 5, len(chain_pem)) + chain_pem)
    sig_data = (_raw_sign(quote_signer or att_key, base.signed) + _point(att_key)
                + struct.pack("<HI", 6, len(cert_data)) + cert_data)
    return base.signed + struct.pack("<I", len(sig_data)) + sig_data


def _refused(quote: bytes | Evidence, anchors: TrustAnchors, at: datetime = AT) -> VerificationError:
    evidence = quote if isinstance(quote, Evidence) else Evidence(tee="tdx", report=quote)
    with pytest.raises(VerificationError) as err:
        verify_evidence(evidence, anchors, at)
    return err.value


def test_forged_quote_under_the_simulated_root_verifies(intel: Intel, anchors: TrustAnchors) -> None:
    claims = verify_evidence(Evidence(tee="tdx", report=forge_quote(intel.chain, intel.pck_key)), anchors, AT)
    assert (claims.root, claims.signing_key) == ("simulated", "pck")
    assert claims.measurement == parse_quote(BASE).mr_td.hex()


def test_only_the_pinned_root_or_the_simulated_one_is_trusted(intel: Intel) -> None:
    err = _refused(forge_quote(intel.chain, intel.pck_key), TrustAnchors.amd())
    assert (err.field, err.expected, err.actual, err.hint) == (
        "quote.pck_chain.root", f"Intel SGX Root CA (sha256 {INTEL_ROOT_SHA256})",
        intel.root.fingerprint(hashes.SHA256()).hex(), "the chain ends in an untrusted root")


def test_a_packaged_intel_root_other_than_the_pinned_one_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The packaged Intel SGX Root CA is checked against its pinned fingerprint before any quote is trusted: with
    another fingerprint pinned, Intel's genuine quote is refused naming the packaged root and what to do."""
    import attestation.tdx.intel_root

    genuine = pinned_intel_root().fingerprint(hashes.SHA256()).hex()
    monkeypatch.setattr(attestation.tdx.intel_root, "INTEL_ROOT_SHA256", "0" * 64)
    err = _refused(BASE, TrustAnchors.amd())
    assert (err.field, err.expected, err.actual, err.hint) == (
        "anchors.intel_root", f"SHA-256 fingerprint {'0' * 64}", genuine,
        "the packaged Intel certificate was modified; reinstall cscore")


def test_rogue_names_equal_the_trusted_ones(intel: Intel, rogue: Intel) -> None:
    for mine, theirs, real in zip(intel.chain, rogue.chain, (_REAL_PCK, _REAL_CA, _REAL_ROOT), strict=True):
        assert mine.subject == theirs.subject == real.subject and mine.issuer == theirs.issuer == real.issuer
        assert mine.public_key() != theirs.public_key()


# -- the attestation key must be the one the quoting enclave certified --------------------------------

def test_attestation_key_not_bound_to_the_qe_report(intel: Intel, anchors: TrustAnchors) -> None:
    certified, used = _key(), _key()
    auth = parse_quote(BASE).qe_auth_data
    bound = hashlib.sha256(_point(certified) + auth).digest() + bytes(32)
    err = _refused(forge_quote(intel.chain, intel.pck_key, att_key=used, bound=bound), anchors)
    expected = hashlib.sha256(_point(used) + auth).digest() + bytes(32)
    assert (err.field, err.expected, err.actual) == ("quote.qe_report.report_data", expected.hex(), bound.hex())


def test_qe_report_data_equal_on_its_first_half_only(intel: Intel, anchors: TrustAnchors) -> None:
    att = _key()
    digest = hashlib.sha256(_point(att) + parse_quote(BASE).qe_auth_data).digest()
    err = _refused(forge_quote(intel.chain, intel.pck_key, att_key=att, bound=digest + b"\x01" * 32), anchors)
    assert (err.field, err.actual) == ("quote.qe_report.report_data", (digest + b"\x01" * 32).hex())


def test_qe_auth_data_other_than_the_certified_one(intel: Intel, anchors: TrustAnchors) -> None:
    err = _refused(forge_quote(intel.chain, intel.pck_key, auth=b"\x07" * 32), anchors)  # bound over the real one
    assert err.field == "quote.qe_report.report_data"


def test_quote_signed_by_a_key_other_than_the_attestation_key(intel: Intel, anchors: TrustAnchors) -> None:
    err = _refused(forge_quote(intel.chain, intel.pck_key, quote_signer=_key()), anchors)
    assert (err.field, err.expected, err.actual) == ("quote.signature", "a valid ECDSA P-256 signature",
                                                     "an invalid one")


def test_qe_report_signed_by_a_key_other_than_the_pck(intel: Intel, anchors: TrustAnchors) -> None:
    err = _refused(forge_quote(intel.chain, _key()), anchors)
    assert (err.field, err.expected, err.actual) == ("quote.qe_report_signature", "a valid ECDSA P-256 signature",
                                                     "an invalid one")
    assert "not signed by this platform's PCK" in str(err)


# -- each signature step of the PCK chain, with Intel's names and a second hierarchy -------------------

def test_pck_certificate_not_signed_by_its_ca(intel: Intel, rogue: Intel, anchors: TrustAnchors) -> None:
    err = _refused(forge_quote([rogue.pck, intel.ca, intel.root], rogue.pck_key), anchors)
    assert (err.field, err.expected, err.actual) == (
        "quote.pck_chain.pck", f"issued by {intel.ca.subject.rfc4514_string()}", rogue.pck.issuer.rfc4514_string())


def test_ca_certificate_not_signed_by_the_root(intel: Intel, rogue: Intel, anchors: TrustAnchors) -> None:
    err = _refused(forge_quote([rogue.pck, rogue.ca, intel.root], rogue.pck_key), anchors)
    assert (err.field, err.expected) == ("quote.pck_chain.ca", f"issued by {intel.root.subject.rfc4514_string()}")


def test_rogue_root_with_intel_names_is_not_trusted(rogue: Intel, anchors: TrustAnchors) -> None:
    err = _refused(forge_quote(rogue.chain, rogue.pck_key), anchors)
    assert err.field == "quote.pck_chain.root"


def test_pck_chain_of_the_wrong_length_is_a_parse_error(intel: Intel, anchors: TrustAnchors) -> None:
    with pytest.raises(ParseError) as err:
        verify_evidence(Evidence(tee="tdx", report=forge_quote([intel.pck, intel.root], intel.pck_key)), anchors, AT)
    assert (err.value.field, err.value.actual) == ("quote.pck_chain", 2)


@pytest.mark.parametrize("which", ["pck", "ca", "root"])
@pytest.mark.parametrize("when", ["expired", "not yet valid"])
def test_each_pck_chain_certificate_must_be_valid_at_the_time(intel: Intel, which: str, when: str) -> None:
    dates = ({"not_before": AT - timedelta(days=9), "not_after": AT - timedelta(days=1)} if when == "expired"
             else {"not_before": AT + timedelta(days=1)})
    pck, ca, root = intel.chain
    if which == "pck":
        pck = reissue(pck, intel.ca_key, **dates)  # type: ignore[arg-type]
    elif which == "ca":
        ca = reissue(ca, intel.root_key, **dates)  # type: ignore[arg-type]
    else:
        root = reissue(root, intel.root_key, **dates)  # type: ignore[arg-type]
    anchors = dataclasses.replace(TrustAnchors.amd(), intel_roots=(root,))
    err = _refused(forge_quote([pck, ca, root], intel.pck_key), anchors)
    cert = {"pck": pck, "ca": ca, "root": root}[which]
    assert (err.field, err.expected, err.actual) == (
        f"quote.pck_chain.{which}.validity",
        f"{cert.not_valid_before_utc.isoformat()} .. {cert.not_valid_after_utc.isoformat()}", AT.isoformat())
    assert err.hint == "the certificate is expired or not yet valid at that time"


# -- collateral (TCB Info, QE Identity) signed under a hierarchy with Intel's names ---------------------

V5 = read("tdx/go-tdx-guest/quote_v5_sample.dat")
AT_V5 = datetime(2026, 6, 1, tzinfo=UTC)  # inside the v5 quote's PCK validity
_REAL_SIGNING = load_pem_certs(read("tdx/go-tdx-guest/tcbInfoIssuerChain.pem"), "real")[0]
_TCB_INFO = read("tdx/go-tdx-guest/sample_tcbinfo_response_v5").replace(b"2026-03-03T14:49:26Z",
                                                                         b"2026-06-20T00:00:00Z")
_QE_IDENTITY = (read("tdx/go-tdx-guest/sample_qeIdentity_response")
                .replace(b"2023-06-08T07:24:59Z", b"2026-05-20T00:00:00Z")
                .replace(b"2023-07-08T07:24:59Z", b"2026-06-20T00:00:00Z"))


@dataclass(frozen=True)
class TcbSigning:
    """A TCB Signing certificate with Intel's name under an Intel-named root (our keys)."""

    root: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def under(cls, intel: Intel) -> TcbSigning:
        key = _key()
        cert = reissue(_REAL_SIGNING, intel.root_key, public_key=key.public_key(),
                       not_after=datetime(2030, 1, 1, tzinfo=UTC))
        return cls(intel.root, key, cert)

    @property
    def chain(self) -> str:
        return pem(self.cert, self.root)


def _signed(raw: bytes, member: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """The collateral document with its signature replaced by ``key``'s over the signed member."""
    start, end = raw.index(b"{", raw.index(member)), raw.rindex(b',"signature"')
    return raw[:end] + b',"signature":"' + _raw_sign(key, raw[start:end]).hex().encode() + b'"}'


def _collateral(tcb_key: ec.EllipticCurvePrivateKey, tcb_chain: str, qe_key: ec.EllipticCurvePrivateKey,
                qe_chain: str) -> Evidence:
    from attestation.tdx.collateral import TdxCollateral

    collateral = TdxCollateral(_signed(_TCB_INFO, b'"tcbInfo"', tcb_key), _signed(_QE_IDENTITY, b'"enclaveIdentity"',
                                                                                  qe_key), tcb_chain, qe_chain)
    return Evidence(tee="tdx", report=V5, collateral=collateral)


@pytest.fixture(scope="module")
def signing(intel: Intel) -> TcbSigning:
    return TcbSigning.under(intel)


def test_collateral_under_the_simulated_root_gives_a_tcb_status(signing: TcbSigning, anchors: TrustAnchors) -> None:
    claims = verify_evidence(_collateral(signing.key, signing.chain, signing.key, signing.chain), anchors, AT_V5)
    assert (claims.tcb_status, claims.root) == ("UpToDate", "simulated")  # the quote's root is Intel's; this is not


@pytest.mark.parametrize("document", ["tcb_info", "qe_identity"])
def test_collateral_signing_certificate_not_issued_by_the_root(signing: TcbSigning, rogue: Intel,
                                                               anchors: TrustAnchors, document: str) -> None:
    forged = TcbSigning.under(rogue)  # Intel's names, issued by the rogue root, sent with the trusted root
    chains = {"tcb_info": signing.chain, "qe_identity": signing.chain, document: pem(forged.cert, signing.root)}
    keys = {"tcb_info": signing.key, "qe_identity": signing.key, document: forged.key}
    err = _refused(_collateral(keys["tcb_info"], chains["tcb_info"], keys["qe_identity"], chains["qe_identity"]),
                   anchors, AT_V5)
    assert (err.field, err.expected) == (f"{document}.issuer_chain.signing",
                                         f"issued by {signing.root.subject.rfc4514_string()}")


@pytest.mark.parametrize("document", ["tcb_info", "qe_identity"])
def test_collateral_signed_by_a_key_other_than_its_certificate(signing: TcbSigning, anchors: TrustAnchors,
                                                               document: str) -> None:
    keys = {"tcb_info": signing.key, "qe_identity": signing.key, document: _key()}
    err = _refused(_collateral(keys["tcb_info"], signing.chain, keys["qe_identity"], signing.chain), anchors, AT_V5)
    assert (err.field, err.expected, err.actual, err.hint) == (
        f"{document}.signature", f"a valid signature by {signing.cert.subject.rfc4514_string()}", "an invalid one",
        "the collateral was altered")


def test_tdx_refusals_carry_what_to_do(intel: Intel, rogue: Intel, anchors: TrustAnchors) -> None:
    certified, auth = _key(), parse_quote(BASE).qe_auth_data
    unbound = hashlib.sha256(_point(certified) + auth).digest() + bytes(32)
    cases = {
        "the quote was altered or signed by another key": forge_quote(intel.chain, intel.pck_key, quote_signer=_key()),
        "the QE report was not signed by this platform's PCK": forge_quote(intel.chain, _key()),
        "the attestation key is not the one the quoting enclave certified": forge_quote(
            intel.chain, intel.pck_key, bound=unbound),
        "the chain does not verify": forge_quote([rogue.pck, intel.ca, intel.root], rogue.pck_key),
        "the chain ends in an untrusted root": forge_quote(rogue.chain, rogue.pck_key),
    }
    for hint, quote in cases.items():
        err = _refused(quote, anchors)
        assert err.hint == hint and str(err).endswith(f"; {hint}"), (hint, str(err))


@pytest.mark.parametrize("edge", ["first", "last"])
def test_pck_chain_holds_on_its_first_and_last_second(intel: Intel, edge: str) -> None:
    start, end = AT - timedelta(days=1), AT + timedelta(days=1)
    pck = reissue(intel.pck, intel.ca_key, not_before=start, not_after=end)
    anchors = dataclasses.replace(TrustAnchors.amd(), intel_roots=(intel.root,))
    quote = forge_quote([pck, intel.ca, intel.root], intel.pck_key)
    assert verify_evidence(Evidence(tee="tdx", report=quote), anchors, start if edge == "first" else end).tee == "tdx"


def test_verify_quote_trusts_the_root_it_is_given_instead_of_intels(intel: Intel) -> None:
    """`verify_quote(..., intel_root=)` (tests' hook) trusts that root, and only it: the pinned one then refuses."""
    quote = forge_quote(intel.chain, intel.pck_key)
    assert verify_quote(quote, AT, intel_root=intel.root).mr_td == parse_quote(BASE).mr_td
    with pytest.raises(VerificationError) as err:
        verify_quote(quote, AT)
    assert (err.value.field, err.value.actual) == ("quote.pck_chain.root",
                                                   intel.root.fingerprint(hashes.SHA256()).hex())


def test_a_time_in_another_zone_is_the_same_instant(intel: Intel) -> None:
    """An aware time is compared as the instant it names: one second before the PCK's validity, written at
    UTC+05:00, is refused (read as UTC it would fall five hours later, inside it)."""
    before = intel.pck.not_valid_before_utc - timedelta(seconds=1)
    quote = forge_quote(intel.chain, intel.pck_key)
    with pytest.raises(VerificationError) as err:
        verify_quote(quote, before.astimezone(timezone(timedelta(hours=5))), intel_root=intel.root)
    assert err.value.field.startswith("quote.pck_chain")


def test_a_pck_chain_that_is_not_pem_is_named(intel: Intel) -> None:
    with pytest.raises(ParseError) as err:
        verify_quote(forge_quote([], intel.pck_key), AT, intel_root=intel.root)
    assert (err.value.field, err.value.expected) == ("quote.pck_chain", "PEM certificates")
    assert str(err.value.actual).startswith("unreadable data (")


def test_an_attestation_key_off_the_curve_is_named(intel: Intel) -> None:
    quote = bytearray(forge_quote(intel.chain, intel.pck_key))
    at = len(parse_quote(BASE).signed) + 4 + 64
    quote[at:at + 64] = bytes(64)  # (0, 0) is no P-256 point
    with pytest.raises(VerificationError) as err:
        verify_quote(bytes(quote), AT, intel_root=intel.root)
    assert (err.value.field, err.value.expected, err.value.actual) == ("quote.attestation_key", "a P-256 point",
                                                                       "an invalid one")


def test_a_pck_certificate_with_a_key_other_than_ec_is_named(intel: Intel) -> None:
    """The CA signs a PCK certificate holding an RSA key (chain valid): the QE report's signer must be EC P-256."""
    rsa_pck = reissue(_REAL_PCK, intel.ca_key, public_key=rsa.generate_private_key(65537, 2048).public_key())
    with pytest.raises(VerificationError) as err:
        verify_quote(forge_quote([rsa_pck, intel.ca, intel.root], intel.pck_key), AT, intel_root=intel.root)
    assert (err.value.field, err.value.expected, err.value.actual) == ("quote.pck.public_key", "an EC P-256 key",
                                                                       "RSAPublicKey")


def test_collateral_signed_under_a_certificate_with_an_rsa_key_is_named(intel: Intel, signing: TcbSigning,
                                                                         anchors: TrustAnchors) -> None:
    """A TCB Signing certificate with Intel's name, issued by the trusted root, holding an RSA key: the chain
    verifies, the collateral's signature cannot be an Intel one."""
    rsa_cert = reissue(signing.cert, intel.root_key, public_key=rsa.generate_private_key(65537, 2048).public_key())
    evidence = _collateral(signing.key, pem(rsa_cert, signing.root), signing.key, signing.chain)
    err = _refused(evidence, anchors, AT_V5)
    assert (err.field, err.expected, err.actual) == ("tcb_info.signature.key", "an EC P-256 key", "RSAPublicKey")


def test_a_collateral_chain_that_is_not_two_readable_certificates_is_named(signing: TcbSigning,
                                                                          anchors: TrustAnchors) -> None:
    for chain, refusal in (
            ("junk", ("tcb_info.issuer_chain", "PEM certificates")),
            (pem(signing.cert), ("tcb_info.issuer_chain", "2 certificates (signing, root)", 1)),
            (pem(signing.cert, signing.root, signing.root), ("tcb_info.issuer_chain", "2 certificates (signing, root)",
                                                             3))):
        with pytest.raises(ParseError) as err:
            verify_evidence(_collateral(signing.key, chain, signing.key, signing.chain), anchors, AT_V5)
        assert (err.value.field, err.value.expected, err.value.actual)[:len(refusal)] == refusal


def test_a_collateral_root_expired_at_the_time_is_named(intel: Intel, signing: TcbSigning) -> None:
    """The trusted root itself (Intel's name and key) no longer valid, the signing certificate still valid."""
    expired = reissue(intel.root, intel.root_key, not_after=AT_V5 - timedelta(days=1))
    anchors = dataclasses.replace(TrustAnchors.amd(), intel_roots=(expired,))
    err = _refused(_collateral(signing.key, pem(signing.cert, expired), signing.key, pem(signing.cert, expired)),
                   anchors, AT_V5)
    assert (err.field, err.actual) == ("tcb_info.issuer_chain.root.validity", AT_V5.isoformat())


def test_collateral_is_checked_at_the_instant_given_in_any_zone(signing: TcbSigning, anchors: TrustAnchors) -> None:
    """The collateral here is valid until 2026-06-20T00:00:00Z: 2026-06-20T08:00+09:00 is still inside (23:00Z),
    the same wall time in UTC is not."""
    evidence = _collateral(signing.key, signing.chain, signing.key, signing.chain)
    tokyo = datetime(2026, 6, 20, 8, 0, tzinfo=timezone(timedelta(hours=9)))
    assert verify_evidence(evidence, anchors, tokyo).tcb_status == "UpToDate"
    assert _refused(evidence, anchors, tokyo.replace(tzinfo=UTC)).field == "tcb_info.nextUpdate"


def test_a_simulated_quote_with_intels_genuine_collateral_is_still_simulated(intel: Intel) -> None:
    """Intel's real 2023 TCB Info and QE Identity (pinned root) beside a quote under the simulated Intel-named
    root: the claims' root is that of the quote's chain too, not only the collateral's. The forged platform sits at
    the collateral's OutOfDate level (SGX components 5,5,2,2,3,1,0,3, PCESVN 5, TEE_TCB_SVN 3,0,5), so the
    status, its advisories and each TCB claim come from this quote and collateral."""
    from tests.attestation.test_tdx_evidence import SGX, T_2023, _collateral_2023, _entry, _sgx_extensions

    der = _sgx_extensions(comps=(5, 5, 2, 2, 3, 1, 0, 3) + (0,) * 8, pce_svn=b"\x05", replace={
        "3": _entry(f"{SGX}.3", 0x04, bytes(2)), "4": _entry(f"{SGX}.4", 0x04, bytes.fromhex("50806f000000"))})
    oid = x509.ObjectIdentifier(SGX)
    extensions = [*(e for e in _REAL_PCK.extensions if e.oid != oid),
                  x509.Extension(oid, False, x509.UnrecognizedExtension(oid, der))]
    pck = reissue(_REAL_PCK, intel.ca_key, public_key=intel.pck_key.public_key(), extensions=extensions)
    base = parse_quote(BASE).signed
    signed = base[:48] + bytes([3, 0, 5]) + bytes(13) + base[64:]  # TEE_TCB_SVN opens the TD report body
    quote = forge_quote([pck, intel.ca, intel.root], intel.pck_key, signed=signed)
    anchors = dataclasses.replace(TrustAnchors.amd(), intel_roots=(intel.root,))
    claims = verify_evidence(Evidence(tee="tdx", report=quote, collateral=_collateral_2023()), anchors, T_2023)
    assert (claims.root, claims.tcb_status, claims.tee_tcb_svn) == ("simulated", "OutOfDate", "030005" + "00" * 13)
    assert claims.tcb == {"tdx_module": 3, "tdx_module_version": 0, "tdx_microcode": 5, "pce": 5}
    assert claims.advisory_ids == ["INTEL-SA-00106", "INTEL-SA-00115", "INTEL-SA-00135", "INTEL-SA-00203",
                                   "INTEL-SA-00220", "INTEL-SA-00233", "INTEL-SA-00270", "INTEL-SA-00293",
                                   "INTEL-SA-00320", "INTEL-SA-00329", "INTEL-SA-00381", "INTEL-SA-00389",
                                   "INTEL-SA-00477"]
