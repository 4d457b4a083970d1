"""Images per second per core through the enclave's contract runner: confidential vs plaintext, and memory.

    .venv/bin/python -m bench.images [--images 2000] [--repeat 3] [--side 32]

The digits classifier (`sdk.digits`) on the owner's scans (32 x 32 PNG, every fifth a JPEG), one thread:

- ``plaintext``: what a worker does without confidentiality: read the shard's Parquet, decode, resize and
  normalise every image, run the model, write the results' Parquet;
- ``confidential``: the same with Parquet Modular Encryption on both sides (AES-GCM, keys wrapped by a local
  AES key in place of the broker: broker round trips are per batch, not per image);
- ``decode only`` and ``model only``: where the time goes.

Rates are rows per CPU second of this process (the steadier figure on a shared machine) and per wall second.
Memory: the process's peak RSS before and after scoring (`resource.getrusage`), and its growth per image.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enclave import preprocess
from enclave.pme import EncryptedParquet, PmeKeys, write_encrypted
from enclave.runner import ContractSession
from enclave.scoring import CHUNK_ROWS
from sdk.contracts import DIGITS_CONTRACT
from sdk.digits import digits_split, export_digits_onnx, train_digits_model, write_digit_files
from sdk.images import read_images
from wire.contract import Contract

ROW_GROUP = 200


class LocalWrapper:
    """AES-GCM key wrapping under local master keys: the broker's unwrap without the round trip."""

    def __init__(self) -> None:
        self.masters: dict[str, bytes] = {}

    def wrap(self, key_id: str, key: bytes) -> bytes:
        master = self.masters.setdefault(key_id, AESGCM.generate_key(bit_length=256))
        nonce = os.urandom(12)
        return nonce + AESGCM(master).encrypt(nonce, key, key_id.encode())

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        return AESGCM(self.masters[key_id]).decrypt(wrapped[:12], wrapped[12:], key_id.encode())


def rate(n: int, run: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(rows per CPU second, rows per wall second), best of `repeat`."""
    cpus, walls = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - wall)
    return n / min(cpus), n / min(walls)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    split = digits_split()
    onnx_bytes = export_digits_onnx(train_digits_model(split.train_x, split.train_y))
    contract = Contract.parse(DIGITS_CONTRACT)
    reps = -(-args.images // len(split.test_y))
    x, y = np.concatenate([split.test_x] * reps)[:args.images], np.concatenate([split.test_y] * reps)[:args.images]
    with tempfile.TemporaryDirectory(prefix="bench-images-") as folder:
        write_digit_files(x, y, Path(folder))
        table = read_images(Path(folder), contract)
    n = table.num_rows
    mean_bytes = sum(len(b) for b in table.column("image").to_pylist()) / n
    wrapper = LocalWrapper()
    plain_in = io.BytesIO()
    pq.write_table(table, plain_in, row_group_size=ROW_GROUP)
    sealed_in = write_encrypted(table, wrapper, footer_key="f", column_key="c", row_group_size=ROW_GROUP)
    session = ContractSession(onnx_bytes, contract, threads=1)
    spec = contract.inputs[0]
    before = rss_mb()

    def score(t: pa.Table) -> pa.Table:
        return pa.table(session.results(t.column("file").combine_chunks(), {"image": t.column("image").to_pylist()},
                                        None))

    def plaintext() -> bytes:
        t = pq.read_table(pa.BufferReader(plain_in.getvalue()))
        sink = io.BytesIO()
        pq.write_table(score(t), sink, row_group_size=65_536)
        return sink.getvalue()

    def confidential() -> bytes:
        with PmeKeys(wrapper) as keys:
            with EncryptedParquet(sealed_in, keys) as source:
                t = source.read()
            return keys.write(score(t), footer_key="f", column_key="c", row_group_size=65_536)

    images = table.column("image").to_pylist()
    pixels = preprocess.tensor(spec, {"image": images}, n)
    whole = n - n % CHUNK_ROWS

    def model_only() -> None:
        for i in range(0, whole, CHUNK_ROWS):
            session._run_chunk({"pixels": pixels[i:i + CHUNK_ROWS]})

    rows = {
        "plaintext (read, decode, model, write)": rate(n, plaintext, args.repeat),
        "confidential (PME in and out)": rate(n, confidential, args.repeat),
        "decode + resize + normalise only": rate(n, lambda: preprocess.tensor(spec, {"image": images}, n),
                                                 args.repeat),
        "model only (onnxruntime, 64-row chunks)": rate(whole, model_only, args.repeat),
    }
    after = rss_mb()
    print(f"{n} images ({mean_bytes:.0f} bytes each on average, 32x32 -> 8x8), 1 thread, best of {args.repeat}")
    print(f"{'path':42} {'images/CPU-s':>13} {'images/wall-s':>14}")
    for name, (cpu, wall) in rows.items():
        print(f"{name:42} {cpu:13.0f} {wall:14.0f}")
    conf, plain = rows["confidential (PME in and out)"][0], rows["plaintext (read, decode, model, write)"][0]
    print(f"confidential / plaintext (CPU)             {conf / plain:.3f}")
    print(f"peak RSS {before:.0f} MB before scoring, {after:.0f} MB after ({(after - before) * 1024 / n:.2f} KB/image)")


if __name__ == "__main__":
    main()
