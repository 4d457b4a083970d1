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

TEES = ("sev-snp",)
TCB_COMPONENTS = ("bootloader", "tee", "snp", "microcode", "fmc")


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

    JSON form: ``{"tee": "sev-snp", "report": b64, "vcek": b64 DER, "cert_chain": PEM}`` where
    ``cert_chain`` lists the ASK (or ASVK for a VLEK) then the ARK, and may be "" (the verifier then
    uses the intermediates it already knows). ``vcek`` holds the VLEK when the report says VLEK.
    """

    tee: str
    report: bytes
    vcek: bytes
    cert_chain: str = ""

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
        return cls(tee=tee, report=_b64(obj.get("report"), "evidence.report"),
                   vcek=_b64(obj.get("vcek"), "evidence.vcek"), cert_chain=chain)

    def to_json(self) -> dict[str, Any]:
        """The JSON envelope (inverse of :meth:`from_json`)."""
        return {"tee": self.tee, "report": base64.b64encode(self.report).decode(),
                "vcek": base64.b64encode(self.vcek).decode(), "cert_chain": self.cert_chain}


@dataclass(frozen=True)
class Claims:
    """What verified evidence says. Hex strings for byte fields (lower case).

    ``tcb`` is the REPORTED_TCB (the TCB the VCEK certifies), by component name. ``root`` is
    "amd" or "simulated". ``policy`` is the guest policy word; ``debug`` its bit 19.
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of every claim."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def verify_evidence(evidence: Evidence, anchors: TrustAnchors, at: datetime) -> Claims:
    """Parse and verify evidence (signature, certificate chain valid at ``at``); return its claims.

    Raises ParseError or VerificationError. Does not appraise: call :func:`appraise` next.
    """
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

    - ``allowed_measurements``: launch measurements (hex, 48 bytes) allowed;
    - ``allow_debug``: accept guests whose policy allows host debugging (default False);
    - ``min_tcb``: minimum REPORTED_TCB per component (bootloader, tee, snp, microcode, fmc);
    - ``allowed_roots``: "amd" and/or "simulated" (default ["amd"]: production);
    - ``chip_ids``: allowed CHIP_IDs (hex), to pin chips against relayed keys;
    - ``host_data``: allowed HOST_DATA values (hex);
    - ``allowed_policy_bits``: mask of guest policy bits that may be set (e.g. forbid migration agents);
    - ``signing_keys``: "vcek" and/or "vlek"; ``max_vmpl``: highest VMPL accepted (0 = most privileged).
    """

    allowed_measurements: tuple[str, ...] | None = None
    allow_debug: bool = False
    min_tcb: dict[str, int] = field(default_factory=dict)
    allowed_roots: tuple[str, ...] = ("amd",)
    chip_ids: tuple[str, ...] | None = None
    host_data: tuple[str, ...] | None = None
    allowed_policy_bits: int | None = None
    signing_keys: tuple[str, ...] = ("vcek", "vlek")
    max_vmpl: int | None = None

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
            allowed_roots=_str_tuple(d, "allowed_roots", ("amd",), {"amd", "simulated"}),
            chip_ids=_hex_list(d.get("chip_ids"), "chip_ids"),
            host_data=_hex_list(d.get("host_data"), "host_data"),
            allowed_policy_bits=_typed(d, "allowed_policy_bits", int, None),
            signing_keys=_str_tuple(d, "signing_keys", ("vcek", "vlek"), {"vcek", "vlek"}),
            max_vmpl=_typed(d, "max_vmpl", int, None),
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
        raise AppraisalError("policy.debug", "debugging disallowed (guest policy bit 19 clear)",
                             f"debug allowed (policy 0x{claims.policy:x})",
                             "the host can read this guest's memory; launch it without debug")
    if policy.allowed_measurements is not None:
        _check_member("measurement", claims.measurement, policy.allowed_measurements,
                      "this is not an approved build of the worker")
    _check_tcb(claims.tcb, policy.min_tcb)
    if policy.chip_ids is not None:
        _check_member("chip_id", claims.chip_id, policy.chip_ids, "the evidence comes from another machine")
    if policy.host_data is not None:
        _check_member("host_data", claims.host_data, policy.host_data)
    _check_bits_and_vmpl(claims, policy)
    if report_data is not None:
        _check_report_data(claims, report_data)


def _check_member(name: str, value: str, allowed: tuple[str, ...], hint: str = "") -> None:
    if value not in allowed:
        raise AppraisalError(name, f"one of {list(allowed)}", value, hint)


def _check_tcb(tcb: dict[str, int], minimum: dict[str, int]) -> None:
    for component, floor in minimum.items():
        if component == "fmc" and "fmc" not in tcb:
            continue  # only Turin has an FMC
        if tcb.get(component, -1) < floor:
            raise AppraisalError(f"tcb.{component}", f">= {floor}", tcb.get(component),
                                 "the platform firmware is older than the policy allows; update it")


def _check_bits_and_vmpl(claims: Claims, policy: Policy) -> None:
    if policy.allowed_policy_bits is not None and claims.policy & ~policy.allowed_policy_bits:
        raise AppraisalError("policy_bits", f"only bits in 0x{policy.allowed_policy_bits:x}",
                             f"0x{claims.policy:x}", "the guest was launched with a policy bit not allowed")
    if policy.max_vmpl is not None and claims.vmpl > policy.max_vmpl:
        raise AppraisalError("vmpl", f"<= {policy.max_vmpl}", claims.vmpl)


def _check_report_data(claims: Claims, report_data: bytes) -> None:
    actual = bytes.fromhex(claims.report_data)
    if len(report_data) != len(actual) or not hmac.compare_digest(report_data, actual):
        raise AppraisalError("report_data", report_data.hex(), claims.report_data,
                             "the evidence is not bound to this nonce and key (replayed or for another session)")
