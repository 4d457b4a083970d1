"""`cscore owner stream SOURCE`: the command line of `sdk.stream` (arguments, progress lines, JSON events)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any


def add_stream_command(owner: argparse._SubParsersAction[argparse.ArgumentParser],
                       add_release_arguments: Any) -> None:
    """Register `owner stream` on the owner's subcommands."""
    stream = owner.add_parser("stream", help="watch a maildir or a drop folder, submit micro-batches and write each "
                              "batch's verified results as they land; resumes where it stopped (kill -9 included)")
    stream.add_argument("source", type=Path, help="a maildir (new/ and cur/; tmp/ is never read) or a drop folder of "
                        ".eml, mbox or JSON lines files (read once unchanged for --settle s; *.tmp/*.part skipped)")
    stream.add_argument("--model", required=True, help="name or name:version (see `cscore models`)")
    stream.add_argument("--tenant", required=True)
    stream.add_argument("--out", type=Path, required=True, help="folder for each batch's verified results "
                        "(<batch>.parquet: the model's result columns and each email's source file)")
    stream.add_argument("--batch-size", type=int, default=500, help="emails per batch at most (default 500)")
    stream.add_argument("--max-age", type=float, default=5.0, help="seconds the oldest queued email waits before a "
                        "partial batch is cut (default 5)")
    stream.add_argument("--settle", type=float, default=2.0, help="drop folders: seconds a file must stay unchanged "
                        "before it is read (default 2); writers that rename finished files in need none")
    stream.add_argument("--max-in-flight", type=int, default=4, help="batches submitted and not yet written")
    stream.add_argument("--poll", type=float, default=0.5, help="seconds between passes")
    stream.add_argument("--journal", type=Path, help="the stream's journal (default <state>/owner/streams/"
                        "<tenant>-<source digest>.sqlite)")
    stream.add_argument("--once", action="store_true", help="process what is there, wait for its results, exit")
    stream.add_argument("--wait", type=float, default=900.0, help="with --once: seconds to wait for the results")
    stream.add_argument("--json", action="store_true", help="one JSON event per line on stdout")
    stream.add_argument("--measurement", action="append", help="enclave measurement to grant (hex); repeatable")
    add_release_arguments(stream)
    stream.add_argument("--accept-simulated", action="store_true",
                        help="trust receipts from the simulated TEE (development stacks only)")
    stream.set_defaults(func=cmd_owner_stream, skip_native_teardown=True)


def cmd_owner_stream(args: argparse.Namespace) -> int:
    from cscore.cli import _load_stack_env
    from cscore.release import measurements_to_allow
    from sdk.models import find_model
    from sdk.owner import BatchError
    from sdk.party import Party
    from sdk.results import fetch_results, owner_trust
    from sdk.storage import ObjectStore
    from sdk.stream import Journal, Stream, StreamError, StreamOptions, default_journal

    for name in ("batch_size", "max_in_flight"):
        if getattr(args, name) < 1:
            raise StreamError(f"--{name.replace('_', '-')}: expected at least 1, got {getattr(args, name)}")
    _load_stack_env(args.state_dir)
    store, owner = ObjectStore(), Party.from_env("owner")
    model = find_model(store, args.model, owner.trusted_providers())
    if model.card is not None and any(i.kind != "email-text" for i in model.card.contract.inputs):
        raise BatchError(f"model {model.name}:{model.version} takes {[i.kind for i in model.card.contract.inputs]}, "
                         "not emails")
    measurements = measurements_to_allow(args.measurement, args.release, args.release_key)
    # Receipts are checked against what this owner grants (not the demo's trust: it imports scikit-learn).
    anchors, policy = owner_trust(accept_simulated=args.accept_simulated, measurements=measurements)
    journal = Journal(args.journal or default_journal(owner, args.source, args.tenant), source=args.source,
                      tenant=args.tenant)
    options = StreamOptions(batch_size=args.batch_size, max_age_s=args.max_age, settle_s=args.settle,
                            poll_s=args.poll, max_in_flight=args.max_in_flight, wait_s=args.wait)
    stream = Stream(args.source, args.out, journal, model, args.tenant, owner, store, measurements,
                    verify=lambda batch_id: fetch_results(args.tenant, batch_id, owner=owner, store=store,
                                                          anchors=anchors, policy=policy),
                    emit=_json_event if args.json else _progress_line, options=options)
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    try:
        if args.once:
            stream.run_once(should_stop=lambda: bool(stopping))
        else:
            print(f"streaming {args.source} -> {args.out} (journal {journal.path}); Ctrl-C stops, a restart resumes",
                  file=sys.stderr)
            stream.run_forever(should_stop=lambda: bool(stopping))
    finally:
        journal.close()
    return 1 if stream.problems else 0


def _json_event(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


def _progress_line(event: dict[str, Any]) -> None:
    kind = event["event"]
    if kind == "read":
        line = f"read     {event['file']}: {event['emails']} email(s)"
    elif kind == "refused":
        line = f"REFUSED  {event['file']}: {event['error']}"
    elif kind == "flagged":
        line = f"flagged  {event['file']} {event['message_id']}: {'; '.join(event['problems'])}"
    elif kind == "cut":
        line = f"batch    {event['batch_id']}: {event['emails']} email(s) cut"
    elif kind == "submitted":
        line = (f"batch    {event['batch_id']}: submitted in {event['seconds']:.1f} s"
                + (" (found in the bucket: submitted before a restart)" if event.get("found_in_bucket") else ""))
    elif kind == "written":
        waits = event["arrival_to_verified_s"]
        line = (f"results  {event['batch_id']}: {event['emails']} verified ({event['receipts_verified']} receipts) "
                f"-> {event['output']}; arrival to verified p50 {waits['p50']:.1f} s, max {waits['max']:.1f} s")
    elif kind in ("failed", "rejected"):
        line = f"{kind.upper():8} {event['batch_id']}: {event['reason']}" + (
            f"\n         next: {event['advice']}" if event.get("advice") else "")
    elif kind == "resumed":
        line = f"resumed  {event['journal']}: {event['queued']} email(s) queued, batches {event['batches']}"
    else:
        line = "idle     waiting for mail"
    print(line, flush=True)
