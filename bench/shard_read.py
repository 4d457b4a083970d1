"""What one shard costs to read: the whole file downloaded and hashed (before) vs ranged reads (now).

    .venv/bin/python -m bench.shard_read [--sizes 2418 24180 96720] [--shards 20]

Starts a moto S3 server on loopback (nothing else of the stack), uploads one PME input file per size (the
owner's own `encode_part`, real AES-GCM under an in-memory master key, the corpus' held-out emails repeated),
then reads `--shards` shards of 2 row groups (400 emails) spread over the file, both ways, from the same
worker storage code (`tasks.storage`): "whole" = GetObject + SHA-256 of every byte + PME open + read the row
groups, as before; "ranged" = `S3Object` + `enclave.worker.read_shard` (tail, footer, own column chunks).
Prints per size: file MB, ms per shard and bytes read per shard each way, and their ratio.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from enclave.pme import EncryptedParquet, PmeKeys
from enclave.ranged import TAIL_BYTES
from enclave.worker import INPUT_COLUMNS, read_shard
from infra.local.stack import LocalStack
from sdk.corpus import default_cache_dir, fetch_corpus, load_corpus, split_corpus
from sdk.emails import email_text
from sdk.owner import ROW_GROUP_SIZE, SHARD_MIN_ROW_GROUPS, OwnerKeys, encode_part
from tests.enclave.test_pme import LocalWrapper
from wire.shard import ShardSpec


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2_418, 24_180, 96_720])
    parser.add_argument("--shards", type=int, default=20)
    args = parser.parse_args(argv)
    _, held_out = split_corpus(load_corpus(fetch_corpus(default_cache_dir())), train_fraction=0.6, seed=0)
    texts = [email_text(e.raw) for e in held_out]
    with tempfile.TemporaryDirectory(prefix="cscore-shard-read-") as state, \
            LocalStack(Path(state), workers=0, airflow=False, brokers=False, sim_tee=False,
                       out=lambda _: None) as stack:
        os.environ.update({k: stack.env[k] for k in ("CSCORE_S3_ENDPOINT", "CSCORE_BUCKET")})
        for var, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                           ("AWS_DEFAULT_REGION", "us-east-1")):
            os.environ.setdefault(var, value)
        from tasks import storage

        print(f"tail request {TAIL_BYTES // 1024} KiB; shards of {SHARD_MIN_ROW_GROUPS} row groups x {ROW_GROUP_SIZE}")
        print(f"{'emails':>8}{'file MB':>9}{'whole ms':>10}{'ranged ms':>11}{'x faster':>10}"
              f"{'whole KB':>10}{'ranged KB':>11}")
        for size in args.sizes:
            _one_size(storage, texts, size, args.shards)


def _one_size(storage: object, texts: list[str], size: int, shards: int) -> None:
    wrapper, batch = LocalWrapper(), f"bench-{size}"
    key = f"incoming/acme/{batch}/part-00000.parquet"
    table = pa.table({"message_id": [f"m{i}" for i in range(size)],
                      "text": [texts[i % len(texts)] for i in range(size)]})
    data, file_id = encode_part(table, wrapper, OwnerKeys.for_batch("acme", batch), tenant="acme", batch_id=batch,
                                key=key)
    storage.put_bytes(key, data)  # type: ignore[attr-defined]
    groups = -(-size // ROW_GROUP_SIZE)
    starts = sorted({(groups - SHARD_MIN_ROW_GROUPS) * i // max(1, shards - 1) for i in range(shards)})
    whole_s = ranged_s = 0.0
    ranged_bytes = 0
    with PmeKeys(wrapper) as keys:
        for start in starts:
            spec = _spec(batch, key, file_id, start, min(groups, start + SHARD_MIN_ROW_GROUPS))
            t0 = time.perf_counter()
            body = storage.get_bytes(key)  # type: ignore[attr-defined]
            hashlib.sha256(body).hexdigest()
            with EncryptedParquet(body, keys) as parquet:
                before = parquet.read_row_groups(range(spec.row_group_start, spec.row_group_end), INPUT_COLUMNS)
            t1 = time.perf_counter()
            source = storage.S3Object(key)  # type: ignore[attr-defined]
            after = read_shard(spec, source, keys)
            t2 = time.perf_counter()
            assert before.equals(after)
            whole_s, ranged_s, ranged_bytes = whole_s + t1 - t0, ranged_s + t2 - t1, ranged_bytes + source.bytes_read
    n = len(starts)
    print(f"{size:>8}{len(data) / 1e6:>9.1f}{whole_s / n * 1e3:>10.1f}{ranged_s / n * 1e3:>11.1f}"
          f"{whole_s / ranged_s:>10.1f}{len(data) / 1e3:>10.0f}{ranged_bytes / n / 1e3:>11.0f}")


def _spec(batch: str, key: str, file_id: str, start: int, end: int) -> ShardSpec:
    keys = OwnerKeys.for_batch("acme", batch)
    return ShardSpec(tenant="acme", batch_id=batch, shard_index=0, input_key=key, input_sha256="",
                     input_file_id=file_id, row_group_start=start, row_group_end=end, model_name="m", model_version=1,
                     model_digest="sha256:" + "0" * 64, owner_broker="owner", footer_key=keys.footer,
                     column_key=keys.emails, result_key=keys.results,
                     output_key=f"results/acme/{batch}/shard-00000.parquet",
                     receipt_key=f"results/acme/{batch}/shard-00000.receipt.jws")


if __name__ == "__main__":
    main()
