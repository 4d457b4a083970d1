"""Intel SGX extensions of a PCK certificate (OID 1.2.840.113741.1.13.1): the platform's identity
(PPID, FMSPC, PCE-ID, platform instance id) and its certified TCB (16 SGX component SVNs, PCESVN).

Layout from Intel's "SGX PCK Certificate and CRL Profile": a SEQUENCE of (OID, value) pairs; the
TCB entry is itself a SEQUENCE of (OID, INTEGER or OCTET STRING) pairs. Parsed with a small
bounds-checked DER reader; anything malformed raises :class:`ParseError` naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from attestation.errors import ParseError

SGX_EXTENSIONS_OID = "1.2.840.113741.1.13.1"
_TAG_INTEGER, _TAG_OCTETS, _TAG_OID, _TAG_ENUM, _TAG_SEQUENCE, _TAG_BOOLEAN = 0x02, 0x04, 0x06, 0x0A, 0x30, 0x01


@dataclass(frozen=True)
class PckExtensions:
    """What the PCK certificate (signed by Intel) says about the platform."""

    ppid: bytes
    cpu_svn_components: tuple[int, ...]  # 16 SGX TCB component SVNs
    pce_svn: int
    cpu_svn: bytes
    pce_id: bytes
    fmspc: bytes
    sgx_type: int
    platform_instance_id: bytes = b""  # only in certificates issued by the Platform CA


def _tlv(data: bytes, pos: int, where: str) -> tuple[int, bytes, int]:
    """One DER element at ``pos``: (tag, content, position after it)."""
    if pos + 2 > len(data):
        raise ParseError(where, "a DER element", f"{len(data) - pos} bytes left")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first & 0x80:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise ParseError(where, "a DER length", f"length-of-length {count}")
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    else:
        length = first
    if pos + length > len(data):
        raise ParseError(where, f"{length} content bytes", f"{len(data) - pos} left")
    return tag, data[pos:pos + length], pos + length


def _elements(data: bytes, where: str) -> list[tuple[int, bytes]]:
    """Every element of a SEQUENCE's content, in order."""
    out, pos = [], 0
    while pos < len(data):
        tag, content, pos = _tlv(data, pos, where)
        out.append((tag, content))
    return out


def _oid(content: bytes, where: str) -> str:
    """Dotted form of an OBJECT IDENTIFIER's content."""
    if not content or content[-1] & 0x80:
        raise ParseError(where, "an object identifier", content.hex())
    arcs, value = [], 0
    for byte in content:
        value = value << 7 | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def _pairs(content: bytes, where: str) -> dict[str, tuple[int, bytes]]:
    """A SEQUENCE OF SEQUENCE {OID, value} as {oid: (value tag, value content)}."""
    out: dict[str, tuple[int, bytes]] = {}
    for tag, item in _elements(content, where):
        parts = _elements(item, where) if tag == _TAG_SEQUENCE else []
        if len(parts) != 2 or parts[0][0] != _TAG_OID:
            raise ParseError(where, "SEQUENCE {OID, value}", f"tag 0x{tag:02x} with {len(parts)} parts")
        out[_oid(parts[0][1], where)] = parts[1]
    return out


def _get(pairs: dict[str, tuple[int, bytes]], oid: str, tag: int, where: str,
         size: int | None = None) -> bytes:
    if oid not in pairs:
        raise ParseError(where, f"an entry {oid}", "none")
    actual_tag, content = pairs[oid]
    if actual_tag != tag or (size is not None and len(content) != size):
        raise ParseError(where, f"tag 0x{tag:02x}" + (f", {size} bytes" if size else ""),
                         f"tag 0x{actual_tag:02x}, {len(content)} bytes")
    return content


def _small_int(content: bytes, where: str) -> int:
    if not 1 <= len(content) <= 3:
        raise ParseError(where, "a small non-negative INTEGER", content.hex())
    value = int.from_bytes(content, "big", signed=True)
    if value < 0:
        raise ParseError(where, "a non-negative INTEGER", value)
    return value


def parse_sgx_extensions(der: bytes) -> PckExtensions:
    """Parse the DER value of the SGX extensions. Raises ParseError."""
    base, where = SGX_EXTENSIONS_OID, "pck.sgx_extensions"
    tag, content, end = _tlv(der, 0, where)
    if tag != _TAG_SEQUENCE or end != len(der):
        raise ParseError(where, "one DER SEQUENCE", f"tag 0x{tag:02x}, {len(der) - end} trailing bytes")
    top = _pairs(content, where)
    tcb = _pairs(_get(top, f"{base}.2", _TAG_SEQUENCE, f"{where}.tcb"), f"{where}.tcb")
    comps = tuple(_small_int(_get(tcb, f"{base}.2.{i}", _TAG_INTEGER, f"{where}.tcb.comp{i:02d}"),
                             f"{where}.tcb.comp{i:02d}") for i in range(1, 17))
    instance = top.get(f"{base}.6")
    return PckExtensions(
        ppid=_get(top, f"{base}.1", _TAG_OCTETS, f"{where}.ppid", 16),
        cpu_svn_components=comps,
        pce_svn=_small_int(_get(tcb, f"{base}.2.17", _TAG_INTEGER, f"{where}.tcb.pcesvn"), f"{where}.tcb.pcesvn"),
        cpu_svn=_get(tcb, f"{base}.2.18", _TAG_OCTETS, f"{where}.tcb.cpusvn", 16),
        pce_id=_get(top, f"{base}.3", _TAG_OCTETS, f"{where}.pceid", 2),
        fmspc=_get(top, f"{base}.4", _TAG_OCTETS, f"{where}.fmspc", 6),
        sgx_type=_small_int(_get(top, f"{base}.5", _TAG_ENUM, f"{where}.sgx_type"), f"{where}.sgx_type"),
        platform_instance_id=instance[1] if instance and instance[0] == _TAG_OCTETS else b"",
    )


def pck_extensions(cert: x509.Certificate) -> PckExtensions:
    """The SGX extensions of a PCK certificate. ParseError when absent or malformed."""
    for ext in cert.extensions:
        if ext.oid.dotted_string == SGX_EXTENSIONS_OID:
            value = ext.value
            raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
            return parse_sgx_extensions(raw)
    raise ParseError("pck.sgx_extensions", f"extension {SGX_EXTENSIONS_OID}", "none",
                     "this is not an Intel PCK certificate")
