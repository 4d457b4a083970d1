"""`python -m infra.local [STATE_DIR] [--workers N] [--no-airflow] ...`: run the stack until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from infra.local.stack import LocalStack


def main(argv: list[str] | None = None) -> int:
    """Start the stack, wait for Ctrl-C or SIGTERM, stop it."""
    ap = argparse.ArgumentParser(prog="python -m infra.local", description=__doc__)
    ap.add_argument("state_dir", nargs="?", default=".state", type=Path)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-airflow", action="store_true")
    ap.add_argument("--no-brokers", action="store_true")
    ap.add_argument("--no-sim-tee", action="store_true")
    args = ap.parse_args(argv)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with LocalStack(args.state_dir, workers=args.workers, airflow=not args.no_airflow,
                    brokers=not args.no_brokers, sim_tee=not args.no_sim_tee):
        print("[stack] running; Ctrl-C stops everything", flush=True)
        try:
            done.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
