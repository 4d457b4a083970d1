"""Peak memory and wall time of `cscore owner submit` as the batch grows (the real program, on a local stack).

    .venv/bin/python -m bench.owner_memory [--emails 2418,96720] [--format jsonl|parquet] [--state-dir DIR]

Starts moto and both key brokers (no Airflow, no workers: nothing is scored), publishes the spam model as
the provider, then for each size writes a JSON-lines input of that many emails (the corpus' held-out raw
messages repeated, each with its own id; or, with `--format parquet`, a Parquet file of their texts, which
skips MIME parsing: for a million emails on a small machine) and runs `python -m cscore owner submit` on it under
`/usr/bin/time -v`: peak resident memory (the whole process) and wall time, with emails/s. The submit
parses, checks and spools every email, then encrypts and uploads part by part (`sdk.owner.submit_spooled`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from infra.local.stack import LocalStack
from sdk.corpus import default_cache_dir, fetch_corpus, load_corpus, split_corpus
from sdk.emails import email_text
from sdk.party import Party
from sdk.provider import publish_model
from sdk.storage import ObjectStore
from sdk.training import export_onnx, train_spam_model

REPO = Path(__file__).resolve().parents[1]


def write_input(path: Path, raws: list[bytes], n: int) -> int:
    """JSON lines of `n` emails cycling through `raws`; returns the file's size in bytes."""
    with path.open("w", encoding="utf-8") as out:
        for i in range(n):
            raw = raws[i % len(raws)].decode("utf-8", "surrogateescape")
            out.write(json.dumps({"message_id": f"m{i:07d}", "raw": raw}) + "\n")
    return path.stat().st_size


def write_parquet(path: Path, texts: list[str], n: int) -> int:
    """A Parquet input (message_id, text) of `n` emails cycling through `texts`, 10,000 rows per row group."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pq.ParquetWriter(path, pa.schema([("message_id", pa.string()), ("text", pa.string())])) as writer:
        for start in range(0, n, 10_000):
            rows = range(start, min(n, start + 10_000))
            writer.write_table(pa.table({"message_id": [f"m{i:07d}" for i in rows],
                                         "text": [texts[i % len(texts)] for i in rows]}))
    return path.stat().st_size


def measured_submit(state_dir: Path, input_file: Path) -> tuple[float, float, str]:
    """(peak RSS in MB, wall s, the command's last output line) of one `cscore owner submit`."""
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "cscore", "--state-dir", str(state_dir), "owner",
               "submit", str(input_file), "--model", "spam-filter:1", "--tenant", "acme", "--measurement", "00" * 48]
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"owner submit failed ({done.returncode}): {done.stderr[-2000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))  # type: ignore[union-attr]
    return peak_kb / 1024, wall, done.stdout.strip().splitlines()[-1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emails", default="2418,96720", help="comma-separated batch sizes")
    parser.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl",
                        help="jsonl: raw messages (parsed as MIME); parquet: their texts (no parsing)")
    parser.add_argument("--state-dir", type=Path, help="stack state (default: a temporary folder)")
    parser.add_argument("--inputs", type=Path, help="where the inputs are written (default: the state dir)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.emails.split(",")]
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="cscore-owner-memory-"))
    inputs = args.inputs or state_dir / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    train, held_out = split_corpus(load_corpus(fetch_corpus(default_cache_dir())), train_fraction=0.6, seed=0)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CSCORE_", "AIRFLOW"))}
    rows = []
    with LocalStack(state_dir, workers=0, airflow=False, environ=environ, out=lambda _: None) as stack:
        os.environ.update(stack.env)
        pipeline = train_spam_model([email_text(e.raw) for e in train], [e.label for e in train])
        publish_model(export_onnx(pipeline), "spam-filter", provider=Party.from_env("provider"), store=ObjectStore(),
                      allowed_measurements=["00" * 48])
        Party.from_env("owner").trust_provider(Party.from_env("provider").public_key())
        for n in sizes:
            path = inputs / f"emails-{n}.{args.format}"
            size = (write_input(path, [e.raw for e in held_out], n) if args.format == "jsonl" else
                    write_parquet(path, [email_text(e.raw) for e in held_out], n))
            peak, wall, said = measured_submit(state_dir, path)
            rows.append((n, size / 1e6, peak, wall, n / wall))
            print(f"[bench] {n} emails ({size / 1e6:.0f} MB {args.format}): peak {peak:.0f} MB, {wall:.1f} s "
                  f"({n / wall:.0f} emails/s); {said}", flush=True)
            path.unlink()
    if args.state_dir is None:
        shutil.rmtree(state_dir, ignore_errors=True)
    print(f"\n{'emails':>9} {'input MB':>9} {'peak RSS MB':>12} {'wall s':>8} {'emails/s':>9}")
    for n, mb, peak, wall, rate in rows:
        print(f"{n:>9} {mb:>9.0f} {peak:>12.0f} {wall:>8.1f} {rate:>9.0f}")


if __name__ == "__main__":
    main()
