"""AMD SEV-SNP ATTESTATION_REPORT: parse (bytes -> SnpReport) and encode (SnpReport -> bytes).

Layout from the SEV-SNP Firmware ABI specification (AMD 56860, table "ATTESTATION_REPORT"),
cross-checked against google/go-sev-guest (abi/abi.go) and virtee/sev. All integers are
little-endian. Versions 2..5 share one 1184-byte layout; version 3 adds CPUID family/model/stepping
at 0x188..0x18A, version 5 adds the mitigation vectors at 0x1F8 and 0x200.

TCB_VERSION (8 bytes) differs by product: Milan/Genoa put boot loader, TEE, SNP, microcode at bytes
0, 1, 6, 7; Turin puts FMC, boot loader, TEE, SNP at bytes 0..3 and microcode at byte 7.

Parsing never verifies anything (see :mod:`attestation.snp.verify`); it only refuses bytes that are
not a report (wrong size, unknown version, non-zero reserved fields), always with :class:`ParseError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from typing import Any

from attestation.errors import ParseError

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0  # the signature covers bytes 0x000..0x29F
SIGNATURE_OFFSET = 0x2A0
ECDSA_FIELD_SIZE = 72  # r and s: 72-byte little-endian fields
MIN_VERSION, MAX_VERSION = 2, 5
SIG_ALGO_ECDSA_P384_SHA384 = 1
POLICY_DEBUG_BIT = 19
PRODUCTS = ("Milan", "Genoa", "Turin")
SIGNING_KEYS = {0: "vcek", 1: "vlek", 7: "none"}
_SIGNING_KEY_CODES = {name: code for code, name in SIGNING_KEYS.items()}


@dataclass(frozen=True)
class TcbVersion:
    """One TCB_VERSION: security version numbers of each firmware component.

    ``fmc`` is not None exactly for Turin-layout values (and then ``to_bytes`` uses that layout).
    """

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    @classmethod
    def from_bytes(cls, raw: bytes, *, turin: bool, where: str = "tcb") -> TcbVersion:
        """Decode 8 bytes in the Milan/Genoa or (``turin=True``) the Turin layout."""
        reserved = raw[4:7] if turin else raw[2:6]
        if any(reserved):
            raise ParseError(where, "zero reserved bytes in TCB_VERSION", raw.hex(),
                             "the TCB layout does not match the product (Turin vs Milan/Genoa)")
        if turin:
            return cls(bootloader=raw[1], tee=raw[2], snp=raw[3], microcode=raw[7], fmc=raw[0])
        return cls(bootloader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7])

    def to_bytes(self) -> bytes:
        """Encode back to the 8-byte ABI form (byte-exact inverse of ``from_bytes``)."""
        if self.fmc is not None:
            return bytes([self.fmc, self.bootloader, self.tee, self.snp, 0, 0, 0, self.microcode])
        return bytes([self.bootloader, self.tee, 0, 0, 0, 0, self.snp, self.microcode])

    def as_dict(self) -> dict[str, int]:
        """Components by name (``fmc`` only when present)."""
        out = {"bootloader": self.bootloader, "tee": self.tee, "snp": self.snp, "microcode": self.microcode}
        if self.fmc is not None:
            out["fmc"] = self.fmc
        return out


@dataclass(frozen=True)
class SnpReport:
    """Every field of an SEV-SNP ATTESTATION_REPORT. Byte fields are ``bytes``; ints are unsigned.

    ``raw`` holds the exact bytes parsed (empty for a report built in code); verification hashes
    ``raw``, never a re-encoding. ``product`` is the product the TCB fields were decoded for
    (None: Milan or Genoa, which share a layout and cannot be told apart from a v2 report).
    """

    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: TcbVersion
    platform_info: int
    author_key_en: bool
    mask_chip_id: bool
    signing_key: str  # "vcek" | "vlek" | "none"
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: TcbVersion
    chip_id: bytes
    committed_tcb: TcbVersion
    current_build: int
    current_minor: int
    current_major: int
    committed_build: int
    committed_minor: int
    committed_major: int
    launch_tcb: TcbVersion
    signature_r: int
    signature_s: int
    cpuid_fam_id: int | None = None  # version >= 3
    cpuid_mod_id: int | None = None
    cpuid_step: int | None = None
    launch_mit_vector: int | None = None  # version >= 5
    current_mit_vector: int | None = None
    product: str | None = None
    raw: bytes = field(default=b"", repr=False, compare=False)

    @property
    def debug(self) -> bool:
        """Guest policy bit 19: the host may decrypt (debug) this guest's memory."""
        return bool(self.policy >> POLICY_DEBUG_BIT & 1)

    @property
    def signed_bytes(self) -> bytes:
        """The bytes the signature covers (0x000..0x29F), from ``raw`` when parsed."""
        return (self.raw or encode_report(self))[:SIGNED_SIZE]


# Byte fields: name -> (offset, size)
_BYTE_FIELDS: dict[str, tuple[int, int]] = {
    "family_id": (0x10, 16),
    "image_id": (0x20, 16),
    "report_data": (0x50, 64),
    "measurement": (0x90, 48),
    "host_data": (0xC0, 32),
    "id_key_digest": (0xE0, 48),
    "author_key_digest": (0x110, 48),
    "report_id": (0x140, 32),
    "report_id_ma": (0x160, 32),
    "chip_id": (0x1A0, 64),
}
_TCB_FIELDS = {"current_tcb": 0x38, "reported_tcb": 0x180, "committed_tcb": 0x1E0, "launch_tcb": 0x1F0}
_U8_FIELDS = {
    "current_build": 0x1E8, "current_minor": 0x1E9, "current_major": 0x1EA,
    "committed_build": 0x1EC, "committed_minor": 0x1ED, "committed_major": 0x1EE,
}


def _u32(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<I", data, off)[0])


def _u64(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<Q", data, off)[0])


def _mbz(data: bytes, lo: int, hi: int) -> None:
    """Reserved ranges must be zero: anything else is not a report we understand."""
    if any(data[lo:hi]):
        raise ParseError(f"report[0x{lo:03X}:0x{hi:03X}]", "zero (reserved)", data[lo:hi],
                         "the bytes are not an SEV-SNP report of a known version")


def detect_product(data: bytes) -> str | None:
    """Guess the product from a raw report: CPUID for v3+, else Turin's 8-byte CHIP_ID; None if unsure."""
    version = _u32(data, 0)
    if version >= 3:
        family, model = data[0x188], data[0x189]
        if family == 0x19:
            return "Milan" if model < 0x10 else "Genoa"
        if family == 0x1A and model < 0x20:
            return "Turin"
        raise ParseError("report.cpuid_fam_id", "an SEV-SNP product (family 0x19 or 0x1A)",
                         f"family 0x{family:02X} model 0x{model:02X}", "this product is not supported")
    chip_id = data[0x1A0:0x1E0]
    if any(chip_id[:8]) and not any(chip_id[8:]):
        return "Turin"  # Turin CHIP_IDs are 8 bytes, zero-padded
    return None


def parse_report(data: bytes, *, product: str | None = None) -> SnpReport:
    """Parse a 1184-byte ATTESTATION_REPORT. Raises ParseError for anything else.

    ``product`` ("Milan", "Genoa", "Turin") picks the TCB layout; when None it is detected from
    the report (CPUID for v3+, CHIP_ID shape for v2), defaulting to the Milan/Genoa layout.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ParseError("report", "bytes", type(data).__name__)
    data = bytes(data)
    if len(data) != REPORT_SIZE:
        raise ParseError("report", f"{REPORT_SIZE} bytes (an SEV-SNP ATTESTATION_REPORT)",
                         f"{len(data)} bytes", "pass the raw report, not hex or base64 text")
    version = _u32(data, 0)
    if not MIN_VERSION <= version <= MAX_VERSION:
        raise ParseError("report.version", f"{MIN_VERSION}..{MAX_VERSION}", version)
    if product is not None and product not in PRODUCTS:
        raise ParseError("product", f"one of {PRODUCTS}", product)
    product = product or detect_product(data)
    _check_reserved(data, version)
    fields = _parse_fields(data, version, turin=product == "Turin")
    return SnpReport(**fields, product=product, raw=data)


def _check_reserved(data: bytes, version: int) -> None:
    _mbz(data, 0x4C, 0x50)
    _mbz(data, 0x18B if version >= 3 else 0x188, 0x1A0)
    _mbz(data, 0x1EB, 0x1EC)
    _mbz(data, 0x1EF, 0x1F0)
    _mbz(data, 0x208 if version >= 5 else 0x1F8, SIGNED_SIZE)
    algo = _u32(data, 0x34)
    if algo != SIG_ALGO_ECDSA_P384_SHA384:  # the only algorithm the ABI defines
        raise ParseError("report.signature_algo", "1 (ECDSA P-384 with SHA-384)", algo)
    _mbz(data, SIGNATURE_OFFSET + 2 * ECDSA_FIELD_SIZE, REPORT_SIZE)


def _parse_signer_info(info: int) -> dict[str, Any]:
    if info >> 5:
        raise ParseError("report.signer_info", "bits 5..31 zero", f"0x{info:08X}")
    code = info >> 2 & 7
    if code not in SIGNING_KEYS:
        raise ParseError("report.signer_info.signing_key", "0 (VCEK), 1 (VLEK) or 7 (none)", code)
    return {"author_key_en": bool(info & 1), "mask_chip_id": bool(info & 2), "signing_key": SIGNING_KEYS[code]}


def _parse_fields(data: bytes, version: int, *, turin: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "version": version,
        "guest_svn": _u32(data, 0x04),
        "policy": _u64(data, 0x08),
        "vmpl": _u32(data, 0x30),
        "signature_algo": _u32(data, 0x34),
        "platform_info": _u64(data, 0x40),
        **_parse_signer_info(_u32(data, 0x48)),
    }
    out.update({name: data[off:off + size] for name, (off, size) in _BYTE_FIELDS.items()})
    out.update({name: TcbVersion.from_bytes(data[off:off + 8], turin=turin, where=f"report.{name}")
                for name, off in _TCB_FIELDS.items()})
    out.update({name: data[off] for name, off in _U8_FIELDS.items()})
    if version >= 3:
        out.update(cpuid_fam_id=data[0x188], cpuid_mod_id=data[0x189], cpuid_step=data[0x18A])
    if version >= 5:
        out.update(launch_mit_vector=_u64(data, 0x1F8), current_mit_vector=_u64(data, 0x200))
    r_off = SIGNATURE_OFFSET
    out["signature_r"] = int.from_bytes(data[r_off:r_off + ECDSA_FIELD_SIZE], "little")
    out["signature_s"] = int.from_bytes(data[r_off + ECDSA_FIELD_SIZE:r_off + 2 * ECDSA_FIELD_SIZE], "little")
    return out


def encode_report(report: SnpReport) -> bytes:
    """Encode a report to its 1184 ABI bytes: the byte-exact inverse of :func:`parse_report`.

    Raises ValueError when a field does not fit its slot (wrong length, out-of-range integer).
    """
    try:
        return _encode(report)
    except (struct.error, OverflowError) as exc:  # integers too large for their slot
        raise ValueError(f"report field out of range: {exc}") from exc


def _encode(report: SnpReport) -> bytes:
    buf = bytearray(REPORT_SIZE)
    struct.pack_into("<IIQ", buf, 0, report.version, report.guest_svn, report.policy)
    struct.pack_into("<II", buf, 0x30, report.vmpl, report.signature_algo)
    struct.pack_into("<Q", buf, 0x40, report.platform_info)
    struct.pack_into("<I", buf, 0x48, _signer_info(report))
    for name, (off, size) in _BYTE_FIELDS.items():
        value = getattr(report, name)
        if len(value) != size:
            raise ValueError(f"{name} must be {size} bytes, got {len(value)}")
        buf[off:off + size] = value
    for name, off in _TCB_FIELDS.items():
        buf[off:off + 8] = getattr(report, name).to_bytes()
    for name, off in _U8_FIELDS.items():
        buf[off] = getattr(report, name)
    if report.version >= 3:
        buf[0x188:0x18B] = bytes([report.cpuid_fam_id or 0, report.cpuid_mod_id or 0, report.cpuid_step or 0])
    if report.version >= 5:
        struct.pack_into("<QQ", buf, 0x1F8, report.launch_mit_vector or 0, report.current_mit_vector or 0)
    r_off = SIGNATURE_OFFSET
    buf[r_off:r_off + ECDSA_FIELD_SIZE] = report.signature_r.to_bytes(ECDSA_FIELD_SIZE, "little")
    buf[r_off + ECDSA_FIELD_SIZE:r_off + 2 * ECDSA_FIELD_SIZE] = report.signature_s.to_bytes(
        ECDSA_FIELD_SIZE, "little")
    return bytes(buf)


def _signer_info(report: SnpReport) -> int:
    if report.signing_key not in _SIGNING_KEY_CODES:
        raise ValueError(f"signing_key must be one of {sorted(_SIGNING_KEY_CODES)}, got {report.signing_key!r}")
    return int(report.author_key_en) | int(report.mask_chip_id) << 1 | _SIGNING_KEY_CODES[report.signing_key] << 2


def with_signature(report: SnpReport, r: int, s: int) -> SnpReport:
    """Return a copy carrying signature (r, s), with ``raw`` re-encoded to match."""
    signed = replace(report, signature_r=r, signature_s=s, raw=b"")
    return replace(signed, raw=encode_report(signed))
