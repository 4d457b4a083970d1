"""``cscore attest verify FILE``: verify (and optionally appraise) one piece of evidence.

Wire it into a CLI with::

    parser = subparsers.add_parser("verify"); add_arguments(parser); ... sys.exit(run(args))

FILE is a raw report or TDX quote (binary), the same as hex text, or an Evidence JSON envelope.
``--certs`` takes the VCEK/VLEK (DER or PEM) and the ASK/ARK chain (PEM) in any order (SEV-SNP; a TDX
quote carries its PCK chain). ``--collateral DIR`` (TDX) holds Intel's TCB Info, QE Identity and their
issuer chain, giving the TCB status. Exit status: 0 accepted, 1 rejected (verification or policy),
2 unusable input (unreadable file, malformed evidence).
"""

from __future__ import annotations

import argparse
import base64
import json
import struct
import sys
import warnings
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attestation.anchors import TrustAnchors
from attestation.errors import AttestationError, ParseError
from attestation.evidence import Claims, Evidence, Policy, appraise, verify_evidence
from attestation.snp.report import REPORT_SIZE
from attestation.tdx.collateral import TdxCollateral
from attestation.tdx.quote import TEE_TDX

EXIT_ACCEPTED, EXIT_REJECTED, EXIT_UNUSABLE = 0, 1, 2
SUPPORTED = ("an AMD SEV-SNP attestation report (--tee sev-snp) or an Intel TDX quote (--tee tdx), raw, as hex "
             "text or in an Evidence JSON envelope")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``verify`` arguments to ``parser``."""
    parser.add_argument("file", type=Path, help="report (raw binary or hex text) or Evidence JSON")
    parser.add_argument("--tee", choices=["sev-snp", "tdx"], default="sev-snp")
    parser.add_argument("--certs", type=Path, nargs="*", default=[],
                        help="VCEK/VLEK (DER or PEM) and ASK/ARK chain (PEM) files")
    parser.add_argument("--collateral", type=Path,
                        help="TDX: folder with Intel PCS TCB Info, QE Identity and issuer chain (PEM)")
    parser.add_argument("--at", help="verification time, ISO 8601 (default: now, UTC)")
    parser.add_argument("--policy", type=Path, help="policy file (.json or .toml) to appraise against")
    parser.add_argument("--trust-dir", type=Path,
                        help="also trust the simulated root in this folder (development only)")
    parser.add_argument("--json", action="store_true", help="print the verdict and claims as JSON")


def run(args: argparse.Namespace) -> int:
    """Verify per ``args``; print the verdict; return the exit status (0, 1 or 2)."""
    try:
        at = _parse_time(args.at)
        evidence = _load_evidence(args.file, args.tee, list(args.certs), args.collateral)
        anchors = TrustAnchors.from_dir(args.trust_dir) if args.trust_dir else TrustAnchors.amd()
        policy = Policy.from_file(args.policy) if args.policy else None
    except (OSError, ParseError, ValueError, UnicodeDecodeError) as exc:
        return _report(args, EXIT_UNUSABLE, "unusable input", exc, None)
    try:
        claims = verify_evidence(evidence, anchors, at)
    except ParseError as exc:
        return _report(args, EXIT_UNUSABLE, "unusable input", exc, None)
    except AttestationError as exc:
        return _report(args, EXIT_REJECTED, "rejected", exc, None)
    if policy is not None:
        try:
            appraise(claims, policy)
        except AttestationError as exc:
            return _report(args, EXIT_REJECTED, "rejected by policy", exc, claims)
    return _report(args, EXIT_ACCEPTED, "accepted" if policy else "verified (no policy given)", None, claims)


def _parse_time(text: str | None) -> datetime:
    if not text:
        return datetime.now(UTC)
    moment = datetime.fromisoformat(text)  # Python 3.11 reads a trailing "Z" as UTC
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _read_blob(path: Path) -> bytes:
    """Raw bytes, or the bytes spelled by a hex text file (whitespace ignored)."""
    data = path.read_bytes()
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return data
    compact = "".join(text.split())
    try:
        return bytes.fromhex(compact) if compact and len(compact) % 2 == 0 else data
    except ValueError:
        return data


def _load_evidence(path: Path, tee: str, cert_files: list[Path], collateral_dir: Path | None = None) -> Evidence:
    raw = path.read_bytes()
    collateral = TdxCollateral.from_dir(collateral_dir) if collateral_dir else None
    if raw.lstrip().startswith(b"{"):
        try:
            evidence = Evidence.from_json(json.loads(raw))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ParseError(str(path), "Evidence JSON", f"invalid JSON ({exc})") from exc
        return replace(evidence, collateral=collateral) if collateral else evidence
    report = _read_blob(path)
    foreign = _unsupported_kind(report) or _unsupported_kind(_base64_or_empty(raw))
    if foreign:  # refused by name, before --tee decides which parser would misread it
        raise ParseError(str(path), f"evidence of a kind cscore verifies: {SUPPORTED}", *foreign)
    if tee == "tdx":
        return Evidence(tee="tdx", report=report, collateral=collateral)
    if collateral is not None:
        raise ParseError("--collateral", "only with --tee tdx", str(collateral_dir))
    if len(report) >= 8 and struct.unpack_from("<HHI", report) in ((4, 2, TEE_TDX), (5, 2, TEE_TDX)):
        # a TDX quote's header (version, ECDSA P-256, TDX): asking for a VCEK would send the user to AMD
        raise ParseError(str(path), "an SEV-SNP attestation report (--tee sev-snp, the default)",
                         f"a TDX quote (version {report[0]})", "pass --tee tdx")
    if len(report) != REPORT_SIZE:  # before asking for a VCEK: this is no SEV-SNP report at all
        raise ParseError("report", f"{REPORT_SIZE} bytes (an SEV-SNP ATTESTATION_REPORT); cscore verifies {SUPPORTED}",
                         f"{len(report)} bytes of unrecognised evidence in {path}",
                         "give the worker's raw SEV-SNP report, or its TDX quote with --tee tdx")
    leaf, chain = _split_certs(cert_files)
    if leaf is None:
        raise ParseError("--certs", "the VCEK or VLEK certificate (DER or PEM)", "none",
                         "download it from AMD's KDS for this chip and TCB")
    return Evidence(tee=tee, report=report, vcek=leaf, cert_chain=chain)


def _unsupported_kind(data: bytes) -> tuple[str, str] | None:
    """(what `data` is, what to do) when its leading bytes name a kind cscore does not verify; None otherwise."""
    # COSE_Sign1 (a CBOR array of 4, tag 18 optional) whose payload map starts with Nitro's first field
    if data[:1] in (b"\x84", b"\xd2") and b"module_id" in data[:64]:
        return ("an AWS Nitro Enclaves attestation document (COSE_Sign1)",
                "cscore's workers run in SEV-SNP or TDX confidential VMs: give the worker's evidence, or check a Nitro "
                "document with a Nitro verifier")
    if data.lstrip().startswith(b"-----BEGIN"):
        return "a PEM file", "give the report as FILE and certificates with --certs"
    return None


def _base64_or_empty(data: bytes) -> bytes:
    """`data` decoded as base64 text (how Nitro documents are often passed around); b"" when it is not."""
    try:
        return base64.b64decode(b"".join(data.split()), validate=True)
    except ValueError:
        return b""


def _split_certs(files: list[Path]) -> tuple[bytes | None, str]:
    """(leaf DER, chain PEM): the EC-keyed certificate is the VCEK/VLEK, RSA ones form the chain."""
    leaf: bytes | None = None
    chain = ""
    for path in files:
        for cert in _load_any_certs(path):
            if isinstance(cert.public_key(), ec.EllipticCurvePublicKey):
                leaf = cert.public_bytes(serialization.Encoding.DER)
            else:
                chain += cert.public_bytes(serialization.Encoding.PEM).decode()
    return leaf, chain


def _load_any_certs(path: Path) -> list[x509.Certificate]:
    data = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # AMD certificates use serial number 0
        try:
            if b"-----BEGIN" in data:
                return x509.load_pem_x509_certificates(data)
            return [x509.load_der_x509_certificate(data)]
        except ValueError as exc:
            raise ParseError(str(path), "a DER or PEM certificate", f"unreadable ({exc})") from exc


def _report(args: argparse.Namespace, code: int, verdict: str, error: Exception | None,
            claims: Claims | None) -> int:
    if args.json:
        out: dict[str, Any] = {"verdict": verdict, "exit": code}
        if isinstance(error, AttestationError):
            out["error"] = error.to_dict()
        elif error is not None:
            out["error"] = {"detail": str(error)}
        if claims is not None:
            out["claims"] = claims.to_dict()
        print(json.dumps(out, indent=2))
    else:
        print(f"{verdict}: {error}" if error else verdict, file=sys.stderr if error else sys.stdout)
        if claims is not None:
            print(_describe(claims))
    return code


def _describe(claims: Claims) -> str:
    """The claims a person checks, one per line."""
    lines = [f"  tee {claims.tee}, version {claims.version}, product {claims.product}",
             f"  measurement {claims.measurement}", f"  report_data {claims.report_data}",
             f"  policy 0x{claims.policy:x}, debug {claims.debug}", f"  tcb {claims.tcb}",
             f"  chip_id {claims.chip_id}", f"  signing_key {claims.signing_key}, root {claims.root}"]
    if claims.tee == "tdx":
        lines[3] = f"  td_attributes 0x{claims.policy:x}, debug {claims.debug}, mr_config_id {claims.host_data}"
        lines[5] = f"  ppid {claims.chip_id}, fmspc {claims.fmspc}"
        lines += [f"  rtmr{i} {value}" for i, value in enumerate(claims.rtmrs)]
        lines.append(f"  tcb_status {claims.tcb_status or 'not evaluated (no --collateral)'}"
                     + (f", advisories {', '.join(claims.advisory_ids)}" if claims.advisory_ids else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m attestation.cli FILE ...`` (same as ``cscore attest verify``)."""
    parser = argparse.ArgumentParser(prog="cscore attest verify", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

