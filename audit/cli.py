"""`cscore audit …`: sync the transparency log, verify it, tell the story of a batch.

Registered into the `cscore` command line by `add_commands(subparsers)`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from attestation import Policy, TrustAnchors
from audit.collect import SyncReport, sync_log
from audit.log import AuditLog, S3Storage, Witness, load_or_create_key
from audit.show import batch_report, batch_verdicts, render_html, render_text
from audit.verify import Finding, failed, verify_audit

PARTIES = ("owner", "provider")


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `audit verify`, `audit show`, `audit batches` and `audit sync` to a command line's subparsers."""
    audit = subparsers.add_parser("audit", help="the auditor's tools: verify the log, show a batch's story")
    sub = audit.add_subparsers(dest="audit_action", required=True)
    verify = sub.add_parser("verify", help="check the log's integrity and meaning; exit 0 when all holds")
    _location(verify)
    _trust(verify)
    verify.add_argument("--json", action="store_true", help="findings as JSON")
    verify.set_defaults(func=cmd_verify)
    show = sub.add_parser("show", help="verify, then tell one batch's story; exit 1 if the audit fails, 2 if "
                                       "the batch or the log is unknown")
    show.add_argument("batch")
    _location(show)
    _trust(show)
    show.add_argument("--html", type=Path, help="also write a self-contained HTML report here")
    show.add_argument("--json", action="store_true", help="the same report as JSON, for tools")
    show.set_defaults(func=cmd_show)
    batches = sub.add_parser("batches", help="every batch in the log with its state and verdict; exit 1 if any "
                                             "audit fails")
    _location(batches)
    _trust(batches)
    batches.add_argument("--json", action="store_true", help="as JSON")
    batches.set_defaults(func=cmd_batches)
    sync = sub.add_parser("sync", help="append new broker decisions and S3 records, sign, let witnesses see it")
    _location(sync)
    sync.add_argument("--json", action="store_true", help="what was appended and the checkpoint, as JSON")
    sync.set_defaults(func=cmd_sync)


def _location(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--state-dir", dest="audit_state_dir", type=Path, help="local stack state (log in <dir>/audit)")
    group.add_argument("--log", dest="audit_log", help="log location: a directory or s3://bucket/prefix")


def _trust(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--measurement", action="append", help="enclave measurement the auditor accepts (hex); "
                        "repeatable (default: the measurement of this checkout's worker code)")
    parser.add_argument("--policy", type=Path, help="attestation policy file (JSON/TOML) instead of --measurement")
    parser.add_argument("--trust-dir", type=Path, help="simulated TEE roots to accept (default $CSCORE_SIM_TEE_DIR)")


def _state_dir(args: argparse.Namespace) -> Path:
    chosen = getattr(args, "audit_state_dir", None) or getattr(args, "state_dir", None)
    return Path(chosen or os.environ.get("CSCORE_STATE_DIR", ".state/demo"))


def load_stack_env(state_dir: Path) -> None:
    """Adopt a local stack's stack.env (variables already set win)."""
    env_file = state_dir / "stack.env"
    if not env_file.is_file():
        return
    for line in env_file.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            os.environ.setdefault(name.strip(), "".join(shlex.split(value)))


def open_log(location: str | None, state_dir: Path) -> AuditLog:
    """The log at `location` (directory or s3://bucket/prefix), default `<state>/audit`.

    The signing key is `<state>/audit/log-key.pem` when it exists (or for the default location, where
    it is created); without it the log is read-only.
    """
    key_path = state_dir / "audit" / "log-key.pem"
    if location is None:
        return AuditLog.open_dir(state_dir / "audit", key_path=key_path)
    if location.startswith("s3://"):
        from sdk.storage import ObjectStore

        bucket, _, prefix = location[5:].partition("/")
        signer = load_or_create_key(key_path) if key_path.exists() else None
        return AuditLog(S3Storage(ObjectStore(bucket), prefix or "audit/"), signer=signer)
    return AuditLog.open_dir(Path(location), key_path=key_path, create=False)


def witnesses(state_dir: Path) -> list[Witness]:
    """The owner's and the provider's witnesses, in their party homes."""
    return [Witness(state_dir / party, party) for party in PARTIES]


def sync_from_env(state_dir: Path, log: AuditLog | None = None) -> SyncReport:
    """Sync the log from both brokers (each party's admin token in its home) and the bucket, then let
    the owner's and the provider's witnesses check and remember the new checkpoint."""
    from sdk.broker_admin import BrokerAdmin
    from sdk.storage import ObjectStore

    log = log or open_log(None, state_dir)
    brokers = {}
    for party in PARTIES:
        url = os.environ.get(f"CSCORE_{party.upper()}_BROKER_URL")
        token = state_dir / party / "broker-admin-token"
        if url and token.is_file():
            brokers[party] = BrokerAdmin(url, token.read_text().strip(), party=party)
    try:
        report = sync_log(log, brokers, ObjectStore())
    finally:
        for admin in brokers.values():
            admin.close()
    for witness in witnesses(state_dir):
        witness.observe(log)
    return report


def auditor_trust(args: argparse.Namespace) -> tuple[TrustAnchors, Policy]:
    """Trust anchors (AMD, plus simulated roots only if a trust dir is named) and the auditor's policy."""
    trust_dir = args.trust_dir or (Path(os.environ["CSCORE_SIM_TEE_DIR"]) if os.environ.get("CSCORE_SIM_TEE_DIR")
                                   else None)
    if trust_dir:  # an insecure switch said aloud: a local stack's stack.env sets the variable without asking
        named = "--trust-dir" if args.trust_dir else "$CSCORE_SIM_TEE_DIR"
        print(f"audit: trusting SIMULATED TEE roots from {trust_dir} ({named}): evidence they sign proves no "
              "hardware ran the code; for development only", file=sys.stderr)
    anchors = TrustAnchors.from_dir(trust_dir) if trust_dir else TrustAnchors.amd()
    if args.policy:
        return anchors, Policy.from_file(args.policy)
    measurements = args.measurement
    if not measurements:
        from enclave.measurement import code_measurement

        measurements = [code_measurement().hex()]
    roots = ["amd", "simulated"] if trust_dir else ["amd"]
    return anchors, Policy.from_dict({"allowed_measurements": measurements, "allowed_roots": roots})


def _verified(args: argparse.Namespace) -> tuple[AuditLog, Any, list[Finding]] | None:
    """(log, store, findings), or None (said on stderr) when the log holds nothing signed to check."""
    from sdk.storage import ObjectStore

    state_dir = _state_dir(args)
    load_stack_env(state_dir)
    log = open_log(args.audit_log, state_dir)
    if log.size == 0 or log.checkpoint_note() is None:
        print(f"The audit log at {log.describe()} was never synced ({log.size} entries, no signed checkpoint): "
              "run `cscore audit sync` first, or point --log/--state-dir at the log.", file=sys.stderr)
        return None
    store = ObjectStore()
    anchors, policy = auditor_trust(args)
    return log, store, verify_audit(log, store, anchors, policy, witnesses=witnesses(state_dir))


def cmd_verify(args: argparse.Namespace) -> int:
    checked = _verified(args)
    if checked is None:
        return 2
    log, _, findings = checked
    if args.json:
        print(json.dumps([f.__dict__ for f in findings], indent=1))
    else:
        for finding in findings:
            print(finding)
        verdict = "does NOT hold" if failed(findings) else "holds"
        print(f"audit of {log.describe()} ({log.size} entries): {verdict}")
    return 1 if failed(findings) else 0


def cmd_show(args: argparse.Namespace) -> int:
    checked = _verified(args)
    if checked is None:
        return 2
    log, store, findings = checked
    report = batch_report(log, store, args.batch, findings, witnesses=witnesses(_state_dir(args)))
    if not report["known"]:
        known = ", ".join(b["batch_id"] for b in batch_verdicts(log, findings)) or "none"
        print(f"The audit log at {log.describe()} holds nothing about batch {args.batch!r}. Batches it knows: "
              f"{known}. If the batch is new, run `cscore audit sync`.", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1) if args.json else render_text(report))
    if args.html:
        args.html.write_text(render_html(report))
        print(f"HTML report written to {args.html}", file=sys.stderr)
    return 0 if report["verdict"]["holds"] else 1


def cmd_batches(args: argparse.Namespace) -> int:
    checked = _verified(args)
    if checked is None:
        return 2
    log, _, findings = checked
    rows = batch_verdicts(log, findings)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        width = max([len("batch"), *(len(r["batch_id"]) for r in rows)])
        print(f"{'batch':<{width}}  {'tenant':<10}  {'state':<10}  {'receipts':>8}  {'refused':>7}  verdict")
        for r in rows:
            verdict = "holds" if r["holds"] else f"does NOT hold: {r['problems']} problem(s)"
            print(f"{r['batch_id']:<{width}}  {str(r['tenant']):<10}  {r['state']:<10}  {r['receipts']:>8}  "
                  f"{r['refusals']:>7}  {verdict}")
        if failed(findings) and not any(f.batch_id for f in findings if f.severity == "error"):
            print("The log itself does not verify: run `cscore audit verify` for the details.")
    return 0 if all(r["holds"] for r in rows) and not failed(findings) else 1


def cmd_sync(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    load_stack_env(state_dir)
    report = sync_from_env(state_dir, open_log(args.audit_log, state_dir))
    if args.json:
        c = report.checkpoint
        print(json.dumps({"appended": report.appended, "checkpoint": None if c is None else {
            "origin": c.origin, "size": c.size, "root": base64.b64encode(c.root).decode(), "timestamp": c.timestamp}}))
    else:
        print(report.summary())
    return 0


def main(argv: list[str] | None = None) -> Any:
    """Standalone entry (`python -m audit.cli verify …`) for when cscore's CLI is not wired yet."""
    parser = argparse.ArgumentParser(prog="audit")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["audit", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
