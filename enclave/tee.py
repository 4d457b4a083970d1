"""Evidence providers: where the worker gets signed evidence binding its ``report_data``.

- :class:`SimulatedSnpProvider`: development/CI. Builds a byte-exact SEV-SNP v3 report with the
  given measurement and signs it with the simulated VCEK (``attestation.simulated``). Verifiers
  treat it exactly like a real report; only its root is "simulated".
- :class:`ConfigfsTsmProvider`: real SEV-SNP and TDX guests, through Linux's configfs-tsm ABI
  (Documentation/ABI/testing/configfs-tsm).
- :func:`evidence_provider`: picks one from the measured worker configuration's ``tee``.
"""

from __future__ import annotations

import os
import secrets
import struct
import uuid
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from attestation import Evidence
from attestation.anchors import load_der_cert
from attestation.errors import AttestationError
from attestation.snp.report import (
    SIG_ALGO_ECDSA_P384_SHA384,
    SIGNED_SIZE,
    SnpReport,
    TcbVersion,
    encode_report,
    with_signature,
)
from attestation.snp.verify import OID_HWID, TCB_OIDS, extension_bytes
from wire.worker_config import WorkerConfig, config_digest_from_claims, host_data

REPORT_DATA_SIZE = 64
MEASUREMENT_SIZE = 48
# Guest policy: ABI 0.0, SMT allowed (bit 16), reserved bit 17 set (must be 1), debug (bit 19) off.
SIM_GUEST_POLICY = 1 << 16 | 1 << 17
SIM_CPUID = (0x19, 0x01, 0x01)  # family/model/stepping of a Milan part


class EvidenceProvider(Protocol):
    """Produces evidence whose REPORT_DATA is exactly the 64 bytes given."""

    def get_evidence(self, report_data: bytes) -> Evidence:
        """Return fresh evidence binding ``report_data`` (64 bytes; ValueError otherwise)."""
        ...


def _check_report_data(report_data: bytes) -> bytes:
    if not isinstance(report_data, bytes | bytearray) or len(report_data) != REPORT_DATA_SIZE:
        size = len(report_data) if isinstance(report_data, bytes | bytearray) else type(report_data).__name__
        raise ValueError(f"report_data must be exactly {REPORT_DATA_SIZE} bytes (e.g. a SHA-512 digest), got {size}")
    return bytes(report_data)


class SimulatedSnpProvider:
    """Signs SEV-SNP v3 reports with the simulated VCEK in ``sim_dir`` (see attestation.simulated).

    The report carries ``measurement`` (48 bytes), debug off, CHIP_ID equal to the VCEK's hwID and
    every TCB field equal to the VCEK's TCB extensions, as a real Milan would.
    """

    tee = "sev-snp"  # the TEE kind an attested session announces at /kbs/v0/auth

    def __init__(self, sim_dir: Path, measurement: bytes, *, host_data: bytes = bytes(32)) -> None:
        if len(measurement) != MEASUREMENT_SIZE:
            raise ValueError(f"measurement must be {MEASUREMENT_SIZE} bytes (SHA-384), got {len(measurement)}")
        sim_dir = Path(sim_dir)
        missing = [f for f in ("vcek.key", "vcek.der", "ask_ark.pem") if not (sim_dir / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{sim_dir} lacks {missing}; run: python -m attestation.simulated init {sim_dir}")
        key = serialization.load_pem_private_key((sim_dir / "vcek.key").read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{sim_dir / 'vcek.key'} is not an EC private key")
        self._key = key
        self._vcek_der = (sim_dir / "vcek.der").read_bytes()
        self._chain = (sim_dir / "ask_ark.pem").read_text()
        vcek = load_der_cert(self._vcek_der, str(sim_dir / "vcek.der"))
        self._tcb = _tcb_from_cert(vcek)
        self._chip_id = _hwid_from_cert(vcek)
        self._measurement = bytes(measurement)
        self._host_data = bytes(host_data)
        self._report_id = secrets.token_bytes(32)  # one "guest" per provider instance

    def get_evidence(self, report_data: bytes) -> Evidence:
        """A freshly signed report binding ``report_data``."""
        unsigned = self._report(_check_report_data(report_data))
        digest_input = encode_report(unsigned)[:SIGNED_SIZE]
        r, s = decode_dss_signature(self._key.sign(digest_input, ec.ECDSA(hashes.SHA384())))
        signed = with_signature(unsigned, r, s)
        return Evidence(tee="sev-snp", report=signed.raw, vcek=self._vcek_der, cert_chain=self._chain)

    def _report(self, report_data: bytes) -> SnpReport:
        tcb = self._tcb
        return SnpReport(
            version=3, guest_svn=0, policy=SIM_GUEST_POLICY, family_id=bytes(16), image_id=bytes(16), vmpl=0,
            signature_algo=SIG_ALGO_ECDSA_P384_SHA384, current_tcb=tcb, platform_info=1,
            author_key_en=False, mask_chip_id=False, signing_key="vcek", report_data=report_data,
            measurement=self._measurement, host_data=self._host_data, id_key_digest=bytes(48),
            author_key_digest=bytes(48), report_id=self._report_id, report_id_ma=b"\xff" * 32,
            reported_tcb=tcb, chip_id=self._chip_id, committed_tcb=tcb, current_build=21, current_minor=55,
            current_major=1, committed_build=21, committed_minor=55, committed_major=1, launch_tcb=tcb,
            signature_r=0, signature_s=0, cpuid_fam_id=SIM_CPUID[0], cpuid_mod_id=SIM_CPUID[1],
            cpuid_step=SIM_CPUID[2], product="Milan",
        )


def _tcb_from_cert(cert: x509.Certificate) -> TcbVersion:
    values = {}
    for name, oid in TCB_OIDS.items():
        raw = extension_bytes(cert, oid)
        if raw is not None:
            values[name] = int.from_bytes(raw[2:], "big")
    return TcbVersion(**values)


def _hwid_from_cert(cert: x509.Certificate) -> bytes:
    hwid = extension_bytes(cert, OID_HWID) or b""
    return hwid.ljust(64, b"\x00")


# GUIDs of the GHCB certificate table (AMD 56421, MSG_REPORT_REQ extended request)
_VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd").bytes
_VLEK_GUID = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1").bytes
_ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782").bytes
_ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae").bytes


def parse_cert_table(blob: bytes) -> dict[bytes, bytes]:
    """Parse a GHCB certificate table (24-byte GUID/offset/length entries, zero-terminated)."""
    table: dict[bytes, bytes] = {}
    for pos in range(0, len(blob) - 23, 24):
        guid, offset, length = blob[pos:pos + 16], *struct.unpack_from("<II", blob, pos + 16)
        if not any(guid) and offset == 0 and length == 0:
            return table
        if offset + length > len(blob):
            raise ValueError(f"certificate table entry at {pos} points outside the blob")
        table[guid] = blob[offset:offset + length]
    return table


class ConfigfsTsmProvider:
    """Evidence from the kernel's configfs-tsm interface (one report entry per request).

    For ``sev_guest`` the outblob is the raw report and the auxblob the host-provided certificate
    table (VCEK or VLEK, ASK, ARK); hosts must supply it (SNP extended config) since the enclave
    cannot reach AMD's key distribution service. For ``tdx_guest`` the outblob is a DCAP quote
    (v4/v5) carrying its own PCK chain; Intel collateral is the verifier's to fetch.
    """

    def __init__(self, root: str | Path = "/sys/kernel/config/tsm/report", privlevel: int | None = None) -> None:
        self.root = Path(root)
        self.privlevel = privlevel
        self._tee: str | None = None

    @property
    def tee(self) -> str:
        """"sev-snp" or "tdx": the kind of this guest's evidence (one report is requested if none was yet)."""
        if self._tee is None:
            self.get_evidence(bytes(REPORT_DATA_SIZE))
        return str(self._tee)

    def get_evidence(self, report_data: bytes) -> Evidence:
        """Request a report for ``report_data`` and wrap it as Evidence."""
        report_data = _check_report_data(report_data)
        entry = self.root / f"cscore-{os.getpid()}-{secrets.token_hex(4)}"
        entry.mkdir()  # a private entry per request: no generation races with other callers
        try:
            evidence = self._collect(entry, report_data)
        finally:
            entry.rmdir()
        self._tee = evidence.tee
        return evidence

    def _collect(self, entry: Path, report_data: bytes) -> Evidence:
        writes = 0
        if self.privlevel is not None:
            (entry / "privlevel").write_text(str(self.privlevel))
            writes += 1
        (entry / "inblob").write_bytes(report_data)
        writes += 1
        outblob = (entry / "outblob").read_bytes()
        provider = (entry / "provider").read_text().strip()
        generation = int((entry / "generation").read_text().strip())
        if generation != writes:
            raise AttestationError("tsm.generation", writes, generation,
                                   "another process wrote to this report entry; retry")
        auxblob = (entry / "auxblob").read_bytes() if (entry / "auxblob").exists() else b""
        if provider == "tdx_guest":
            return Evidence(tee="tdx", report=outblob)
        if provider != "sev_guest":
            raise AttestationError("tsm.provider", "sev_guest or tdx_guest", provider, "this TEE is not supported")
        return _snp_evidence(outblob, auxblob)


def _snp_evidence(report: bytes, auxblob: bytes) -> Evidence:
    table = parse_cert_table(auxblob)
    leaf = table.get(_VCEK_GUID) or table.get(_VLEK_GUID)
    if leaf is None:
        raise AttestationError("tsm.auxblob", "a certificate table holding the VCEK or VLEK",
                               f"{len(table)} entries", "configure the host to serve SNP certificates")
    chain = ""
    for guid in (_ASK_GUID, _ARK_GUID):
        if guid in table:
            chain += load_der_cert(table[guid], "tsm.auxblob").public_bytes(serialization.Encoding.PEM).decode()
    return Evidence(tee="sev-snp", report=report, vcek=leaf, cert_chain=chain)


def evidence_provider(config: WorkerConfig) -> EvidenceProvider:
    """The evidence provider the measured configuration names (never an environment variable).

    ``simulated-sev-snp``: firmware in ``CSCORE_SIM_TEE_DIR``, measurement from
    :func:`enclave.measurement.code_measurement`, HOST_DATA the configuration's digest, as a host would set it.
    ``configfs-tsm``: real CVMs (the host set HOST_DATA / MRCONFIGID at launch; see `check_launch_binding`).
    Raises RuntimeError when ``CSCORE_TEE`` is set and disagrees with the configuration.
    """
    requested = os.environ.get("CSCORE_TEE")
    if requested and requested != config.tee:
        raise RuntimeError(f"CSCORE_TEE={requested!r} disagrees with the worker configuration's tee {config.tee!r}; "
                           "the measured configuration decides: unset CSCORE_TEE or launch with another configuration")
    if config.tee == "configfs-tsm":
        return ConfigfsTsmProvider()
    from enclave.measurement import code_measurement

    sim_dir = os.environ.get("CSCORE_SIM_TEE_DIR")
    if not sim_dir:
        raise RuntimeError("tee simulated-sev-snp needs CSCORE_SIM_TEE_DIR (the simulated firmware folder)")
    return SimulatedSnpProvider(Path(sim_dir), code_measurement(), host_data=host_data(config.digest()))


def check_launch_binding(provider: EvidenceProvider, config: WorkerConfig) -> str:
    """Refuse to run unless this guest's evidence carries the configuration's digest; returns it (hex).

    On a real CVM the host sets HOST_DATA (SEV-SNP) or MRCONFIGID (TDX) at launch; a worker handed a
    configuration other than the one it was launched with would otherwise trust brokers nobody measured.
    """
    evidence = provider.get_evidence(secrets.token_bytes(REPORT_DATA_SIZE))
    if evidence.tee == "tdx":
        from attestation.tdx.quote import parse_quote

        field, carried = "mrconfigid", parse_quote(evidence.report).mr_config_id
    else:
        from attestation.snp.report import parse_report

        field, carried = "host_data", parse_report(evidence.report).host_data
    expected = config.digest_hex()
    actual = config_digest_from_claims(carried.hex())
    if actual != expected:
        raise AttestationError(field, expected, carried.hex(),
                               "this guest was launched with another worker configuration; relaunch with the "
                               "configuration's digest as HOST_DATA / MRCONFIGID")
    return expected
