"""Intel PCS collateral for TDX: TCB Info (v3, id "TDX") and QE Identity (v2, id "TD_QE").

Three steps, as for quotes:

1. parse: :func:`parse_tcb_info`, :func:`parse_qe_identity` (JSON shape, exact signed bytes);
2. verify: :func:`verify_collateral` (ECDSA P-256 signature over the exact bytes of the
   ``tcbInfo``/``enclaveIdentity`` JSON value, issuer chain up to the pinned Intel SGX Root CA,
   certificates and ``issueDate .. nextUpdate`` valid at the given time);
3. status: :func:`tcb_status` (the platform's TCB level from the PCK certificate and the quote's
   TEE_TCB_SVN, the TDX module identity, the QE identity; converged as Intel's verification library
   does). TDX 1.5 "TD relaunch advised" is not derived.

Formats: Intel PCS API v4 ("Get TDX TCB Info", "Get TDX QE Identity").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attestation.anchors import load_pem_certs
from attestation.errors import ParseError, VerificationError
from attestation.tdx.intel_root import pinned_intel_root, verify_intel_chain
from attestation.tdx.pck import PckExtensions
from attestation.tdx.quote import TdxQuote

# Best first. "Revoked" is never acceptable.
TCB_STATUSES = ("UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded",
                "OutOfDate", "OutOfDateConfigurationNeeded", "Revoked")


@dataclass(frozen=True)
class Level:
    """One TCB level: the minimum SVNs it requires, its status and Intel's advisories."""

    status: str
    date: str
    advisory_ids: tuple[str, ...]
    sgx_svns: tuple[int, ...] = ()
    pce_svn: int = 0
    tdx_svns: tuple[int, ...] = ()
    isv_svn: int = 0


@dataclass(frozen=True)
class ModuleIdentity:
    """The TDX module signer and SEAM attributes expected, and its TCB levels (by ISVSVN)."""

    id: str
    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes
    levels: tuple[Level, ...]


@dataclass(frozen=True)
class TcbInfo:
    """A parsed TDX TCB Info, with the exact bytes Intel signed."""

    issue_date: datetime
    next_update: datetime
    fmspc: bytes
    pce_id: bytes
    evaluation_data_number: int
    module: ModuleIdentity
    module_identities: tuple[ModuleIdentity, ...]
    levels: tuple[Level, ...]
    signed: bytes
    signature: bytes


@dataclass(frozen=True)
class QeIdentity:
    """A parsed TD QE Identity, with the exact bytes Intel signed."""

    issue_date: datetime
    next_update: datetime
    miscselect: bytes
    miscselect_mask: bytes
    attributes: bytes
    attributes_mask: bytes
    mrsigner: bytes
    isv_prod_id: int
    levels: tuple[Level, ...]
    signed: bytes
    signature: bytes


@dataclass(frozen=True)
class TdxCollateral:
    """Raw collateral as Intel PCS serves it: the two JSON bodies and the TCB Signing issuer chain(s)
    (PEM, signing certificate then Intel SGX Root CA; ``qe_identity_chain`` defaults to the same)."""

    tcb_info: bytes
    qe_identity: bytes
    tcb_info_chain: str
    qe_identity_chain: str = ""

    @classmethod
    def from_dir(cls, path: str | Path) -> TdxCollateral:
        """Read a folder holding a TCB Info JSON, a QE Identity JSON and an issuer chain PEM (any
        file names; recognised by content). ParseError when one is missing or ambiguous."""
        found: dict[str, list[bytes]] = {"tcbInfo": [], "enclaveIdentity": [], "pem": []}
        names: dict[str, list[str]] = {kind: [] for kind in found}
        for file in sorted(p for p in Path(path).iterdir() if p.is_file()):
            data = file.read_bytes()
            kind = _classify(data)
            if kind:
                found[kind].append(data)
                names[kind].append(file.name)
        for kind, what in (("tcbInfo", "a TCB Info JSON"), ("enclaveIdentity", "a QE Identity JSON"),
                           ("pem", "an issuer chain PEM")):
            if len(found[kind]) > 1:  # which files, so the user knows which to move out
                raise ParseError(f"collateral.{kind}", f"exactly one file holding {what} in {path}",
                                 f"{len(found[kind])} found: {', '.join(names[kind])}",
                                 "keep only the one for this quote in the folder")
            if not found[kind]:
                raise ParseError(f"collateral.{kind}", f"exactly one file holding {what} in {path}", "0 found",
                                 "fetch it from Intel PCS")
        return cls(found["tcbInfo"][0], found["enclaveIdentity"][0], found["pem"][0].decode("ascii", "replace"))

    def to_json(self) -> dict[str, str]:
        """JSON form (the bodies as text, as PCS serves them)."""
        return {"tcb_info": self.tcb_info.decode("utf-8", "replace"),
                "qe_identity": self.qe_identity.decode("utf-8", "replace"),
                "tcb_info_chain": self.tcb_info_chain, "qe_identity_chain": self.qe_identity_chain}

    @classmethod
    def from_json(cls, obj: Any) -> TdxCollateral:
        """Inverse of :meth:`to_json`. ParseError naming the member."""
        if not isinstance(obj, dict):
            raise ParseError("evidence.collateral", "a JSON object", type(obj).__name__)
        values = {k: obj.get(k, "") for k in ("tcb_info", "qe_identity", "tcb_info_chain", "qe_identity_chain")}
        for key, value in values.items():
            if not isinstance(value, str):
                raise ParseError(f"evidence.collateral.{key}", "text", type(value).__name__)
        return cls(values["tcb_info"].encode(), values["qe_identity"].encode(), values["tcb_info_chain"],
                   values["qe_identity_chain"])


def _classify(data: bytes) -> str:
    if b"-----BEGIN CERTIFICATE-----" in data:
        return "pem"
    head = data.lstrip()[:40]
    for key in ("tcbInfo", "enclaveIdentity"):
        if head.startswith(b'{"' + key.encode() + b'"') or head.startswith(b'{ "' + key.encode() + b'"'):
            return key
    return ""


# ---- parse -------------------------------------------------------------------------------------


def _top_level(raw: bytes, where: str) -> dict[str, tuple[Any, bytes]]:
    """Members of a top-level JSON object: {key: (value, exact bytes of the value)}."""
    try:
        text = raw.decode("utf-8")
        return _scan_object(text)
    except UnicodeDecodeError as exc:
        raise ParseError(where, "UTF-8 JSON", f"undecodable bytes ({exc.reason})") from exc
    except (ValueError, RecursionError) as exc:  # json.JSONDecodeError is a ValueError
        raise ParseError(where, "a JSON object", f"invalid JSON ({exc})") from exc


def _skip_ws(text: str, pos: int) -> int:
    while text[pos:pos + 1] in (" ", "\t", "\n", "\r") and pos < len(text):
        pos += 1
    return pos


def _scan_object(text: str) -> dict[str, tuple[Any, bytes]]:
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if text[pos:pos + 1] != "{":
        raise ValueError("not an object")
    pos = _skip_ws(text, pos + 1)
    members: dict[str, tuple[Any, bytes]] = {}
    while text[pos:pos + 1] != "}":
        if text[pos:pos + 1] != '"':
            raise ValueError(f"a member name expected at {pos}")
        key, pos = decoder.raw_decode(text, pos)
        pos = _skip_ws(text, pos)
        if text[pos:pos + 1] != ":" or key in members:
            raise ValueError(f"':' expected at {pos}, or duplicate member {key!r}")
        start = _skip_ws(text, pos + 1)
        value, pos = decoder.raw_decode(text, start)
        members[key] = (value, text[start:pos].encode("utf-8"))
        pos = _skip_ws(text, pos)
        if text[pos:pos + 1] == ",":
            pos = _skip_ws(text, pos + 1)
        elif text[pos:pos + 1] != "}":
            raise ValueError(f"',' or '}}' expected at {pos}")
    if text[pos + 1:].strip(" \t\n\r"):
        raise ValueError("trailing data after the object")
    return members


def _signed_member(raw: bytes, key: str, where: str) -> tuple[dict[str, Any], bytes, bytes]:
    members = _top_level(raw, where)
    if key not in members or "signature" not in members:
        raise ParseError(where, f"members {key!r} and 'signature'", sorted(members))
    body, signed = members[key]
    if not isinstance(body, dict):
        raise ParseError(f"{where}.{key}", "an object", type(body).__name__)
    return body, signed, _hex(members["signature"][0], f"{where}.signature", 64)


def _get(d: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = d.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ParseError(f"{where}.{key}", kind.__name__, type(value).__name__ if value is not None else "missing")
    return value


def _hex(value: Any, where: str, size: int) -> bytes:
    if not isinstance(value, str) or len(value) != 2 * size:
        raise ParseError(where, f"{size} bytes as hex", value)
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise ParseError(where, f"{size} bytes as hex", value) from exc


def _date(d: dict[str, Any], key: str, where: str) -> datetime:
    text = _get(d, key, str, where)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ParseError(f"{where}.{key}", "an ISO 8601 time", text) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _status(d: dict[str, Any], where: str) -> str:
    status = _get(d, "tcbStatus", str, where)
    if status not in TCB_STATUSES:
        raise ParseError(f"{where}.tcbStatus", f"one of {list(TCB_STATUSES)}", status)
    return status


def _advisories(d: dict[str, Any], where: str) -> tuple[str, ...]:
    ids = d.get("advisoryIDs", [])
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ParseError(f"{where}.advisoryIDs", "a list of strings", ids)
    return tuple(ids)


def _svns(d: dict[str, Any], key: str, where: str) -> tuple[int, ...]:
    comps = _get(d, key, list, where)
    if len(comps) != 16:
        raise ParseError(f"{where}.{key}", "16 components", len(comps))
    out = []
    for i, comp in enumerate(comps):
        if not isinstance(comp, dict):
            raise ParseError(f"{where}.{key}[{i}]", "an object", type(comp).__name__)
        out.append(_svn(comp, "svn", f"{where}.{key}[{i}]"))
    return tuple(out)


def _svn(d: dict[str, Any], key: str, where: str) -> int:
    value = _get(d, key, int, where)
    if not 0 <= value <= 0xFFFF:
        raise ParseError(f"{where}.{key}", "0..65535", value)
    return int(value)


def _platform_level(d: Any, where: str) -> Level:
    if not isinstance(d, dict):
        raise ParseError(where, "an object", type(d).__name__)
    tcb = _get(d, "tcb", dict, where)
    return Level(status=_status(d, where), date=_get(d, "tcbDate", str, where), advisory_ids=_advisories(d, where),
                 sgx_svns=_svns(tcb, "sgxtcbcomponents", f"{where}.tcb"), pce_svn=_svn(tcb, "pcesvn", f"{where}.tcb"),
                 tdx_svns=_svns(tcb, "tdxtcbcomponents", f"{where}.tcb"))


def _isv_level(d: Any, where: str) -> Level:
    if not isinstance(d, dict):
        raise ParseError(where, "an object", type(d).__name__)
    tcb = _get(d, "tcb", dict, where)
    return Level(status=_status(d, where), date=_get(d, "tcbDate", str, where), advisory_ids=_advisories(d, where),
                 isv_svn=_svn(tcb, "isvsvn", f"{where}.tcb"))


def _module(d: Any, where: str) -> ModuleIdentity:
    if not isinstance(d, dict):
        raise ParseError(where, "an object", type(d).__name__)
    levels = d.get("tcbLevels", [])
    if not isinstance(levels, list):
        raise ParseError(f"{where}.tcbLevels", "a list", type(levels).__name__)
    return ModuleIdentity(
        id=str(d.get("id", "")), mrsigner=_hex(d.get("mrsigner"), f"{where}.mrsigner", 48),
        attributes=_hex(d.get("attributes"), f"{where}.attributes", 8),
        attributes_mask=_hex(d.get("attributesMask"), f"{where}.attributesMask", 8),
        levels=tuple(_isv_level(level, f"{where}.tcbLevels[{i}]") for i, level in enumerate(levels)),
    )


def parse_tcb_info(raw: bytes) -> TcbInfo:
    """Parse a PCS TDX TCB Info response body (``{"tcbInfo": {...}, "signature": hex}``)."""
    where = "tcb_info"
    body, signed, signature = _signed_member(raw, "tcbInfo", where)
    where = "tcb_info.tcbInfo"
    if body.get("id") != "TDX" or body.get("version") != 3:
        raise ParseError(f"{where}.id", "id TDX, version 3", f"id {body.get('id')}, version {body.get('version')}")
    identities = body.get("tdxModuleIdentities", [])
    if not isinstance(identities, list):
        raise ParseError(f"{where}.tdxModuleIdentities", "a list", type(identities).__name__)
    levels = _get(body, "tcbLevels", list, where)
    return TcbInfo(
        issue_date=_date(body, "issueDate", where), next_update=_date(body, "nextUpdate", where),
        fmspc=_hex(body.get("fmspc"), f"{where}.fmspc", 6), pce_id=_hex(body.get("pceId"), f"{where}.pceId", 2),
        evaluation_data_number=_svn(body, "tcbEvaluationDataNumber", where),
        module=_module(_get(body, "tdxModule", dict, where), f"{where}.tdxModule"),
        module_identities=tuple(_module(m, f"{where}.tdxModuleIdentities[{i}]") for i, m in enumerate(identities)),
        levels=tuple(_platform_level(level, f"{where}.tcbLevels[{i}]") for i, level in enumerate(levels)),
        signed=signed, signature=signature,
    )


def parse_qe_identity(raw: bytes) -> QeIdentity:
    """Parse a PCS TD QE Identity response body (``{"enclaveIdentity": {...}, "signature": hex}``)."""
    body, signed, signature = _signed_member(raw, "enclaveIdentity", "qe_identity")
    where = "qe_identity.enclaveIdentity"
    if body.get("id") != "TD_QE" or body.get("version") != 2:
        raise ParseError(f"{where}.id", "id TD_QE, version 2", f"id {body.get('id')}, version {body.get('version')}")
    levels = _get(body, "tcbLevels", list, where)
    return QeIdentity(
        issue_date=_date(body, "issueDate", where), next_update=_date(body, "nextUpdate", where),
        miscselect=_hex(body.get("miscselect"), f"{where}.miscselect", 4),
        miscselect_mask=_hex(body.get("miscselectMask"), f"{where}.miscselectMask", 4),
        attributes=_hex(body.get("attributes"), f"{where}.attributes", 16),
        attributes_mask=_hex(body.get("attributesMask"), f"{where}.attributesMask", 16),
        mrsigner=_hex(body.get("mrsigner"), f"{where}.mrsigner", 32), isv_prod_id=_svn(body, "isvprodid", where),
        levels=tuple(_isv_level(level, f"{where}.tcbLevels[{i}]") for i, level in enumerate(levels)),
        signed=signed, signature=signature,
    )


# ---- verify ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedCollateral:
    """Collateral whose signatures, chains and validity were checked at one time."""

    tcb_info: TcbInfo
    qe_identity: QeIdentity
    roots: tuple[x509.Certificate, ...]  # the roots its chains ended in


def verify_collateral(collateral: TdxCollateral, at: datetime,
                      roots: tuple[x509.Certificate, ...] | None = None) -> VerifiedCollateral:
    """Parse and verify TCB Info and QE Identity at ``at`` against ``roots`` (default: the pinned
    Intel SGX Root CA). Raises ParseError or VerificationError naming the field."""
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    roots = roots or (pinned_intel_root(),)
    tcb_info = parse_tcb_info(collateral.tcb_info)
    qe_identity = parse_qe_identity(collateral.qe_identity)
    used = []
    for doc, chain, where in ((tcb_info, collateral.tcb_info_chain, "tcb_info"),
                              (qe_identity, collateral.qe_identity_chain or collateral.tcb_info_chain, "qe_identity")):
        certs = load_pem_certs(chain.encode(), f"{where}.issuer_chain")
        signer = verify_intel_chain(certs, at, roots, f"{where}.issuer_chain", ("signing", "root"))
        _check_signature(signer, doc.signature, doc.signed, f"{where}.signature")
        if not doc.issue_date <= at <= doc.next_update:
            raise VerificationError(f"{where}.nextUpdate", f"{doc.issue_date.isoformat()} .. "
                                    f"{doc.next_update.isoformat()}", at.isoformat(),
                                    "the collateral is stale or not yet issued at that time; fetch it again")
        used.append(certs[-1])
    return VerifiedCollateral(tcb_info, qe_identity, tuple(used))


def _check_signature(signer: x509.Certificate, raw_sig: bytes, message: bytes, where: str) -> None:
    key = signer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise VerificationError(f"{where}.key", "an EC P-256 key", type(key).__name__)
    r, s = int.from_bytes(raw_sig[:32], "big"), int.from_bytes(raw_sig[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise VerificationError(where, f"a valid signature by {signer.subject.rfc4514_string()}", "an invalid one",
                                "the collateral was altered") from exc


# ---- TCB status --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TcbResult:
    """The platform's TCB status (converged), its parts, and the advisories that apply."""

    status: str
    platform_status: str
    module_status: str  # "" when the TDX module version is 0 (no module identity applies)
    qe_status: str
    advisory_ids: tuple[str, ...]
    tcb_date: str
    evaluation_data_number: int


def tcb_status(quote: TdxQuote, pck: PckExtensions, collateral: VerifiedCollateral) -> TcbResult:
    """Derive the TCB status of a verified quote from verified collateral.

    VerificationError when the collateral is for another platform (FMSPC, PCE-ID), the QE or TDX
    module is not the one Intel identifies, or no TCB level applies (TCB not supported).
    """
    info = collateral.tcb_info
    if info.fmspc != pck.fmspc or info.pce_id != pck.pce_id:
        raise VerificationError("tcb_info.fmspc", f"fmspc {pck.fmspc.hex()}, pceId {pck.pce_id.hex()} (from the PCK)",
                                f"fmspc {info.fmspc.hex()}, pceId {info.pce_id.hex()}",
                                "this TCB Info is for another platform type")
    qe = _qe_level(quote, collateral.qe_identity)
    level = _platform_level_for(info, pck, quote.tee_tcb_svn)
    module = _module_level(quote, info)
    status = _converge(level.status, module.status if module else "")
    status = _converge(status, qe.status)
    advisories = sorted(set(level.advisory_ids) | set(module.advisory_ids if module else ()) | set(qe.advisory_ids))
    return TcbResult(status=status, platform_status=level.status, module_status=module.status if module else "",
                     qe_status=qe.status, advisory_ids=tuple(advisories), tcb_date=level.date,
                     evaluation_data_number=info.evaluation_data_number)


def _platform_level_for(info: TcbInfo, pck: PckExtensions, tee_tcb_svn: bytes) -> Level:
    """The first (highest) level the PCK's SGX TCB and the quote's TEE_TCB_SVN both meet."""
    first_tdx = 2 if tee_tcb_svn[1] > 0 else 0  # with a module version, SVN bytes 0-1 go to the module identity
    for level in info.levels:
        sgx_ok = all(a >= b for a, b in zip(pck.cpu_svn_components, level.sgx_svns, strict=True))
        tdx_ok = all(tee_tcb_svn[i] >= level.tdx_svns[i] for i in range(first_tdx, 16))
        if sgx_ok and pck.pce_svn >= level.pce_svn and tdx_ok:
            return level
    raise VerificationError("tcb_info.tcbLevels", "a level at or below this platform's TCB",
                            f"none for SGX {list(pck.cpu_svn_components)} PCESVN {pck.pce_svn}, "
                            f"TEE_TCB_SVN {tee_tcb_svn.hex()}", "TCB not supported: the platform is too old")


def _module_level(quote: TdxQuote, info: TcbInfo) -> Level | None:
    version, isv_svn = quote.tee_tcb_svn[1], quote.tee_tcb_svn[0]
    wanted = f"TDX_{version:02X}"
    identity = info.module if version == 0 else next(
        (m for m in info.module_identities if m.id.upper() == wanted), None)
    if identity is None:
        raise VerificationError("tcb_info.tdxModuleIdentities", f"an identity {wanted}", "none",
                                "Intel does not know this TDX module version")
    if identity.mrsigner != quote.mr_signer_seam:
        raise VerificationError("quote.mr_signer_seam", identity.mrsigner.hex(), quote.mr_signer_seam.hex(),
                                "the TDX module was not signed by Intel")
    masked = bytes(a & m for a, m in zip(quote.seam_attributes, identity.attributes_mask, strict=True))
    if masked != identity.attributes:
        raise VerificationError("quote.seam_attributes", identity.attributes.hex(), masked.hex())
    if version == 0:
        return None
    return _isv_match(identity.levels, isv_svn, f"tcb_info.{wanted}.isvsvn")


def _isv_match(levels: tuple[Level, ...], isv_svn: int, where: str) -> Level:
    match = next((level for level in levels if isv_svn >= level.isv_svn), None)
    if match is None:
        raise VerificationError(where, f">= {min((lv.isv_svn for lv in levels), default='a listed level')}",
                                isv_svn, "TCB not supported")
    return match


def _qe_level(quote: TdxQuote, identity: QeIdentity) -> Level:
    report = quote.qe_report
    misc = bytes(a & m for a, m in zip(report[16:20], identity.miscselect_mask, strict=True))
    attrs = bytes(a & m for a, m in zip(report[48:64], identity.attributes_mask, strict=True))
    checks = (("miscselect", identity.miscselect, misc), ("attributes", identity.attributes, attrs),
              ("mrsigner", identity.mrsigner, report[128:160]),
              ("isvprodid", identity.isv_prod_id, int.from_bytes(report[256:258], "little")))
    for name, expected, actual in checks:
        if expected != actual:
            raise VerificationError(f"quote.qe_report.{name}", expected, actual,
                                    "the quoting enclave is not Intel's TD QE")
    return _isv_match(identity.levels, int.from_bytes(report[258:260], "little"), "quote.qe_report.isvsvn")


def _converge(status: str, other: str) -> str:
    """Combine a TCB level status with a module or QE status, as Intel's library does."""
    if other == "Revoked":
        return "Revoked"
    if other == "OutOfDate":
        if status in ("UpToDate", "SWHardeningNeeded"):
            return "OutOfDate"
        if status in ("ConfigurationNeeded", "ConfigurationAndSWHardeningNeeded"):
            return "OutOfDateConfigurationNeeded"
    return status
