"""Owner-side ingest speed: ``read_emails`` over the corpus written as an mbox, JSON lines and a folder.

    .venv/bin/python -m bench.ingest [--repeat 3] [--copies 2] [--processes 1,2]

Writes all corpus emails (``--copies`` times, ~6,000 each) to a temporary mbox (mboxrd-quoted), a JSON
lines file (``{"message_id", "raw"}``) and a folder of .eml files, then prints emails/s per format and per
``read_emails(processes=N)``, side by side: fastest of ``--repeat`` runs, wall clock, and CPU of this process
and its parsing processes together (emails per CPU second: the rate of one core), and the wall speed-up over one
process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path

from sdk.corpus import default_cache_dir, fetch_corpus, load_corpus
from sdk.emails import read_emails

_FROM = re.compile(rb"^(>*From )", re.MULTILINE)


def write_inputs(raws: list[bytes], folder: Path) -> dict[str, Path]:
    """The same emails as an mbox, a JSON lines file and a folder of .eml files."""
    mbox, jsonl, eml = folder / "all.mbox", folder / "all.jsonl", folder / "eml"
    eml.mkdir()
    with mbox.open("wb") as m, jsonl.open("w") as j:
        for n, raw in enumerate(raws):
            body = raw.split(b"\n", 1)[1] if raw.startswith(b"From ") else raw
            m.write(b"From bench@example.test Mon Jan  6 09:15:02 2025\n" + _FROM.sub(rb">\1", body) + b"\n\n")
            j.write(json.dumps({"message_id": f"m{n}", "raw": raw.decode("utf-8", "surrogateescape")},
                               ensure_ascii=True) + "\n")
            (eml / f"{n:06d}.eml").write_bytes(raw)
    return {"mbox": mbox, "jsonl": jsonl, "eml folder": eml}


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--copies", type=int, default=1)
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts to compare")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.processes.split(",")]
    raws = [e.raw for e in load_corpus(fetch_corpus(default_cache_dir()))] * args.copies
    with tempfile.TemporaryDirectory(prefix="cscore-ingest-") as tmp:
        inputs = write_inputs(raws, Path(tmp))
        print(f"{len(raws)} emails per input; load average {os.getloadavg()[0]:.1f}")
        for name, path in inputs.items():
            count = sum(1 for _ in read_emails(path))
            alone = 0.0
            for processes in counts:
                wall, cpu = _best(count, path, processes, args.repeat)
                alone = alone or wall
                print(f"{name:10} {count:6d} emails  processes {processes}  {wall:8.0f} emails/s wall  "
                      f"{cpu:8.0f} emails/s per CPU second  x{wall / alone:.2f} wall vs {counts[0]}")


def _best(count: int, path: Path, processes: int, repeat: int) -> tuple[float, float]:
    """(emails per wall second, emails per CPU second of this process and its children), fastest runs."""
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), _cpu()
        read = sum(1 for _ in read_emails(path, processes=processes))  # the pool is joined: children counted
        walls.append(time.perf_counter() - wall)
        cpus.append(_cpu() - cpu)
        assert read == count
    return count / min(walls), count / min(cpus)


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


if __name__ == "__main__":
    main()
