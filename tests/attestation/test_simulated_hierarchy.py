"""The simulated AMD hierarchy, field by field: names marked NOT AMD, AMD-shaped extensions, RSA-PSS SHA-384
signatures by the right issuer, validity windows, the firmware files and their modes, the command line.

Key generation is recorded and answered with the keys of one hierarchy made once per process (RSA-3072 takes
seconds on a loaded machine): the sizes, exponent and curve asked for are asserted, and every certificate is
checked against the public key of the key it claims, so a key swapped between ARK and ASK is caught.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from attestation import simulated
from attestation.simulated import FILES, SIM_CHIP_ID, SIM_TCB, SimulatedHierarchy, generate_chain, generate_hierarchy
from attestation.snp.report import TcbVersion
from attestation.snp.verify import OID_HWID, OID_PRODUCT_NAME, TCB_OIDS
from tests.keybroker.inproc import _hierarchy

DER, SPKI = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


@pytest.fixture
def keygen(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Key generation answered from one cached hierarchy (ARK key, then ASK key; the leaf key), calls recorded."""
    cached = _hierarchy()
    rsa_keys = iter([cached.ark_key, cached.ask_key] * 4)
    calls: list[tuple[str, Any]] = []

    def rsa_key(**kwargs: Any) -> rsa.RSAPrivateKey:
        calls.append(("rsa", kwargs))
        return next(rsa_keys)

    def ec_key(curve: ec.EllipticCurve, *args: Any) -> ec.EllipticCurvePrivateKey:
        calls.append(("ec", (type(curve), args)))
        return cached.leaf_key

    monkeypatch.setattr(simulated, "rsa", SimpleNamespace(generate_private_key=rsa_key))
    monkeypatch.setattr(simulated, "ec", SimpleNamespace(generate_private_key=ec_key, SECP384R1=ec.SECP384R1))
    return calls


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def five_hours_west(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local time zone 5 hours behind UTC (a POSIX zone: no tz database needed), then restored."""
    monkeypatch.setenv("TZ", "EST+05")
    time.tzset()
    try:
        yield
    finally:
        monkeypatch.undo()
        time.tzset()


def _attributes(name: x509.Name) -> list[tuple[str, str]]:
    return [(a.oid.dotted_string, str(a.value)) for a in name]


def _sim_name(cn: str) -> list[tuple[str, str]]:
    return [(NameOID.ORGANIZATION_NAME.dotted_string, "SIMULATED - NOT Advanced Micro Devices"),
            (NameOID.ORGANIZATIONAL_UNIT_NAME.dotted_string, "cscore development TEE - NOT AMD"),
            (NameOID.COMMON_NAME.dotted_string, f"SIMULATED {cn} NOT AMD")]


def _signed_by(cert: x509.Certificate, key: rsa.RSAPrivateKey) -> None:
    """RSA-PSS with SHA-384, MGF1 SHA-384 and a 48-byte salt, by ``key`` (raises otherwise)."""
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA384)
    key.public_key().verify(cert.signature, cert.tbs_certificate_bytes, PSS, hashes.SHA384())


def _extensions(cert: x509.Certificate) -> list[tuple[str, bool, bytes]]:
    out = []
    for ext in cert.extensions:
        value = ext.value.value if isinstance(ext.value, x509.UnrecognizedExtension) else repr(ext.value).encode()
        out.append((ext.oid.dotted_string, ext.critical, value))
    return out


def _amd_extensions(product: str, tcb: TcbVersion, hwid: bytes | None) -> list[tuple[str, bool, bytes]]:
    name = f"{product}-B0".encode()
    out = [(OID_PRODUCT_NAME, False, b"\x16" + bytes([len(name)]) + name)]
    out += [(TCB_OIDS[k], False, bytes([0x02, 1, v]) if v < 128 else bytes([0x02, 2, 0, v]))
            for k, v in tcb.as_dict().items()]
    return out + ([(OID_HWID, False, hwid)] if hwid is not None else [])


def _window(cert: x509.Certificate) -> tuple[dt.datetime, dt.datetime]:
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def test_der_integers_are_encoded_as_amd_encodes_spl_values() -> None:
    assert simulated._der_int(0) == b"\x02\x01\x00"
    assert simulated._der_int(22) == b"\x02\x01\x16"
    assert simulated._der_int(127) == b"\x02\x01\x7f"
    assert simulated._der_int(128) == b"\x02\x02\x00\x80"  # a leading zero keeps it positive
    assert simulated._der_int(213) == b"\x02\x02\x00\xd5"
    assert simulated._der_int(255) == b"\x02\x02\x00\xff"


def test_names_say_simulated_and_not_amd_in_every_attribute() -> None:
    assert _attributes(simulated._name("ARK-Milan")) == _sim_name("ARK-Milan")


def test_an_amd_extension_is_unrecognised_and_not_critical() -> None:
    ext = simulated._amd_ext(OID_HWID, b"\x01\x02")
    assert ext.oid.dotted_string == OID_HWID and ext.critical is False
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    assert ext.value.oid.dotted_string == OID_HWID and ext.value.value == b"\x01\x02"


def test_the_builder_sets_names_key_serial_and_a_window_from_a_day_ago(keygen: list[tuple[str, Any]],
                                                                      five_hours_west: None) -> None:
    key = _hierarchy().ark_key
    subject, issuer = simulated._name("S"), simulated._name("I")
    start = dt.datetime.now(dt.UTC).replace(microsecond=0)
    cert = simulated._builder(subject, issuer, key.public_key(), 42, 3).sign(key, hashes.SHA384(), rsa_padding=PSS)
    end = dt.datetime.now(dt.UTC)
    assert cert.subject == subject and cert.issuer == issuer and cert.serial_number == 42
    assert cert.public_key().public_bytes(DER, SPKI) == key.public_key().public_bytes(DER, SPKI)
    before, after = _window(cert)
    assert start - dt.timedelta(days=1) <= before <= end - dt.timedelta(days=1)
    assert after - before == dt.timedelta(days=1 + 365 * 3)


def test_a_vcek_hierarchy_is_shaped_like_amds(keygen: list[tuple[str, Any]]) -> None:
    start = dt.datetime.now(dt.UTC).replace(microsecond=0)
    h = generate_hierarchy()
    end = dt.datetime.now(dt.UTC)
    cached = _hierarchy()
    assert keygen == [("rsa", {"public_exponent": 65537, "key_size": 3072}),
                      ("rsa", {"public_exponent": 65537, "key_size": 3072}), ("ec", (ec.SECP384R1, ()))]
    assert isinstance(h, SimulatedHierarchy)
    assert (h.ark_key, h.ask_key, h.leaf_key) == (cached.ark_key, cached.ask_key, cached.leaf_key)
    assert _attributes(h.ark.subject) == _attributes(h.ark.issuer) == _sim_name("ARK-Milan")
    assert _attributes(h.ask.subject) == _sim_name("SEV-Milan") and h.ask.issuer == h.ark.subject
    assert _attributes(h.leaf.subject) == _sim_name("SEV-VCEK") and h.leaf.issuer == h.ask.subject
    assert [c.serial_number for c in (h.ark, h.ask, h.leaf)] == [1, 2, 3]
    for cert, key in ((h.ark, h.ark_key), (h.ask, h.ask_key)):
        assert cert.public_key().public_bytes(DER, SPKI) == key.public_key().public_bytes(DER, SPKI)
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).critical is True
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value == x509.BasicConstraints(
            ca=True, path_length=None)
        assert len(cert.extensions) == 1
    assert h.leaf.public_key().public_bytes(DER, SPKI) == h.leaf_key.public_key().public_bytes(DER, SPKI)
    _signed_by(h.ark, h.ark_key)
    _signed_by(h.ask, h.ark_key)
    _signed_by(h.leaf, h.ask_key)
    assert _extensions(h.leaf) == _amd_extensions("Milan", SIM_TCB, SIM_CHIP_ID)
    for cert, years in ((h.ark, 25), (h.ask, 25), (h.leaf, 7)):
        before, after = _window(cert)
        assert start - dt.timedelta(days=1) <= before <= end - dt.timedelta(days=1)
        assert after - before == dt.timedelta(days=1 + 365 * years)


def test_a_vlek_hierarchy_has_an_asvk_and_a_leaf_without_hwid(keygen: list[tuple[str, Any]]) -> None:
    tcb = TcbVersion(bootloader=9, tee=1, snp=200, microcode=100)
    h = generate_hierarchy("Genoa", tcb, b"\xaa" * 64, vlek=True)
    assert _attributes(h.ark.subject) == _sim_name("ARK-Genoa")
    assert _attributes(h.ask.subject) == _sim_name("SEV-VLEK-Genoa") and h.ask.issuer == h.ark.subject
    assert _attributes(h.leaf.subject) == _sim_name("SEV-VLEK") and h.leaf.issuer == h.ask.subject
    assert _extensions(h.leaf) == _amd_extensions("Genoa", tcb, None)
    _signed_by(h.leaf, h.ask_key)


def test_a_turin_vcek_carries_an_8_byte_hwid_and_its_fmc(keygen: list[tuple[str, Any]]) -> None:
    tcb = TcbVersion(bootloader=1, tee=2, snp=3, microcode=4, fmc=5)
    chip = bytes(range(64))
    h = generate_hierarchy("Turin", tcb, chip)
    assert _extensions(h.leaf) == _amd_extensions("Turin", tcb, chip[:8])
    assert (TCB_OIDS["fmc"], False, b"\x02\x01\x05") in _extensions(h.leaf)
    assert _attributes(h.ask.subject) == _sim_name("SEV-Turin")


def test_the_chain_is_leaf_ask_ark_with_the_leaf_key(keygen: list[tuple[str, Any]]) -> None:
    tcb = TcbVersion(bootloader=7, tee=0, snp=8, microcode=9)
    key, chain = generate_chain("Genoa", tcb, b"\x01" * 64)
    assert key is _hierarchy().leaf_key and len(chain) == 3
    leaf, ask, ark = chain
    assert _attributes(ark.subject) == _sim_name("ARK-Genoa") and _attributes(ask.subject) == _sim_name("SEV-Genoa")
    assert _extensions(leaf) == _amd_extensions("Genoa", tcb, b"\x01" * 64)
    _signed_by(leaf, _hierarchy().ask_key)
    _signed_by(ask, _hierarchy().ark_key)
    default_key, default_chain = generate_chain()
    assert _extensions(default_chain[0]) == _amd_extensions("Milan", SIM_TCB, SIM_CHIP_ID)


def _firmware_bytes(folder: Path) -> dict[str, bytes]:
    return {f: (folder / f).read_bytes() for f in FILES}


def test_firmware_files_hold_the_chain_and_the_key_with_their_modes(keygen: list[tuple[str, Any]],
                                                                    umask_zero: None, tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"  # parents are made
    (folder).mkdir(parents=True)
    for name in ("vcek.key.tmp", "vcek.der.tmp"):  # a crashed earlier write, readable by all: not reused
        (folder / name).write_bytes(b"stale " * 1000)
        (folder / name).chmod(0o666)
    simulated.create_simulated_firmware(folder)
    cached = _hierarchy()
    files = _firmware_bytes(folder)
    vcek = x509.load_der_x509_certificate(files["vcek.der"])
    ask, ark = x509.load_pem_x509_certificates(files["ask_ark.pem"])
    assert files["ark.pem"] == ark.public_bytes(serialization.Encoding.PEM)
    assert files["ask_ark.pem"] == ask.public_bytes(serialization.Encoding.PEM) + files["ark.pem"]
    _signed_by(vcek, cached.ask_key)
    _signed_by(ask, cached.ark_key)
    assert _attributes(ask.subject) == _sim_name("SEV-Milan") and _attributes(ark.subject) == _sim_name("ARK-Milan")
    assert files["vcek.key"] == cached.leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    modes = {f: stat.S_IMODE((folder / f).stat().st_mode) for f in FILES}
    assert modes == {"vcek.key": 0o600, "vcek.der": 0o644, "ask_ark.pem": 0o644, "ark.pem": 0o644}
    assert sorted(os.listdir(folder)) == sorted([".lock", *FILES])  # no temporary file left


def test_firmware_in_a_new_nested_folder_and_again_in_the_same_one(keygen: list[tuple[str, Any]],
                                                                   tmp_path: Path) -> None:
    folder = tmp_path / "new" / "nested"
    simulated.create_simulated_firmware(folder)
    before = _firmware_bytes(folder)
    simulated.create_simulated_firmware(folder)  # complete: left as it is, no new keys
    assert _firmware_bytes(folder) == before and len(keygen) == 3


def test_a_partial_firmware_folder_is_refused_naming_what_it_holds(keygen: list[tuple[str, Any]],
                                                                   tmp_path: Path) -> None:
    (tmp_path / "ark.pem").write_bytes(b"x")
    (tmp_path / "vcek.der").write_bytes(b"y")
    with pytest.raises(FileExistsError) as refused:
        simulated.create_simulated_firmware(tmp_path)
    assert str(refused.value) == (f"{tmp_path} holds only ['vcek.der', 'ark.pem'] of ['vcek.key', 'vcek.der', "
                                  "'ask_ark.pem', 'ark.pem']; remove them and retry")
    assert keygen == [] and (tmp_path / "ark.pem").read_bytes() == b"x"


def test_the_command_line_creates_the_files_and_says_not_amd(keygen: list[tuple[str, Any]], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert simulated.main(["init", str(tmp_path / "fw")]) == 0
    assert capsys.readouterr().out == f"simulated SEV-SNP firmware (NOT AMD) ready in {tmp_path / 'fw'}\n"
    vcek = x509.load_der_x509_certificate(_firmware_bytes(tmp_path / "fw")["vcek.der"])
    assert _extensions(vcek) == _amd_extensions("Milan", SIM_TCB, SIM_CHIP_ID) and len(keygen) == 3


def test_the_command_line_help_says_development_only_and_an_action_is_required(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        simulated.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("usage: python -m attestation.simulated [-h] {init}")
    assert lines[2] == "Simulated SEV-SNP firmware keys (NOT AMD; development only)"
    assert [line.split(None, 1) for line in lines if line.strip().startswith("init")] == [
        ["init", "create vcek.key, vcek.der, ask_ark.pem, ark.pem in DIR"]]
    with pytest.raises(SystemExit) as done:
        simulated.main(["init", "--help"])
    assert capsys.readouterr().out.startswith("usage: python -m attestation.simulated init [-h] dir")
    with pytest.raises(SystemExit) as done:
        simulated.main([])
    assert done.value.code == 2
    assert "the following arguments are required: command" in capsys.readouterr().err
