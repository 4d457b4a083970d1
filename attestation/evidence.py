"""Evidence envelope, verified claims, appraisal policy: the library's public contract.

Three separate steps, as in google/go-sev-guest:

1. parse: :meth:`Evidence.from_json` (envelope shape only);
2. verify: :func:`verify_evidence` (report signature, certificate chain at time ``at``) -> Claims;
3. appraise: :func:`appraise` (policy on the claims; raises AppraisalError).

Verification never looks at measurements or debug bits; appraisal never looks at signatures.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import tomllib
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from attestation.anchors import TrustAnchors
from attestation.errors import AppraisalError, ParseError
from attestation.snp.verify import verify_snp
from attestation.tdx.claims import verify_tdx
from attestation.tdx.collateral import TCB_STATUSES, TdxCollateral

TEES = ("sev-snp", "tdx")
SNP_TCB_COMPONENTS = ("bootloader", "tee", "snp", "microcode", "fmc")
# TEE_TCB_SVN bytes 0 (module SVN), 1 (module major version), 2 (TDX late microcode); PCESVN from the PCK.
TDX_TCB_COMPONENTS = ("tdx_module", "tdx_module_version", "tdx_microcode", "pce")
TCB_COMPONENTS = SNP_TCB_COMPONENTS + TDX_TCB_COMPONENTS
ROOTS = ("amd", "intel", "simulated")
SIGNING_KEYS = ("vcek", "vlek", "pck")


def _b64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise ParseError(where, "a base64 string", type(value).__name__)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ParseError(where, "standard base64", f"undecodable text ({exc})") from exc


@dataclass(frozen=True)
class Evidence:
    """What a TEE hands over: the raw report, the key certificate that signed it, and its chain.

    SEV-SNP JSON form: ``{"tee": "sev-snp", "report": b64, "vcek": b64 DER, "cert_chain": PEM}`` where
    ``cert_chain`` lists the ASK (or ASVK for a VLEK) then the ARK, and may be "" (the verifier then
    uses the intermediates it already knows). ``vcek`` holds the VLEK when the report says VLEK.

    TDX JSON form: ``{"tee": "tdx", "report": b64 quote, "collateral": {...}}``: the quote carries its
    own PCK chain (``vcek`` and ``cert_chain`` stay empty); ``collateral`` (optional, see
    :meth:`TdxCollateral.to_json`) is Intel's TCB Info and QE Identity, giving ``claims.tcb_status``.
    """

    tee: str
    report: bytes
    vcek: bytes = b""
    cert_chain: str = ""
    collateral: TdxCollateral | None = None

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Evidence:
        """Build from the JSON envelope; ParseError naming the field when a member is wrong."""
        if not isinstance(obj, dict):
            raise ParseError("evidence", "a JSON object", type(obj).__name__)
        tee = obj.get("tee")
        if tee not in TEES:
            raise ParseError("evidence.tee", f"one of {list(TEES)}", tee)
        chain = obj.get("cert_chain", "")
        if not isinstance(chain, str):
            raise ParseError("evidence.cert_chain", "PEM text", type(chain).__name__)
        report = _b64(obj.get("report"), "evidence.report")
        if tee == "tdx":
            raw = obj.get("collateral")
            collateral = TdxCollateral.from_json(raw) if raw is not None else None
            return cls(tee=tee, report=report, collateral=collateral)
        return cls(tee=tee, report=report, vcek=_b64(obj.get("vcek"), "evidence.vcek"), cert_chain=chain)

    def to_json(self) -> dict[str, Any]:
        """The JSON envelope (inverse of :meth:`from_json`)."""
        out: dict[str, Any] = {"tee": self.tee, "report": base64.b64encode(self.report).decode(),
               "vcek": base64.b64encode(self.vcek).decode(), "cert_chain": self.cert_chain}
        if self.collateral is not None:
            out["collateral"] = self.collateral.to_json()
        return out


@dataclass(frozen=True)
class Claims:
    """What verified evidence says. Hex strings for byte fields (lower case).

    SEV-SNP: ``tcb`` is the REPORTED_TCB (the TCB the VCEK certifies), by component name. ``root`` is
    "amd" or "simulated". ``policy`` is the guest policy word; ``debug`` its bit 19.

    TDX (``tee == "tdx"``): ``product`` "tdx-1.0" or "tdx-1.5" (quote body type); ``measurement`` is
    MRTD, ``rtmrs`` RTMR0..3; ``host_data`` is MRCONFIGID (the host-chosen configuration value);
    ``policy`` is TD_ATTRIBUTES (little-endian) and ``debug`` its bit 0 (TUD.DEBUG); ``tcb`` holds
    TEE_TCB_SVN bytes 0..2 (tdx_module, tdx_module_version, tdx_microcode) and the PCK's PCESVN (pce);
    ``chip_id`` is the PPID and ``fmspc``/``platform_instance_id`` come from the PCK certificate;
    ``signing_key`` is "pck"; ``root`` is "intel" (pinned Intel SGX Root CA) or "simulated";
    ``tcb_status`` is Intel's verdict from collateral ("" when none was given) with ``advisory_ids``.
    """

    tee: str
    version: int
    product: str
    measurement: str
    report_data: str
    host_data: str
    policy: int
    debug: bool
    tcb: dict[str, int]
    chip_id: str
    signing_key: str
    root: str
    vmpl: int = 0
    guest_svn: int = 0
    platform_info: int = 0
    id_key_digest: str = ""
    author_key_digest: str = ""
    family_id: str = ""
    image_id: str = ""
    report_id: str = ""
    launch_tcb: dict[str, int] = field(default_factory=dict)
    rtmrs: list[str] = field(default_factory=list)
    mr_seam: str = ""
    mr_owner: str = ""
    mr_owner_config: str = ""
    xfam: str = ""
    tee_tcb_svn: str = ""
    fmspc: str = ""
    platform_instance_id: str = ""
    tcb_status: str = ""
    advisory_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of every claim."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def verify_evidence(evidence: Evidence, anchors: TrustAnchors, at: datetime) -> Claims:
    """Parse and verify evidence (signature, certificate chain valid at ``at``); return its claims.

    Raises ParseError or VerificationError. Does not appraise: call :func:`appraise` next.
    """
    if evidence.tee == "tdx":
        return Claims(**verify_tdx(evidence.report, evidence.collateral, anchors, at))
    if evidence.tee != "sev-snp":
        raise ParseError("evidence.tee", f"one of {list(TEES)}", evidence.tee)
    v = verify_snp(evidence.report, evidence.vcek, evidence.cert_chain, anchors, at)
    r = v.report
    return Claims(
        tee="sev-snp", version=r.version, product=v.product, measurement=r.measurement.hex(),
        report_data=r.report_data.hex(), host_data=r.host_data.hex(), policy=r.policy, debug=r.debug,
        tcb=r.reported_tcb.as_dict(), chip_id=r.chip_id.hex(), signing_key=v.signing_key, root=v.root.kind,
        vmpl=r.vmpl, guest_svn=r.guest_svn, platform_info=r.platform_info, id_key_digest=r.id_key_digest.hex(),
        author_key_digest=r.author_key_digest.hex(), family_id=r.family_id.hex(), image_id=r.image_id.hex(),
        report_id=r.report_id.hex(), launch_tcb=r.launch_tcb.as_dict(),
    )


def _hex_list(value: Any, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ParseError(f"policy.{where}", "a list of hex strings", value)
    try:
        return tuple(bytes.fromhex(i).hex() for i in items)
    except ValueError as exc:
        raise ParseError(f"policy.{where}", "hex strings", value) from exc


@dataclass(frozen=True)
class Policy:
    """What an appraiser accepts. ``None`` means "not checked"; an empty list allows nothing.

    One format for SEV-SNP and TDX (a TOML or JSON table with these keys):

    - ``allowed_measurements``: launch measurements (hex, 48 bytes) allowed: SNP MEASUREMENT, TDX MRTD;
    - ``allow_debug``: accept debuggable guests (SNP policy bit 19, TDX TD_ATTRIBUTES bit 0); default False;
    - ``min_tcb``: minimum TCB per component: SNP bootloader, tee, snp, microcode, fmc (REPORTED_TCB);
      TDX tdx_module, tdx_module_version, tdx_microcode (TEE_TCB_SVN), pce (PCESVN). A component
      applies only to evidence of its TEE;
    - ``allowed_roots``: "amd", "intel" and/or "simulated" (default ["amd"]: production SEV-SNP only);
    - ``chip_ids``: allowed machine ids (hex): SNP CHIP_ID, TDX PPID; pins machines against relayed keys;
    - ``host_data``: allowed host-chosen values (hex): SNP HOST_DATA, TDX MRCONFIGID;
    - ``signing_keys``: "vcek", "vlek" and/or "pck" (default all);
    - SEV-SNP only: ``allowed_policy_bits`` (mask of guest policy bits that may be set), ``max_vmpl``;
    - TDX only: ``rtmrs`` (table rtmr0..rtmr3 -> allowed hex values), ``allowed_td_attributes`` (mask
      of TD_ATTRIBUTES bits that may be set), ``min_tcb_status`` (worst acceptable Intel TCB status,
      e.g. "UpToDate" or "SWHardeningNeeded"; needs collateral; "Revoked" is never accepted).
    """

    allowed_measurements: tuple[str, ...] | None = None
    allow_debug: bool = False
    min_tcb: dict[str, int] = field(default_factory=dict)
    allowed_roots: tuple[str, ...] = ("amd",)
    chip_ids: tuple[str, ...] | None = None
    host_data: tuple[str, ...] | None = None
    allowed_policy_bits: int | None = None
    signing_keys: tuple[str, ...] = SIGNING_KEYS
    max_vmpl: int | None = None
    rtmrs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    allowed_td_attributes: int | None = None
    min_tcb_status: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Policy:
        """Build from a dict (keys as the attributes). Unknown keys are refused: a typo must not
        silently weaken a security policy. ParseError names the offending key."""
        if not isinstance(d, dict):
            raise ParseError("policy", "a table/object", type(d).__name__)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ParseError(f"policy.{unknown[0]}", f"one of {sorted(known)}", unknown[0])
        return cls(
            allowed_measurements=_hex_list(d.get("allowed_measurements"), "allowed_measurements"),
            allow_debug=_typed(d, "allow_debug", bool, False),
            min_tcb=_min_tcb(d.get("min_tcb", {})),
            allowed_roots=_str_tuple(d, "allowed_roots", ("amd",), set(ROOTS)),
            chip_ids=_hex_list(d.get("chip_ids"), "chip_ids"),
            host_data=_hex_list(d.get("host_data"), "host_data"),
            allowed_policy_bits=_typed(d, "allowed_policy_bits", int, None),
            signing_keys=_str_tuple(d, "signing_keys", SIGNING_KEYS, set(SIGNING_KEYS)),
            max_vmpl=_typed(d, "max_vmpl", int, None),
            rtmrs=_rtmrs(d.get("rtmrs", {})),
            allowed_td_attributes=_typed(d, "allowed_td_attributes", int, None),
            min_tcb_status=_tcb_status_name(d.get("min_tcb_status")),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> Policy:
        """Load a policy from a .json or .toml file."""
        path = Path(path)
        text = path.read_text()
        try:
            data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise ParseError(str(path), "a JSON or TOML policy", f"unreadable ({exc})") from exc
        return cls.from_dict(data)


def _typed(d: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = d.get(key, default)
    if value is not default and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
        raise ParseError(f"policy.{key}", kind.__name__, value)
    return value


def _str_tuple(d: dict[str, Any], key: str, default: tuple[str, ...], allowed: set[str]) -> tuple[str, ...]:
    value = d.get(key, list(default))
    if not isinstance(value, list | tuple) or not set(value) <= allowed:
        raise ParseError(f"policy.{key}", f"a list drawn from {sorted(allowed)}", value)
    return tuple(value)


def _rtmrs(value: Any) -> dict[str, tuple[str, ...]]:
    names = [f"rtmr{i}" for i in range(4)]
    if not isinstance(value, dict) or not set(value) <= set(names):
        raise ParseError("policy.rtmrs", f"a table with keys from {names}", value)
    return {name: _hex_list(allowed, f"rtmrs.{name}") or () for name, allowed in value.items()}


def _tcb_status_name(value: Any) -> str | None:
    acceptable = list(TCB_STATUSES[:-1])
    if value is not None and value not in acceptable:
        raise ParseError("policy.min_tcb_status", f"one of {acceptable}", value)
    return value


def _min_tcb(value: Any) -> dict[str, int]:
    if not isinstance(value, dict) or not set(value) <= set(TCB_COMPONENTS):
        raise ParseError("policy.min_tcb", f"a table with keys from {list(TCB_COMPONENTS)}", value)
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value.values()):
        raise ParseError("policy.min_tcb", "integers 0..255", value)
    return dict(value)


def appraise(claims: Claims, policy: Policy, *, report_data: bytes | None = None) -> None:
    """Check verified claims against a policy; raise AppraisalError naming the first mismatch.

    ``report_data`` (64 bytes), when given, must equal the evidence's REPORT_DATA exactly: that is
    the binding of the evidence to the verifier's nonce and the enclave's keys.
    """
    _check_member("root", claims.root, policy.allowed_roots,
                  "simulated evidence is for development; production policies accept AMD roots only")
    _check_member("signing_key", claims.signing_key, policy.signing_keys)
    if claims.debug and not policy.allow_debug:
        bit = "TD_ATTRIBUTES bit 0 (DEBUG)" if claims.tee == "tdx" else "guest policy bit 19"
        raise AppraisalError("policy.debug", f"debugging disallowed ({bit} clear)",
                             f"debug allowed (policy 0x{claims.policy:x})",
                             "the host can read this guest's memory; launch it without debug")
    if policy.allowed_measurements is not None:
        _check_member("measurement", claims.measurement, policy.allowed_measurements,
                      "this is not an approved build of the worker")
    _check_tcb(claims.tcb, policy.min_tcb, TDX_TCB_COMPONENTS if claims.tee == "tdx" else SNP_TCB_COMPONENTS)
    if policy.chip_ids is not None:
        _check_member("chip_id", claims.chip_id, policy.chip_ids, "the evidence comes from another machine")
    if policy.host_data is not None:
        _check_member("host_data", claims.host_data, policy.host_data)
    if claims.tee == "tdx":
        _check_tdx(claims, policy)
    else:
        _check_bits_and_vmpl(claims, policy)
    if report_data is not None:
        _check_report_data(claims, report_data)


def _check_member(name: str, value: str, allowed: tuple[str, ...], hint: str = "") -> None:
    if value not in allowed:
        raise AppraisalError(name, f"one of {list(allowed)}", value, hint)


def _check_tcb(tcb: dict[str, int], minimum: dict[str, int], components: tuple[str, ...]) -> None:
    for component, floor in minimum.items():
        if component not in components or (component == "fmc" and "fmc" not in tcb):
            continue  # another TEE's component; only Turin has an FMC
        if tcb.get(component, -1) < floor:
            raise AppraisalError(f"tcb.{component}", f">= {floor}", tcb.get(component),
                                 "the platform firmware is older than the policy allows; update it")


def _check_bits_and_vmpl(claims: Claims, policy: Policy) -> None:
    if policy.allowed_policy_bits is not None and claims.policy & ~policy.allowed_policy_bits:
        raise AppraisalError("policy_bits", f"only bits in 0x{policy.allowed_policy_bits:x}",
                             f"0x{claims.policy:x}", "the guest was launched with a policy bit not allowed")
    if policy.max_vmpl is not None and claims.vmpl > policy.max_vmpl:
        raise AppraisalError("vmpl", f"<= {policy.max_vmpl}", claims.vmpl)


def _check_tdx(claims: Claims, policy: Policy) -> None:
    for name, allowed in sorted(policy.rtmrs.items()):
        index = int(name[-1])
        actual = claims.rtmrs[index] if index < len(claims.rtmrs) else ""
        _check_member(name, actual, allowed, "the TD's runtime measurements (kernel, command line, ...) differ")
    if policy.allowed_td_attributes is not None and claims.policy & ~policy.allowed_td_attributes:
        raise AppraisalError("td_attributes", f"only bits in 0x{policy.allowed_td_attributes:x}",
                             f"0x{claims.policy:x}", "the TD was launched with an attribute not allowed")
    if policy.min_tcb_status is not None:
        rank = TCB_STATUSES.index
        ok = claims.tcb_status in TCB_STATUSES[:-1] and rank(claims.tcb_status) <= rank(policy.min_tcb_status)
        if not ok:
            raise AppraisalError("tcb_status", f"{policy.min_tcb_status} or better",
                                 claims.tcb_status or "unknown (no collateral given)",
                                 "the platform's TCB is not current enough per Intel; update it or pass collateral")


def _check_report_data(claims: Claims, report_data: bytes) -> None:
    actual = bytes.fromhex(claims.report_data)
    if len(report_data) != len(actual) or not hmac.compare_digest(report_data, actual):
        raise AppraisalError("report_data", report_data.hex(), claims.report_data,
                             "the evidence is not bound to this nonce and key (replayed or for another session)")
