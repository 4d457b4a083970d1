"""SEV-SNP forgeries, each well formed except for the one thing a check guards, and the exact refusal.

A forger holds a second "AMD" hierarchy (ARK, ASK, VCEK) with the very same subject names as the
trusted one (here: two simulated hierarchies generated alike). Every certificate-signature step of the
chain, every certificate-to-report binding and every appraisal clause is tried on its own.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from attestation import Claims, Evidence, Policy, TrustAnchors, appraise, verify_evidence
from attestation.anchors import Root, check_signed_by, load_der_cert, product_from_name
from attestation.errors import AppraisalError, ParseError, VerificationError
from attestation.simulated import SIM_CHIP_ID, SIM_TCB, SimulatedHierarchy, generate_hierarchy
from attestation.snp.report import POLICY_DEBUG_BIT, parse_report
from attestation.snp.verify import OID_HWID, OID_PRODUCT_NAME, TCB_OIDS, check_report_signature
from enclave.tee import SIM_GUEST_POLICY
from tests.attestation._forge import MEASUREMENT, NONCE, reissue, snp_evidence

NOW = datetime.now(UTC)
DEV = {"allowed_roots": ["simulated"], "allowed_measurements": [MEASUREMENT.hex()]}


@pytest.fixture(scope="module")
def amd() -> SimulatedHierarchy:
    """The trusted hierarchy (stands for AMD)."""
    return generate_hierarchy()


@pytest.fixture(scope="module")
def rogue() -> SimulatedHierarchy:
    """A forger's hierarchy: the same names as ``amd``, other keys."""
    return generate_hierarchy()


@pytest.fixture(scope="module")
def vlek(amd: SimulatedHierarchy) -> SimulatedHierarchy:
    """A VLEK hierarchy under the trusted ARK: its ASVK re-issued by the trusted ARK."""
    h = generate_hierarchy(vlek=True)
    return dataclasses.replace(h, ark_key=amd.ark_key, ark=amd.ark, ask=reissue(h.ask, amd.ark_key))


@pytest.fixture(scope="module")
def anchors(amd: SimulatedHierarchy) -> TrustAnchors:
    return TrustAnchors((Root(amd.ark, "Milan", "simulated"),), (amd.ask,))


def _refused(evidence: Evidence, anchors: TrustAnchors, at: datetime = NOW) -> VerificationError:
    with pytest.raises(VerificationError) as err:
        verify_evidence(evidence, anchors, at)
    return err.value


def _genuine(tmp: Path, amd: SimulatedHierarchy, **report: object) -> Evidence:
    return snp_evidence(tmp, amd.leaf_key, amd.leaf, [amd.ask, amd.ark], **report)


def _claims(tmp: Path, amd: SimulatedHierarchy, anchors: TrustAnchors, **report: object) -> Claims:
    return verify_evidence(_genuine(tmp, amd, **report), anchors, NOW)


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


# -- the premise: the forger's names are the trusted ones, and honest evidence passes ----------------

def test_the_rogue_hierarchy_carries_the_trusted_names(amd: SimulatedHierarchy, rogue: SimulatedHierarchy) -> None:
    for mine, theirs in ((amd.ark, rogue.ark), (amd.ask, rogue.ask), (amd.leaf, rogue.leaf)):
        assert (mine.subject, mine.issuer) == (theirs.subject, theirs.issuer)
        assert mine.public_key() != theirs.public_key()


def test_genuine_evidence_verifies_and_appraises(amd: SimulatedHierarchy, anchors: TrustAnchors,
                                                 tmp_path: Path) -> None:
    claims = _claims(tmp_path, amd, anchors)
    assert (claims.root, claims.signing_key, claims.chip_id) == ("simulated", "vcek", SIM_CHIP_ID.hex())
    appraise(claims, Policy.from_dict({**DEV, "chip_ids": [SIM_CHIP_ID.hex()], "min_tcb": SIM_TCB.as_dict()}),
             report_data=NONCE)
    assert verify_evidence(snp_evidence(tmp_path, amd.leaf_key, amd.leaf, []), anchors, NOW).root == "simulated"


# -- each certificate-signature step of the chain ----------------------------------------------------

@pytest.mark.parametrize("chain", ["ask_ark", "ask", "none"])
def test_vcek_signed_by_another_ask_with_the_same_name(amd: SimulatedHierarchy, rogue: SimulatedHierarchy,
                                                       anchors: TrustAnchors, tmp_path: Path, chain: str) -> None:
    sent = {"ask_ark": [amd.ask, amd.ark], "ask": [amd.ask], "none": []}[chain]
    err = _refused(snp_evidence(tmp_path, rogue.leaf_key, rogue.leaf, sent), anchors)
    assert (err.field, err.expected, err.actual) == (
        "evidence.vcek.signature", f"a valid signature by {_name(amd.ask)}", "an invalid one")


@pytest.mark.parametrize("with_ark", [False, True])
def test_ask_signed_by_another_ark_with_the_same_name(amd: SimulatedHierarchy, rogue: SimulatedHierarchy,
                                                      anchors: TrustAnchors, tmp_path: Path, with_ark: bool) -> None:
    chain = [rogue.ask, amd.ark] if with_ark else [rogue.ask]  # the rogue ASK signed the rogue VCEK: that link holds
    err = _refused(snp_evidence(tmp_path, rogue.leaf_key, rogue.leaf, chain), anchors)
    assert (err.field, err.expected, err.actual) == (
        "evidence.cert_chain.ask.signature", f"a valid signature by {_name(amd.ark)}", "an invalid one")


def test_rogue_ark_in_the_chain_is_not_trusted(amd: SimulatedHierarchy, rogue: SimulatedHierarchy,
                                               anchors: TrustAnchors, tmp_path: Path) -> None:
    err = _refused(snp_evidence(tmp_path, rogue.leaf_key, rogue.leaf, [rogue.ask, rogue.ark]), anchors)
    assert (err.field, err.expected) == ("evidence.cert_chain.ark", f"one of the trusted ARKs ({_name(amd.ark)})")
    assert err.actual == f"{_name(rogue.ark)} (sha256 {rogue.ark.fingerprint(hashes.SHA256()).hex()})"


def test_chain_without_the_leafs_issuer_is_refused(amd: SimulatedHierarchy, vlek: SimulatedHierarchy,
                                                   anchors: TrustAnchors, tmp_path: Path) -> None:
    evidence = snp_evidence(tmp_path, vlek.leaf_key, vlek.leaf, [amd.ask, amd.ark], signing_key="vlek")
    err = _refused(evidence, anchors)
    assert (err.field, err.expected, err.actual) == (
        "evidence.cert_chain.ask", f"a certificate for the VCEK's issuer {_name(vlek.ask)}", _name(amd.ask))
    bare = TrustAnchors(anchors.roots)  # no known intermediates, none sent
    err = _refused(snp_evidence(tmp_path, amd.leaf_key, amd.leaf, []), bare)
    assert (err.field, err.actual) == ("evidence.cert_chain.ask", "no certificate")
    assert err.hint == "the chain belongs to another product or signer; send the ASK (or ASVK) that issued this key"


def test_ask_signed_by_the_ark_with_pkcs1_or_sha256_is_refused(amd: SimulatedHierarchy, anchors: TrustAnchors,
                                                               tmp_path: Path) -> None:
    for ask, actual in ((reissue(amd.ask, amd.ark_key, pss=False), "1.2.840.113549.1.1.12"),
                        (reissue(amd.ask, amd.ark_key, digest=hashes.SHA256()), "RSA 3072, ")):
        err = _refused(snp_evidence(tmp_path, amd.leaf_key, amd.leaf, [ask]), anchors)
        assert err.field == "evidence.cert_chain.ask.signature_algorithm" and str(err.actual).startswith(actual)


def test_chain_under_a_small_rsa_key_is_refused(amd: SimulatedHierarchy, anchors: TrustAnchors,
                                                tmp_path: Path) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    ask = reissue(amd.ask, small, public_key=small.public_key())  # self-consistent below, too weak above
    leaf = reissue(amd.leaf, small)
    ark = reissue(amd.ark, small, public_key=small.public_key())
    small_anchors = TrustAnchors((Root(ark, "Milan", "simulated"),))
    err = _refused(snp_evidence(tmp_path, amd.leaf_key, leaf, [ask, ark]), small_anchors)
    assert (err.field, err.actual) == ("evidence.cert_chain.ask.signature_algorithm", "RSA 1024, sha384")
    del anchors


@pytest.mark.parametrize(("which", "field"), [("leaf", "evidence.vcek.validity"),
                                              ("ask", "evidence.cert_chain.ask.validity"),
                                              ("ark", "evidence.cert_chain.ark.validity")])
@pytest.mark.parametrize("when", ["expired", "not yet valid"])
def test_each_certificate_must_be_valid_at_the_time(amd: SimulatedHierarchy, tmp_path: Path, which: str,
                                                    field: str, when: str) -> None:
    dates = ({"not_before": NOW - timedelta(days=9), "not_after": NOW - timedelta(days=1)} if when == "expired"
             else {"not_before": NOW + timedelta(days=1)})
    leaf, ask, ark = amd.leaf, amd.ask, amd.ark
    if which == "leaf":
        leaf = reissue(leaf, amd.ask_key, **dates)  # type: ignore[arg-type]
    elif which == "ask":
        ask = reissue(ask, amd.ark_key, **dates)  # type: ignore[arg-type]
    else:
        ark = reissue(ark, amd.ark_key, **dates)  # type: ignore[arg-type]
    anchors = TrustAnchors((Root(ark, "Milan", "simulated"),))
    err = _refused(snp_evidence(tmp_path, amd.leaf_key, leaf, [ask, ark]), anchors)
    cert = {"leaf": leaf, "ask": ask, "ark": ark}[which]
    assert (err.field, err.expected, err.actual) == (
        field, f"{cert.not_valid_before_utc.isoformat()} .. {cert.not_valid_after_utc.isoformat()}", NOW.isoformat())
    assert err.hint == "the certificate is expired or not yet valid at that time"


@pytest.mark.parametrize("edge", ["first", "last"])
def test_certificates_are_valid_on_their_first_and_last_second(amd: SimulatedHierarchy, anchors: TrustAnchors,
                                                               tmp_path: Path, edge: str) -> None:
    at = amd.leaf.not_valid_before_utc if edge == "first" else amd.leaf.not_valid_after_utc
    assert verify_evidence(_genuine(tmp_path, amd), anchors, at).root == "simulated"


# -- the signer: the report must be signed by the certified leaf, of the kind the report names --------

def test_report_signed_by_a_key_other_than_the_vcek(amd: SimulatedHierarchy, anchors: TrustAnchors,
                                                    tmp_path: Path) -> None:
    other = ec.generate_private_key(ec.SECP384R1())
    err = _refused(snp_evidence(tmp_path, other, amd.leaf, [amd.ask, amd.ark]), anchors)
    assert (err.field, err.expected, err.actual) == (
        "report.signature", "a valid ECDSA P-384 signature by the VCEK", "an invalid one")


def test_vcek_with_a_p256_key_is_refused(amd: SimulatedHierarchy, anchors: TrustAnchors, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = reissue(amd.leaf, amd.ask_key, public_key=key.public_key())
    err = _refused(snp_evidence(tmp_path, key, leaf, [amd.ask, amd.ark]), anchors)
    assert (err.field, err.expected, err.actual) == ("evidence.vcek.public_key", "an EC P-384 key",
                                                     type(key.public_key()).__name__)


def test_unknown_signature_algorithm_is_refused(amd: SimulatedHierarchy, anchors: TrustAnchors,
                                                tmp_path: Path) -> None:
    with pytest.raises(ParseError) as err:  # the parser refuses it before verification looks
        verify_evidence(_genuine(tmp_path, amd, signature_algo=2), anchors, NOW)
    assert (err.value.field, err.value.actual) == ("report.signature_algo", 2)


def test_genuine_vlek_evidence_verifies(vlek: SimulatedHierarchy, anchors: TrustAnchors, tmp_path: Path) -> None:
    evidence = snp_evidence(tmp_path, vlek.leaf_key, vlek.leaf, [vlek.ask, vlek.ark], signing_key="vlek")
    assert verify_evidence(evidence, anchors, NOW).signing_key == "vlek"


def test_vlek_where_the_report_names_the_vcek(vlek: SimulatedHierarchy, anchors: TrustAnchors,
                                              tmp_path: Path) -> None:
    err = _refused(snp_evidence(tmp_path, vlek.leaf_key, vlek.leaf, [vlek.ask, vlek.ark]), anchors)
    assert (err.field, err.expected, err.actual) == (
        "evidence.vcek", "a VCEK issued by an ASK", f"{_name(vlek.leaf)} issued by {_name(vlek.ask)}")


def test_vcek_where_the_report_names_the_vlek(amd: SimulatedHierarchy, anchors: TrustAnchors,
                                              tmp_path: Path) -> None:
    err = _refused(_genuine(tmp_path, amd, signing_key="vlek"), anchors)
    assert (err.field, err.expected, err.actual) == (
        "evidence.vcek", "a VLEK issued by an ASVK", f"{_name(amd.leaf)} issued by {_name(amd.ask)}")


def test_leaf_named_against_its_issuer_kind_is_refused(amd: SimulatedHierarchy, vlek: SimulatedHierarchy,
                                                       anchors: TrustAnchors, tmp_path: Path) -> None:
    vcek_under_asvk = reissue(amd.leaf, vlek.ask_key, issuer=vlek.ask.subject)
    err = _refused(snp_evidence(tmp_path, amd.leaf_key, vcek_under_asvk, [vlek.ask, vlek.ark], signing_key="vlek"),
                   anchors)
    assert (err.field, err.expected) == ("evidence.vcek", "a VLEK issued by an ASVK")
    vlek_under_ask = reissue(vlek.leaf, amd.ask_key, issuer=amd.ask.subject)
    err = _refused(snp_evidence(tmp_path, vlek.leaf_key, vlek_under_ask, [amd.ask, amd.ark]), anchors)
    assert (err.field, err.expected) == ("evidence.vcek", "a VCEK issued by an ASK")


def test_unsigned_report_is_refused(amd: SimulatedHierarchy, anchors: TrustAnchors, tmp_path: Path) -> None:
    err = _refused(_genuine(tmp_path, amd, signing_key="none"), anchors)
    assert (err.field, err.expected, err.actual) == ("report.signer_info.signing_key", "vcek or vlek", "none")


# -- certificate-to-report bindings: chip, TCB, product ---------------------------------------------

@pytest.mark.parametrize("chip_id", [SIM_CHIP_ID[:32] + bytes(32), SIM_CHIP_ID[:63] + bytes([SIM_CHIP_ID[63] ^ 1]),
                                     bytes(64)])
def test_chip_id_equal_to_the_hwid_on_a_prefix_only(amd: SimulatedHierarchy, anchors: TrustAnchors,
                                                    tmp_path: Path, chip_id: bytes) -> None:
    err = _refused(_genuine(tmp_path, amd, chip_id=chip_id), anchors)
    assert (err.field, err.expected, err.actual) == (
        "report.chip_id", f"{SIM_CHIP_ID.hex()} (the VCEK's hwID)", chip_id.hex())


def test_turin_hwid_covers_8_bytes_and_the_rest_must_be_zero(tmp_path: Path) -> None:
    turin_tcb = dataclasses.replace(SIM_TCB, fmc=1)
    h = generate_hierarchy("Turin", turin_tcb)
    anchors = TrustAnchors((Root(h.ark, "Turin", "simulated"),))
    honest = snp_evidence(tmp_path, h.leaf_key, h.leaf, [h.ask, h.ark], product="Turin")
    assert verify_evidence(honest, anchors, NOW).chip_id == (SIM_CHIP_ID[:8] + bytes(56)).hex()
    forged = SIM_CHIP_ID[:8] + bytes(55) + b"\x01"
    err = _refused(snp_evidence(tmp_path, h.leaf_key, h.leaf, [h.ask, h.ark], product="Turin", chip_id=forged),
                   anchors)
    assert (err.field, err.actual) == ("report.chip_id", forged.hex())


def test_policy_chip_id_must_match_whole(amd: SimulatedHierarchy, anchors: TrustAnchors, tmp_path: Path) -> None:
    claims = _claims(tmp_path, amd, anchors)
    for pinned in (SIM_CHIP_ID.hex()[:64], SIM_CHIP_ID[:32].hex() + "00" * 32):
        with pytest.raises(AppraisalError) as err:
            appraise(claims, Policy.from_dict({**DEV, "chip_ids": [pinned]}))
        assert (err.value.field, err.value.expected, err.value.actual) == ("chip_id", f"one of {[pinned]}",
                                                                           SIM_CHIP_ID.hex())


@pytest.mark.parametrize(("component", "delta"), [(c, 1) for c in ("bootloader", "tee", "snp", "microcode")]
                         + [(c, -1) for c in ("bootloader", "snp", "microcode")])  # the simulated TEE SVN is 0
def test_reported_tcb_other_than_the_vcek_certifies(amd: SimulatedHierarchy, anchors: TrustAnchors,
                                                    tmp_path: Path, component: str, delta: int) -> None:
    claimed = getattr(SIM_TCB, component) + delta
    err = _refused(_genuine(tmp_path, amd, reported_tcb=dataclasses.replace(SIM_TCB, **{component: claimed})),
                   anchors)
    assert (err.field, err.expected, err.actual) == (
        f"report.reported_tcb.{component}", f"{getattr(SIM_TCB, component)} (certified by the VCEK)", claimed)


def _without(cert: x509.Certificate, oid: str) -> list[x509.Extension[x509.ExtensionType]]:
    return [e for e in cert.extensions if e.oid.dotted_string != oid]


@pytest.mark.parametrize(("oid", "field"), [(TCB_OIDS["snp"], "evidence.vcek.tcb.snp"),
                                            (TCB_OIDS["bootloader"], "evidence.vcek.tcb.bootloader"),
                                            (OID_HWID, "evidence.vcek.hwid")])
def test_vcek_without_a_binding_extension_is_refused(amd: SimulatedHierarchy, anchors: TrustAnchors,
                                                     tmp_path: Path, oid: str, field: str) -> None:
    leaf = reissue(amd.leaf, amd.ask_key, extensions=_without(amd.leaf, oid))
    signed = _genuine(tmp_path, amd)  # the report as the chip signs it; the VCEK sent lacks the extension
    err = _refused(dataclasses.replace(signed, vcek=leaf.public_bytes(serialization.Encoding.DER)), anchors)
    assert (err.field, err.expected, err.actual) == (field, f"extension {oid}", "absent")


def test_vcek_of_another_product_under_this_chain_is_refused(amd: SimulatedHierarchy, anchors: TrustAnchors,
                                                             tmp_path: Path) -> None:
    genoa = x509.UnrecognizedExtension(x509.ObjectIdentifier(OID_PRODUCT_NAME), b"\x16\x08Genoa-B0")
    exts = [*_without(amd.leaf, OID_PRODUCT_NAME), x509.Extension(genoa.oid, False, genoa)]
    leaf = reissue(amd.leaf, amd.ask_key, extensions=exts)  # type: ignore[arg-type]
    err = _refused(snp_evidence(tmp_path, amd.leaf_key, leaf, [amd.ask, amd.ark]), anchors)
    assert (err.field, err.expected, err.actual) == ("evidence.vcek.product_name", "Milan", "Genoa-B0")


# -- appraisal: debug, TCB floor --------------------------------------------------------------------

def test_debug_policy_bit_is_refused(amd: SimulatedHierarchy, anchors: TrustAnchors, tmp_path: Path) -> None:
    policy_word = SIM_GUEST_POLICY | 1 << POLICY_DEBUG_BIT
    claims = _claims(tmp_path, amd, anchors, policy=policy_word)
    assert claims.debug is True
    with pytest.raises(AppraisalError) as err:
        appraise(claims, Policy.from_dict(DEV), report_data=NONCE)
    assert (err.value.field, err.value.expected, err.value.actual) == (
        "policy.debug", "debugging disallowed (guest policy bit 19 clear)", f"debug allowed (policy 0x{policy_word:x})")
    appraise(claims, Policy.from_dict({**DEV, "allow_debug": True}), report_data=NONCE)
    with pytest.raises(AppraisalError) as bits:
        appraise(claims, Policy.from_dict({**DEV, "allow_debug": True, "allowed_policy_bits": SIM_GUEST_POLICY}))
    assert (bits.value.field, bits.value.actual) == ("policy_bits", f"0x{policy_word:x}")


@pytest.mark.parametrize("component", ["bootloader", "tee", "snp", "microcode"])
def test_tcb_below_the_floor_is_refused(amd: SimulatedHierarchy, anchors: TrustAnchors, tmp_path: Path,
                                        component: str) -> None:
    claims = _claims(tmp_path, amd, anchors)
    value = getattr(SIM_TCB, component)
    appraise(claims, Policy.from_dict({**DEV, "min_tcb": {component: value}}))  # at the floor: allowed
    with pytest.raises(AppraisalError) as err:
        appraise(claims, Policy.from_dict({**DEV, "min_tcb": {component: value + 1}}))
    assert (err.value.field, err.value.expected, err.value.actual) == (f"tcb.{component}", f">= {value + 1}", value)


def test_vmpl_above_the_maximum_is_refused(amd: SimulatedHierarchy, anchors: TrustAnchors, tmp_path: Path) -> None:
    claims = _claims(tmp_path, amd, anchors, vmpl=2)
    appraise(claims, Policy.from_dict({**DEV, "max_vmpl": 2}))
    with pytest.raises(AppraisalError) as err:
        appraise(claims, Policy.from_dict({**DEV, "max_vmpl": 1}))
    assert (err.value.field, err.value.expected, err.value.actual) == ("vmpl", "<= 1", 2)


# -- trust anchors from a folder ----------------------------------------------------------------------

def _trust_dir(tmp: Path, ark: x509.Certificate, *chain: x509.Certificate) -> Path:
    from tests.attestation._forge import pem

    (tmp / "ark.pem").write_text(pem(ark))
    if chain:
        (tmp / "ask_ark.pem").write_text(pem(*chain))
    return tmp


def test_trusted_ark_that_is_not_self_signed_is_refused(amd: SimulatedHierarchy, rogue: SimulatedHierarchy,
                                                        tmp_path: Path) -> None:
    forged = reissue(amd.ark, rogue.ark_key)  # the trusted ARK's name and key, someone else's signature
    with pytest.raises(VerificationError) as err:
        TrustAnchors.from_dir(_trust_dir(tmp_path, forged))
    assert (err.value.field, err.value.actual) == (f"{tmp_path / 'ark.pem'}.signature", "an invalid one")


def test_folder_anchors_add_the_simulated_root_and_its_ask(amd: SimulatedHierarchy, tmp_path: Path) -> None:
    anchors = TrustAnchors.from_dir(_trust_dir(tmp_path, amd.ark, amd.ask, amd.ark))
    simulated = [r for r in anchors.roots if r.kind == "simulated"]
    assert [(r.cert, r.product) for r in simulated] == [(amd.ark, "Milan")]
    assert anchors.intermediates[-1:] == (amd.ask,) and amd.ark not in anchors.intermediates
    assert len(anchors.roots) == len(TrustAnchors.amd().roots) + 1


def test_folder_holding_a_pinned_amd_ark_adds_nothing(tmp_path: Path) -> None:
    genuine = TrustAnchors.amd()
    anchors = TrustAnchors.from_dir(_trust_dir(tmp_path, genuine.roots[0].cert))
    assert anchors == genuine and {r.kind for r in anchors.roots} == {"amd"}


def test_simulated_ark_without_a_product_name_is_refused(tmp_path: Path) -> None:
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SIMULATED ARK NOT AMD")])
    template = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(1).not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=1))
                .sign(key, hashes.SHA256()))
    ark = reissue(template, key)
    with pytest.raises(ParseError) as err:
        TrustAnchors.from_dir(_trust_dir(tmp_path, ark))
    assert (err.value.field, err.value.actual) == (f"{tmp_path / 'ark.pem'}.subject", "CN=SIMULATED ARK NOT AMD")


# -- malformed AMD extensions and every refusal's hint ---------------------------------------------------

def _with_extension(amd: SimulatedHierarchy, tmp: Path, oid: str, value: bytes, **report: object) -> Evidence:
    """Genuine evidence whose VCEK (re-issued by the ASK) carries ``value`` as extension ``oid``."""
    ext = x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value)
    leaf = reissue(amd.leaf, amd.ask_key, extensions=[*_without(amd.leaf, oid), x509.Extension(ext.oid, False, ext)])
    signed = _genuine(tmp, amd, **report)
    return dataclasses.replace(signed, vcek=leaf.public_bytes(serialization.Encoding.DER))


@pytest.mark.parametrize("value", [b"\x04\x01\x16", b"\x02\x02\x16", b"\x02\x00", b"\x02\x03\x00\x00\x16", b"\x02"])
def test_tcb_extension_that_is_not_a_small_der_integer(amd: SimulatedHierarchy, anchors: TrustAnchors,
                                                       tmp_path: Path, value: bytes) -> None:
    with pytest.raises(ParseError) as err:
        verify_evidence(_with_extension(amd, tmp_path, TCB_OIDS["snp"], value), anchors, NOW)
    assert (err.value.field, err.value.expected, err.value.actual) == ("evidence.vcek.tcb.snp", "a DER INTEGER", value)


def test_tcb_extension_is_a_signed_der_integer(amd: SimulatedHierarchy, anchors: TrustAnchors, tmp_path: Path) -> None:
    # 02 01 80 is -128, not 128: a report claiming SNP SVN 128 does not match it.
    evidence = _with_extension(amd, tmp_path, TCB_OIDS["snp"], b"\x02\x01\x80",
                               reported_tcb=dataclasses.replace(SIM_TCB, snp=128))
    err = _refused(evidence, anchors)
    assert (err.field, err.expected, err.actual) == ("report.reported_tcb.snp", "-128 (certified by the VCEK)", 128)
    honest = _with_extension(amd, tmp_path, TCB_OIDS["snp"], b"\x02\x02\x00\x80",
                             reported_tcb=dataclasses.replace(SIM_TCB, snp=128))
    assert verify_evidence(honest, anchors, NOW).tcb["snp"] == 128


def test_product_name_with_a_non_ascii_byte_is_refused(amd: SimulatedHierarchy, anchors: TrustAnchors,
                                                       tmp_path: Path) -> None:
    err = _refused(_with_extension(amd, tmp_path, OID_PRODUCT_NAME, b"\x16\x05Mil\xe1n"), anchors)
    assert (err.field, err.expected, err.actual) == ("evidence.vcek.product_name", "Milan", "Mil\ufffdn")


def test_vcek_without_a_product_name_is_accepted(amd: SimulatedHierarchy, anchors: TrustAnchors,
                                                 tmp_path: Path) -> None:
    leaf = reissue(amd.leaf, amd.ask_key, extensions=_without(amd.leaf, OID_PRODUCT_NAME))  # older VCEKs, VLEKs
    evidence = dataclasses.replace(_genuine(tmp_path, amd), vcek=leaf.public_bytes(serialization.Encoding.DER))
    assert verify_evidence(evidence, anchors, NOW).product == "Milan"


def test_refusals_carry_what_to_do(amd: SimulatedHierarchy, rogue: SimulatedHierarchy, anchors: TrustAnchors,
                                   tmp_path: Path) -> None:
    leaf = reissue(amd.leaf, amd.ask_key, extensions=[
        *_without(amd.leaf, OID_PRODUCT_NAME),
        x509.Extension(x509.ObjectIdentifier(OID_PRODUCT_NAME), False,
                       x509.UnrecognizedExtension(x509.ObjectIdentifier(OID_PRODUCT_NAME), b"\x16\x05Genoa"))])
    cases = {
        "the report is unsigned": _genuine(tmp_path, amd, signing_key="none"),
        "the report's SIGNING_KEY does not match the certificate sent": _genuine(tmp_path, amd, signing_key="vlek"),
        "the report was altered or signed by another chip": snp_evidence(
            tmp_path, ec.generate_private_key(ec.SECP384R1()), amd.leaf, [amd.ask, amd.ark]),
        "the VCEK was issued for another TCB; fetch the VCEK for this TCB": _genuine(
            tmp_path, amd, reported_tcb=dataclasses.replace(SIM_TCB, snp=SIM_TCB.snp + 1)),
        "the VCEK belongs to another chip": _genuine(tmp_path, amd, chip_id=bytes(64)),
        "the VCEK's product differs from its chain's": dataclasses.replace(
            _genuine(tmp_path, amd), vcek=leaf.public_bytes(serialization.Encoding.DER)),
        "the certificate was altered or issued by another key": snp_evidence(
            tmp_path, rogue.leaf_key, rogue.leaf, [amd.ask, amd.ark]),
        "the chain ends in a root this verifier does not trust": snp_evidence(
            tmp_path, rogue.leaf_key, rogue.leaf, [rogue.ask, rogue.ark]),
    }
    for hint, evidence in cases.items():
        err = _refused(evidence, anchors)
        assert err.hint == hint and str(err).endswith(f"; {hint}"), (hint, str(err))


def test_ask_issued_under_a_name_no_trusted_ark_has(amd: SimulatedHierarchy, anchors: TrustAnchors,
                                                    tmp_path: Path) -> None:
    from cryptography.x509.oid import NameOID

    elsewhere = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SIMULATED ARK-Genoa NOT AMD")])
    ask = reissue(amd.ask, amd.ark_key, issuer=elsewhere)  # the VCEK link holds; the ASK names another root
    err = _refused(snp_evidence(tmp_path, amd.leaf_key, amd.leaf, [ask]), anchors)
    assert (err.field, err.expected, err.actual) == ("evidence.cert_chain.ask.issuer", "a trusted ARK",
                                                     elsewhere.rfc4514_string())
    assert err.hint == "the ASK chains to an unknown root"


def test_time_in_another_zone_is_the_same_instant(amd: SimulatedHierarchy, anchors: TrustAnchors,
                                                  tmp_path: Path) -> None:
    from datetime import timezone

    from attestation.snp.verify import verify_snp

    last = amd.leaf.not_valid_after_utc.astimezone(timezone(timedelta(hours=5)))  # 5 h ahead on the wall clock
    evidence = _genuine(tmp_path, amd)
    verified = verify_snp(evidence.report, evidence.vcek, evidence.cert_chain, anchors, last)
    assert verified.leaf == amd.leaf and verified.root.cert == amd.ark


def test_a_packaged_ark_other_than_the_pinned_one_is_refused(rogue: SimulatedHierarchy,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The packaged Milan ARK replaced by a self-signed one with the same name: its fingerprint is not pinned."""
    from attestation.snp import amd_roots
    from tests.attestation._forge import pem

    fingerprint, _ = amd_roots.PINNED[("Milan", "ark")]
    monkeypatch.setitem(amd_roots.PINNED, ("Milan", "ark"), (fingerprint, pem(rogue.ark)))
    with pytest.raises(VerificationError) as err:
        TrustAnchors.amd()
    assert (err.value.field, err.value.expected, err.value.actual) == (
        "anchors.Milan ARK", f"SHA-256 fingerprint {fingerprint}", rogue.ark.fingerprint(hashes.SHA256()).hex())


# -- the chain step's refusals, word for word (attestation/anchors.py: check_signed_by, the loaders) ---------


def _step_refused(cert: x509.Certificate, issuer: x509.Certificate) -> VerificationError:
    with pytest.raises(VerificationError) as err:
        check_signed_by(cert, issuer, "vcek_chain.ask")
    return err.value


def test_a_certificate_naming_another_issuer_does_not_link_up(amd: SimulatedHierarchy) -> None:
    err = _step_refused(amd.ask, amd.ask)  # the ASK names the ARK as its issuer, not itself
    assert (err.field, err.expected, err.actual, err.hint) == (
        "vcek_chain.ask.issuer", amd.ask.subject.rfc4514_string(), amd.ark.subject.rfc4514_string(),
        "the chain does not link up")


def test_a_certificate_signed_without_pss_or_with_sha256_is_named(amd: SimulatedHierarchy) -> None:
    pkcs1 = _step_refused(reissue(amd.ask, amd.ark_key, pss=False), amd.ark)
    assert (pkcs1.field, pkcs1.expected, pkcs1.actual) == (
        "vcek_chain.ask.signature_algorithm", "RSA-PSS with SHA-384", "1.2.840.113549.1.1.12")
    sha256 = _step_refused(reissue(amd.ask, amd.ark_key, digest=hashes.SHA256()), amd.ark)
    assert (sha256.field, sha256.expected, sha256.actual) == (
        "vcek_chain.ask.signature_algorithm", "RSA >= 2048 bits, SHA-384", f"RSA {amd.ark_key.key_size}, sha256")


def test_unreadable_certificates_and_names_without_a_product_are_named(amd: SimulatedHierarchy,
                                                                      tmp_path: Path) -> None:
    with pytest.raises(ParseError) as der:
        load_der_cert(b"\x30\x03\x02\x01\x00", "vcek")
    assert (der.value.field, der.value.expected) == ("vcek", "a DER X.509 certificate")
    assert str(der.value.actual).startswith("unreadable data (")
    with pytest.raises(ParseError) as product:  # the simulated VCEK's name carries no product
        product_from_name(amd.leaf, "ark")
    assert (product.value.field, product.value.expected, product.value.actual) == (
        "ark.subject", "a name containing ARK-/SEV-<Milan|Genoa|Turin>", amd.leaf.subject.rfc4514_string())
    (tmp_path / "ark.pem").write_text("not a certificate")
    with pytest.raises(ParseError) as unreadable:
        TrustAnchors.from_dir(tmp_path)
    assert unreadable.value.field == str(tmp_path / "ark.pem")


def test_a_simulated_root_without_a_chain_file_adds_no_intermediate(amd: SimulatedHierarchy,
                                                                     tmp_path: Path) -> None:
    (tmp_path / "ark.pem").write_bytes(amd.ark.public_bytes(serialization.Encoding.PEM))
    anchors = TrustAnchors.from_dir(tmp_path)
    assert anchors.roots[-1] == Root(amd.ark, "Milan", "simulated")
    assert anchors.intermediates == TrustAnchors.amd().intermediates
    (tmp_path / "ask_ark.pem").write_bytes(b"junk")
    with pytest.raises(ParseError) as err:
        TrustAnchors.from_dir(tmp_path)
    assert err.value.field == str(tmp_path / "ask_ark.pem")


def test_the_pinned_amd_intermediates_are_the_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The packaged ASKs (for evidence without a chain) are certificates named for their product; a packaged
    certificate whose fingerprint is not the pinned one is refused naming it and what to do."""
    intermediates = TrustAnchors.amd().intermediates
    assert intermediates and all(isinstance(c, x509.Certificate) and product_from_name(c, "ask") for c in intermediates)
    import attestation.anchors

    (product, role), (fingerprint, pem) = next(iter(attestation.anchors.PINNED.items()))
    monkeypatch.setitem(attestation.anchors.PINNED, (product, role), ("0" * 64, pem))
    with pytest.raises(VerificationError) as err:
        TrustAnchors.amd()
    assert (err.value.field, err.value.expected, err.value.actual, err.value.hint) == (
        f"anchors.{product} {role.upper()}", f"SHA-256 fingerprint {'0' * 64}", fingerprint,
        "the packaged AMD certificate was modified; reinstall cscore")


def test_a_report_built_by_hand_with_another_signature_algorithm_is_refused(amd: SimulatedHierarchy,
                                                                            tmp_path: Path) -> None:
    """`check_report_signature` holds the algorithm itself, for a report that never went through the parser."""
    report = dataclasses.replace(parse_report(_genuine(tmp_path, amd).report), signature_algo=2)
    with pytest.raises(VerificationError) as err:
        check_report_signature(report, amd.leaf)
    assert (err.value.field, err.value.expected, err.value.actual) == ("report.signature_algo",
                                                                       "1 (ECDSA P-384 with SHA-384)", 2)


def test_every_claim_is_read_from_its_own_report_field(amd: SimulatedHierarchy, anchors: TrustAnchors,
                                                       tmp_path: Path) -> None:
    """Each report field set to a value of its own: each claim shows that field's value and no other's."""
    launch = dataclasses.replace(SIM_TCB, bootloader=1, snp=2, microcode=3)
    fields = {"host_data": bytes([0x11]) * 32, "vmpl": 3, "guest_svn": 7, "platform_info": 0x25,
              "id_key_digest": bytes([0x22]) * 48, "author_key_digest": bytes([0x33]) * 48,
              "family_id": bytes([0x44]) * 16, "image_id": bytes([0x55]) * 16, "report_id": bytes([0x66]) * 32,
              "launch_tcb": launch}
    claims = _claims(tmp_path, amd, anchors, **fields)
    expected = {name: value.hex() if isinstance(value, bytes) else value for name, value in fields.items()}
    assert {name: claims.to_dict()[name] for name in fields} == {**expected, "launch_tcb": launch.as_dict()}
    assert (claims.tee, claims.version, claims.product, claims.measurement, claims.report_data, claims.policy,
            claims.debug, claims.tcb, claims.chip_id, claims.signing_key, claims.root) == (
        "sev-snp", 3, "Milan", MEASUREMENT.hex(), NONCE.hex(), SIM_GUEST_POLICY, False, SIM_TCB.as_dict(),
        SIM_CHIP_ID.hex(), "vcek", "simulated")
