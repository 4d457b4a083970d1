"""enclave.tee providers (configfs-tsm shaping, env selection) and enclave.measurement."""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from attestation import Evidence, TrustAnchors, verify_evidence
from attestation.errors import AttestationError
from attestation.simulated import SIM_CHIP_ID, SIM_TCB
from attestation.snp.report import SIG_ALGO_ECDSA_P384_SHA384, parse_report
from attestation.tdx.quote import parse_quote
from enclave import tee
from enclave.measurement import code_measurement
from enclave.tee import (
    SIM_GUEST_POLICY,
    ConfigfsTsmProvider,
    SimulatedSnpProvider,
    check_launch_binding,
    evidence_provider,
    parse_cert_table,
)
from tests.attestation._attestation_data import DATA
from wire.worker_config import BrokerIdentity, WorkerConfig, mrconfigid

NONCE = bytes(range(64))


def _cert_table(entries: list[tuple[str, bytes]]) -> bytes:
    """A GHCB certificate table: 24-byte (GUID, offset, length) entries, a zero entry, then the blobs."""
    header_size = (len(entries) + 1) * 24
    header, blobs = b"", b""
    for guid, blob in entries:
        header += bytes.fromhex(guid.replace("-", "")) + struct.pack("<II", header_size + len(blobs), len(blob))
        blobs += blob
    return header + bytes(24) + blobs


def _fake_tsm_entry(path: Path, sim_dir: Path, *, generation: int = 1) -> Path:
    """What the kernel would show in a report entry after one inblob write (outblob precomputed)."""
    report = SimulatedSnpProvider(sim_dir, bytes(48)).get_evidence(NONCE).report
    ask, ark = x509.load_pem_x509_certificates((sim_dir / "ask_ark.pem").read_bytes())
    der = serialization.Encoding.DER
    table = _cert_table([("63da758d-e664-4564-adc5-f4b93be8accd", (sim_dir / "vcek.der").read_bytes()),
                         ("4ab7b379-bbac-4fe4-a02f-05aef327c782", ask.public_bytes(der)),
                         ("c0b406a4-a803-4952-9743-3fb6014cd0ae", ark.public_bytes(der))])
    path.mkdir()
    (path / "outblob").write_bytes(report)
    (path / "auxblob").write_bytes(table)
    (path / "provider").write_text("sev_guest\n")
    (path / "generation").write_text(f"{generation}\n")
    return path


def test_configfs_evidence_from_cert_table_verifies(sim_dir: Path, tmp_path: Path) -> None:
    entry = _fake_tsm_entry(tmp_path / "entry", sim_dir)
    evidence = ConfigfsTsmProvider(tmp_path)._collect(entry, NONCE)
    assert (entry / "inblob").read_bytes() == NONCE
    claims = verify_evidence(evidence, TrustAnchors.from_dir(sim_dir), datetime.now(UTC))
    assert claims.report_data == NONCE.hex() and claims.root == "simulated"


def test_configfs_generation_race_is_detected(sim_dir: Path, tmp_path: Path) -> None:
    entry = _fake_tsm_entry(tmp_path / "entry", sim_dir, generation=2)
    with pytest.raises(AttestationError) as err:
        ConfigfsTsmProvider(tmp_path)._collect(entry, NONCE)
    assert err.value.field == "tsm.generation"
    assert str(err.value) == "tsm.generation: expected 1, got 2; another process wrote to this report entry; retry"


def test_configfs_writes_the_privilege_level_first_and_counts_both_writes(sim_dir: Path, tmp_path: Path) -> None:
    """The kernel's report folder by default; a privilege level is written before the report data, so the entry's
    generation must then be 2: one write of another process in between (generation 1 after ours) is refused."""
    assert (ConfigfsTsmProvider().root, ConfigfsTsmProvider().privlevel) == (Path("/sys/kernel/config/tsm/report"),
                                                                             None)
    entry = _fake_tsm_entry(tmp_path / "entry", sim_dir, generation=2)
    assert ConfigfsTsmProvider(tmp_path, privlevel=2)._collect(entry, NONCE).tee == "sev-snp"
    assert ((entry / "privlevel").read_text(), (entry / "inblob").read_bytes()) == ("2", NONCE)
    (entry / "generation").write_text("1\n")
    with pytest.raises(AttestationError) as err:
        ConfigfsTsmProvider(tmp_path, privlevel=2)._collect(entry, NONCE)
    assert (err.value.field, err.value.expected, err.value.actual) == ("tsm.generation", 2, 1)


def test_configfs_of_another_tee_is_refused_word_for_word(sim_dir: Path, tmp_path: Path) -> None:
    entry = _fake_tsm_entry(tmp_path / "entry", sim_dir)
    (entry / "provider").write_text("arm_cca_guest\n")
    with pytest.raises(AttestationError) as err:
        ConfigfsTsmProvider(tmp_path)._collect(entry, NONCE)
    assert str(err.value) == ("tsm.provider: expected sev_guest or tdx_guest, got arm_cca_guest; this TEE is not "
                              "supported")


def test_configfs_without_certificates_is_refused(sim_dir: Path, tmp_path: Path) -> None:
    entry = _fake_tsm_entry(tmp_path / "entry", sim_dir)
    (entry / "auxblob").write_bytes(b"")
    with pytest.raises(AttestationError) as err:
        ConfigfsTsmProvider(tmp_path)._collect(entry, NONCE)
    assert err.value.field == "tsm.auxblob"


_ASK, _ARK = "4ab7b379-bbac-4fe4-a02f-05aef327c782", "c0b406a4-a803-4952-9743-3fb6014cd0ae"
_VLEK = "a8074bc2-a25a-483e-aae6-39c045a0b8a1"


def test_a_certificate_table_without_the_vcek_or_vlek_is_refused_word_for_word(sim_dir: Path) -> None:
    """The host serves AMD's ASK and ARK but no chip key: nothing in the table can have signed the report."""
    ask, ark = x509.load_pem_x509_certificates((sim_dir / "ask_ark.pem").read_bytes())
    der = serialization.Encoding.DER
    with pytest.raises(AttestationError) as refused:
        tee._snp_evidence(b"report", _cert_table([(_ASK, ask.public_bytes(der)), (_ARK, ark.public_bytes(der))]))
    assert str(refused.value) == ("tsm.auxblob: expected a certificate table holding the VCEK or VLEK, got 2 entries; "
                                  "configure the host to serve SNP certificates")


def test_a_vlek_table_gives_the_vlek_and_the_ask_then_the_ark_whatever_their_order(sim_dir: Path) -> None:
    ask, ark = x509.load_pem_x509_certificates((sim_dir / "ask_ark.pem").read_bytes())
    der, pem = serialization.Encoding.DER, serialization.Encoding.PEM
    vlek = (sim_dir / "vcek.der").read_bytes()  # a chip key served under the VLEK's GUID
    table = _cert_table([(_ARK, ark.public_bytes(der)), (_VLEK, vlek), (_ASK, ask.public_bytes(der))])
    evidence = tee._snp_evidence(b"report", table)
    assert (evidence.tee, evidence.report, evidence.vcek) == ("sev-snp", b"report", vlek)
    assert evidence.cert_chain == (ask.public_bytes(pem) + ark.public_bytes(pem)).decode()
    only_ark = tee._snp_evidence(b"report", _cert_table([(_VLEK, vlek), (_ARK, ark.public_bytes(der))]))
    assert only_ark.cert_chain == ark.public_bytes(pem).decode()  # the ASK left to the verifier's anchors
    with pytest.raises(AttestationError) as refused:
        tee._snp_evidence(b"report", _cert_table([(_VLEK, vlek), (_ASK, b"not DER")]))
    assert (refused.value.field, refused.value.expected) == ("tsm.auxblob", "a DER X.509 certificate")


def test_configfs_rejects_short_report_data_before_touching_configfs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="64 bytes"):
        ConfigfsTsmProvider(tmp_path / "missing").get_evidence(bytes(10))


def test_cert_table_out_of_bounds_entry_is_refused() -> None:
    bad = bytes(16) + struct.pack("<II", 1000, 10) + bytes(24)
    bad = b"\x01" + bad[1:]
    with pytest.raises(ValueError, match="outside"):
        parse_cert_table(bad)


def _entry(guid: str, offset: int, length: int) -> bytes:
    return bytes.fromhex(guid.replace("-", "")) + struct.pack("<II", offset, length)


@pytest.mark.parametrize(("offset", "length"), [(48, 11), (0, 2**32 - 1), (2**31, 2**31)])
def test_a_cert_table_entry_reaching_past_the_blob_is_refused(offset: int, length: int) -> None:
    """An entry inside the blob whose length runs past its end, and lengths or offsets that are negative when read
    signed (they are unsigned: 4 GiB, 2 GiB)."""
    blob = _entry(_ASK, offset, length) + bytes(24) + b"0123456789"  # 58 bytes
    with pytest.raises(ValueError) as refused:
        parse_cert_table(blob)
    assert str(refused.value) == "certificate table entry at 0 points outside the blob"
    assert parse_cert_table(_entry(_ASK, 48, 10) + bytes(24) + b"0123456789") == {_guid(_ASK): b"0123456789"}


def _guid(text: str) -> bytes:
    return bytes.fromhex(text.replace("-", ""))


def test_a_cert_table_is_read_to_its_last_whole_entry_and_empty_entries_do_not_end_it() -> None:
    """Only an all-zero entry ends the table: an entry at offset 0 or of length 0 is an entry. A table that fills its
    blob without a terminator is read to its last entry; a trailing partial entry is not read."""
    table = _entry(_VLEK, 0, 0) + _entry(_ASK, 48, 0) + _entry(_ARK, 0, 24)
    entries = {_guid(_VLEK): b"", _guid(_ASK): b"", _guid(_ARK): table[:24]}
    assert parse_cert_table(table) == entries and parse_cert_table(table + b"\x01" * 23) == entries
    assert parse_cert_table(_entry(_ASK, 48, 0) + bytes(24) + _entry(_ARK, 0, 0)) == {_guid(_ASK): b""}  # ended


def _config(tee_kind: str = "simulated-sev-snp") -> WorkerConfig:

    return WorkerConfig(tee_kind, (BrokerIdentity("owner", "https://127.0.0.1:1", _CA_PEM),),
                        (BrokerIdentity("provider", "https://127.0.0.1:2", _CA_PEM, ({"kty": "OKP", "crv": "Ed25519",
                                                                                  "x": "A" * 43},)),))


_CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_provider_follows_the_measured_configuration(monkeypatch: pytest.MonkeyPatch, sim_dir: Path) -> None:
    monkeypatch.delenv("CSCORE_TEE", raising=False)
    monkeypatch.setenv("CSCORE_SIM_TEE_DIR", str(sim_dir))
    config = _config()
    provider = evidence_provider(config)
    assert isinstance(provider, SimulatedSnpProvider)
    claims = verify_evidence(provider.get_evidence(NONCE), TrustAnchors.from_dir(sim_dir), datetime.now(UTC))
    assert claims.measurement == code_measurement().hex()
    assert claims.host_data == config.digest_hex()  # the configuration's digest, where a host puts it
    assert check_launch_binding(provider, config) == config.digest_hex()
    assert isinstance(evidence_provider(_config("configfs-tsm")), tee.ConfigfsTsmProvider)
    monkeypatch.setenv("CSCORE_TEE", "configfs-tsm")  # the environment cannot change what was measured
    with pytest.raises(RuntimeError) as refused:
        evidence_provider(config)
    assert str(refused.value) == ("CSCORE_TEE='configfs-tsm' disagrees with the worker configuration's tee "
                                  "'simulated-sev-snp'; the measured configuration decides: unset CSCORE_TEE or launch "
                                  "with another configuration")
    monkeypatch.delenv("CSCORE_TEE")
    monkeypatch.delenv("CSCORE_SIM_TEE_DIR")
    with pytest.raises(RuntimeError) as refused:
        evidence_provider(config)
    assert str(refused.value) == "tee simulated-sev-snp needs CSCORE_SIM_TEE_DIR (the simulated firmware folder)"


def test_a_guest_launched_with_another_configuration_refuses_to_run(sim_dir: Path) -> None:
    launched = _config()
    handed = WorkerConfig("simulated-sev-snp", launched.owners[:0] + (BrokerIdentity(
        "owner", "https://127.0.0.1:9", _CA_PEM),), launched.providers)  # another owner broker URL
    provider = SimulatedSnpProvider(sim_dir, code_measurement(), host_data=launched.digest())
    with pytest.raises(AttestationError) as refused:
        check_launch_binding(provider, handed)
    assert refused.value.field == "host_data" and refused.value.expected == handed.digest_hex()
    assert refused.value.actual == launched.digest_hex()
    assert str(refused.value) == f"host_data: expected {handed.digest_hex()}, got {launched.digest_hex()}; {_RELAUNCH}"


_RELAUNCH = ("this guest was launched with another worker configuration; relaunch with the configuration's digest as "
             "HOST_DATA / MRCONFIGID")
_TDX_QUOTE = (DATA / "tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat").read_bytes()
_MRCONFIGID_AT = 48 + 184  # the quote's header, then MRTD's 48 bytes at 136 of the TD report body


class _TdxGuest:
    """A TDX guest's provider whose quote carries ``mrconfigid`` (the quote's own signature is not what is checked)."""

    tee = "tdx"

    def __init__(self, mrconfigid: bytes) -> None:
        self._quote = _TDX_QUOTE[:_MRCONFIGID_AT] + mrconfigid + _TDX_QUOTE[_MRCONFIGID_AT + 48:]

    def get_evidence(self, report_data: bytes) -> Evidence:
        return Evidence(tee="tdx", report=self._quote)


def test_a_tdx_guest_is_bound_to_its_configuration_by_mrconfigid() -> None:
    """On TDX the host sets MRCONFIGID (the digest, then 16 zero bytes): launched with it, the guest runs; launched
    with another configuration's, it refuses naming MRCONFIGID with what it carries."""
    launched, handed = _config(), _config("configfs-tsm")
    assert parse_quote(_TdxGuest(mrconfigid(launched.digest())).get_evidence(NONCE).report).mr_config_id == (
        launched.digest() + bytes(16))
    assert check_launch_binding(_TdxGuest(mrconfigid(launched.digest())), launched) == launched.digest_hex()
    with pytest.raises(AttestationError) as refused:
        check_launch_binding(_TdxGuest(mrconfigid(launched.digest())), handed)
    carried = launched.digest_hex() + "00" * 16
    assert (refused.value.field, refused.value.expected, refused.value.actual) == (
        "mrconfigid", handed.digest_hex(), carried)
    assert str(refused.value) == f"mrconfigid: expected {handed.digest_hex()}, got {carried}; {_RELAUNCH}"



def _tree(root: Path) -> Path:
    for rel, text in {"enclave/a.py": "A = 1\n", "tasks/b.py": "B = 2\n", "attestation/snp/c.py": "C = 3\n",
                      "sdk/ignored.py": "X = 0\n", "enclave/notes.txt": "not code\n"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_code_measurement_changes_with_any_measured_code(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    base = code_measurement(root)
    assert len(base) == 48 and code_measurement(root) == base
    (root / "sdk/ignored.py").write_text("X = 1\n")
    (root / "enclave/notes.txt").write_text("changed\n")
    assert code_measurement(root) == base  # outside the trusted code
    (root / "attestation/snp/c.py").write_text("C = 4\n")
    changed = code_measurement(root)
    assert changed != base
    (root / "attestation/snp/c.py").rename(root / "attestation/snp/d.py")  # same content, new path
    assert code_measurement(root) not in (base, changed)
    (root / "tasks/new.py").write_text("")
    assert code_measurement(root) != changed


def test_code_measurement_of_this_checkout_is_stable() -> None:
    assert code_measurement() == code_measurement(Path(tee.__file__).resolve().parents[1])


def test_the_simulated_report_is_what_a_milan_guest_with_that_vcek_reports(sim_dir: Path) -> None:
    """Every field a policy or a person reads is a real Milan's for a launched guest: VMPL 0, the chip id shown
    (a chip pin can match it), every TCB the VCEK's, no ID or author key, no migration agent, firmware 1.55.21."""
    provider = SimulatedSnpProvider(sim_dir, bytes(range(48)), host_data=b"\x07" * 32)
    report = parse_report(provider.get_evidence(NONCE).report)
    assert (report.version, report.guest_svn, report.policy, report.vmpl, report.debug) == (
        3, 0, SIM_GUEST_POLICY, 0, False)
    assert (report.signature_algo, report.signing_key, report.platform_info) == (SIG_ALGO_ECDSA_P384_SHA384, "vcek", 1)
    assert (report.author_key_en, report.mask_chip_id, report.chip_id) == (False, False, SIM_CHIP_ID)
    assert report.current_tcb == report.reported_tcb == report.committed_tcb == report.launch_tcb == SIM_TCB
    assert (report.current_major, report.current_minor, report.current_build) == (1, 55, 21)
    assert (report.committed_major, report.committed_minor, report.committed_build) == (1, 55, 21)
    assert (report.cpuid_fam_id, report.cpuid_mod_id, report.cpuid_step, report.product) == (0x19, 1, 1, "Milan")
    assert (report.family_id, report.image_id, report.id_key_digest, report.author_key_digest) == (
        bytes(16), bytes(16), bytes(48), bytes(48))
    assert (report.report_id_ma, report.host_data, report.measurement) == (b"\xff" * 32, b"\x07" * 32,
                                                                           bytes(range(48)))
    again = parse_report(provider.get_evidence(NONCE).report)
    other = parse_report(SimulatedSnpProvider(sim_dir, bytes(48)).get_evidence(NONCE).report)
    assert again.report_id == report.report_id != other.report_id  # one guest per provider


@pytest.mark.parametrize(("report_data", "shown"), [(bytes(63), "63"), ("x" * 64, "str"), (None, "NoneType")])
def test_report_data_other_than_64_bytes_is_refused_naming_what_it_was(sim_dir: Path, report_data: object,
                                                                       shown: str) -> None:
    provider = SimulatedSnpProvider(sim_dir, bytes(48))
    with pytest.raises(ValueError) as refused:
        provider.get_evidence(report_data)  # type: ignore[arg-type]
    assert str(refused.value) == f"report_data must be exactly 64 bytes (e.g. a SHA-512 digest), got {shown}"
    assert parse_report(provider.get_evidence(bytearray(NONCE)).report).report_data == NONCE  # type: ignore[arg-type]


def test_simulated_firmware_with_a_key_or_vcek_it_cannot_use_is_refused_naming_the_file(sim_dir: Path,
                                                                                        tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from attestation.errors import ParseError

    for name in ("vcek.key", "vcek.der", "ask_ark.pem"):
        (tmp_path / name).write_bytes((sim_dir / name).read_bytes())
    good_key = (tmp_path / "vcek.key").read_bytes()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    (tmp_path / "vcek.key").write_bytes(rsa_key.private_bytes(serialization.Encoding.PEM,
                                                              serialization.PrivateFormat.PKCS8,
                                                              serialization.NoEncryption()))
    with pytest.raises(ValueError) as refused:
        SimulatedSnpProvider(tmp_path, bytes(48))
    assert str(refused.value) == f"{tmp_path / 'vcek.key'} is not an EC private key"
    (tmp_path / "vcek.key").write_bytes(good_key)
    (tmp_path / "vcek.der").write_bytes(b"not DER")
    with pytest.raises(ParseError) as unreadable:
        SimulatedSnpProvider(tmp_path, bytes(48))
    assert unreadable.value.field == str(tmp_path / "vcek.der")
    assert unreadable.value.expected == "a DER X.509 certificate"


def test_a_chip_key_without_a_hwid_gives_a_chip_id_of_zeros(sim_dir: Path) -> None:
    """As a VLEK (no hwID extension) would: 64 zero bytes, not filler of another kind."""
    ask = x509.load_pem_x509_certificates((sim_dir / "ask_ark.pem").read_bytes())[0]  # no hwID either
    assert tee._hwid_from_cert(ask) == bytes(64)

