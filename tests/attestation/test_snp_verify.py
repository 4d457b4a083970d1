"""SEV-SNP verification against real AMD evidence: accepted as is, refused when anything changes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from attestation.anchors import TrustAnchors, check_signed_by, load_der_cert, load_pem_certs
from attestation.errors import AttestationError, ParseError, VerificationError
from attestation.snp import amd_roots
from attestation.snp.report import SIGNED_SIZE
from attestation.snp.verify import verify_snp
from tests.attestation._attestation_data import PINNED_NOW, read

GO_VCEK = "sev-snp/go-sev-guest/vcek.testcer"
GO_CHAIN = "sev-snp/go-sev-guest/ask_ark_milan.pem"


@pytest.fixture(scope="module")
def anchors() -> TrustAnchors:
    return TrustAnchors.amd()


def test_amd_anchors_are_the_three_pinned_products(anchors: TrustAnchors) -> None:
    assert sorted(r.product for r in anchors.roots) == ["Genoa", "Milan", "Turin"]
    assert {r.kind for r in anchors.roots} == {"amd"}
    assert len(anchors.intermediates) == 5  # 3 ASKs + 2 ASVKs


def test_edited_pinned_root_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    fingerprint, pem = amd_roots.PINNED[("Milan", "ark")]
    genoa_pem = amd_roots.PINNED[("Genoa", "ark")][1]
    monkeypatch.setitem(amd_roots.PINNED, ("Milan", "ark"), (fingerprint, genoa_pem))
    with pytest.raises(VerificationError, match="fingerprint"):
        TrustAnchors.amd()


def test_go_sev_guest_report_verifies(go_report: bytes, anchors: TrustAnchors) -> None:
    v = verify_snp(go_report, read(GO_VCEK), read(GO_CHAIN), anchors, PINNED_NOW)
    assert (v.product, v.signing_key, v.root.kind) == ("Milan", "vcek", "amd")
    assert v.report.measurement.hex().startswith("b07af962")


def test_virtee_report_verifies(virtee_report: bytes, anchors: TrustAnchors) -> None:
    v = verify_snp(virtee_report, read("sev-snp/virtee-sev/vcek_milan.der"),
                   read("sev-snp/virtee-sev/cert_chain_milan"), anchors, PINNED_NOW)
    assert v.report.reported_tcb.as_dict() == {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}


def test_missing_chain_uses_pinned_intermediates(go_report: bytes, anchors: TrustAnchors) -> None:
    assert verify_snp(go_report, read(GO_VCEK), "", anchors, PINNED_NOW).product == "Milan"


@pytest.mark.parametrize("offset", list(range(0, SIGNED_SIZE, 7)) + [SIGNED_SIZE - 1, 0x2A0, 0x2A0 + 71, 0x2E8,
                                                                     0x2E8 + 40])
def test_any_flipped_signed_or_signature_byte_is_refused(go_report: bytes, anchors: TrustAnchors,
                                                         offset: int) -> None:
    data = bytearray(go_report)
    data[offset] ^= 0x01
    with pytest.raises(AttestationError) as err:
        verify_snp(bytes(data), read(GO_VCEK), read(GO_CHAIN), anchors, PINNED_NOW)
    assert isinstance(err.value, ParseError | VerificationError)
    assert err.value.field.startswith("report")


def test_flipped_measurement_names_the_signature(go_report: bytes, anchors: TrustAnchors) -> None:
    data = bytearray(go_report)
    data[0x90] ^= 0x80
    with pytest.raises(VerificationError) as err:
        verify_snp(bytes(data), read(GO_VCEK), read(GO_CHAIN), anchors, PINNED_NOW)
    assert err.value.field == "report.signature"
    assert "altered or signed by another chip" in str(err.value)


@pytest.mark.parametrize("chain", ["sev-snp/go-sev-guest/ask_ark_genoa.pem",
                                   "sev-snp/go-sev-guest/ask_ark_turin_vcek.pem",
                                   "sev-snp/go-sev-guest/ask_ark_milan_vlek.pem"])
def test_chain_of_another_product_or_signer_is_refused(go_report: bytes, anchors: TrustAnchors,
                                                        chain: str) -> None:
    with pytest.raises(VerificationError) as err:
        verify_snp(go_report, read(GO_VCEK), read(chain), anchors, PINNED_NOW)
    assert err.value.field == "evidence.cert_chain.ask"


def test_vcek_of_another_chip_is_refused(go_report: bytes, anchors: TrustAnchors) -> None:
    with pytest.raises(VerificationError) as err:
        verify_snp(go_report, read("sev-snp/virtee-sev/vcek_milan.der"), read(GO_CHAIN), anchors, PINNED_NOW)
    assert err.value.field == "report.signature"


@pytest.mark.parametrize("at", [datetime(2022, 9, 23, tzinfo=UTC), datetime(2029, 9, 25, tzinfo=UTC)])
def test_outside_vcek_validity_is_refused(go_report: bytes, anchors: TrustAnchors, at: datetime) -> None:
    with pytest.raises(VerificationError) as err:
        verify_snp(go_report, read(GO_VCEK), read(GO_CHAIN), anchors, at)
    assert err.value.field == "evidence.vcek.validity"


def test_naive_time_is_utc(go_report: bytes, anchors: TrustAnchors) -> None:
    assert verify_snp(go_report, read(GO_VCEK), read(GO_CHAIN), anchors, datetime(2026, 1, 1)).product == "Milan"


def test_untrusted_root_in_chain_is_refused(go_report: bytes) -> None:
    genoa_only = TrustAnchors(tuple(r for r in TrustAnchors.amd().roots if r.product == "Genoa"))
    with pytest.raises(VerificationError) as err:
        verify_snp(go_report, read(GO_VCEK), read(GO_CHAIN), genoa_only, PINNED_NOW)
    assert err.value.field == "evidence.cert_chain.ark"


def test_garbage_certificates_are_parse_errors(go_report: bytes, anchors: TrustAnchors) -> None:
    with pytest.raises(ParseError) as err:
        verify_snp(go_report, b"not a certificate", read(GO_CHAIN), anchors, PINNED_NOW)
    assert err.value.field == "evidence.vcek"
    with pytest.raises(ParseError) as err:
        verify_snp(go_report, read(GO_VCEK), b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                   anchors, PINNED_NOW)
    assert err.value.field == "evidence.cert_chain"


def test_turin_vcek_chains_to_pinned_turin_root(anchors: TrustAnchors) -> None:
    vcek = load_der_cert(read("sev-snp/virtee-sev/vcek_turin.der"), "vcek")
    ask, ark = load_pem_certs(read("sev-snp/virtee-sev/cert_chain_turin"), "chain")
    assert anchors.root_for(ark) is not None and anchors.root_for(ark).product == "Turin"  # type: ignore[union-attr]
    check_signed_by(vcek, ask, "vcek")
    check_signed_by(ask, ark, "ask")
    with pytest.raises(VerificationError):
        check_signed_by(vcek, load_pem_certs(read(GO_CHAIN), "milan")[0], "vcek")


@pytest.mark.parametrize("product", ["milan", "genoa"])
def test_asvk_chains_to_pinned_root(anchors: TrustAnchors, product: str) -> None:
    asvk, ark = load_pem_certs(read(f"sev-snp/go-sev-guest/ask_ark_{product}_vlek.pem"), "chain")
    assert anchors.root_for(ark) is not None
    check_signed_by(asvk, ark, "asvk")
    assert asvk in anchors.intermediates
