"""The enclave's TF-IDF rewrite (`enclave.tfidf_path`) vs the published graph vs sklearn, in one process.

    .venv/bin/python -m bench.scoring_rewrite [--repeat 5] [--copies 1]

Scores the held-out emails (`--copies` times over) three ways on one thread: sklearn's `predict_proba`, the
published ONNX graph run unmodified by onnxruntime (`ModelSession(rewrite=False)`), and the same session with
the rewrite the enclave derives at load (`ModelSession()`, the default). Checks the rewrite's labels and
probabilities bit for bit against the unmodified graph on every email, and prints emails/s of each (best of
`--repeat`, by wall time and by this process's CPU time: the CPU figure is the steadier one on a shared
machine) and its ratio to sklearn's.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np

from enclave.scoring import ModelSession
from sdk.corpus import default_cache_dir, fetch_corpus, load_corpus, split_corpus
from sdk.emails import email_text
from sdk.training import export_onnx, train_spam_model


def best_rates(n: int, run: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(emails/s by wall time, emails/s by process CPU time), each the best of `repeat` runs."""
    walls, cpus = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        run()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return n / min(walls), n / min(cpus)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--copies", type=int, default=1, help="score the held-out emails this many times over")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from threadpoolctl import threadpool_limits

    train, held_out = split_corpus(load_corpus(fetch_corpus(default_cache_dir())), train_fraction=0.6, seed=0)
    pipeline = train_spam_model([email_text(e.raw) for e in train], [e.label for e in train])
    onnx_bytes = export_onnx(pipeline)
    texts = [email_text(e.raw) for e in held_out] * args.copies
    t0 = time.perf_counter()
    fast = ModelSession(onnx_bytes, threads=1)
    load_s = time.perf_counter() - t0
    plain = ModelSession(onnx_bytes, threads=1, rewrite=False)
    if fast.rewrite is None:
        raise SystemExit("the rewrite was not derived for this model: nothing to compare")
    exact = all(np.array_equal(a.view(np.uint8), b.view(np.uint8))
                for a, b in zip(fast.score(texts), plain.score(texts), strict=True))
    with threadpool_limits(limits=1):
        rates = {
            "sklearn predict_proba": best_rates(len(texts), lambda: pipeline.predict_proba(texts), args.repeat),
            "published graph, unmodified (rewrite=False)": best_rates(len(texts), lambda: plain.score(texts),
                                                                       args.repeat),
            "enclave session with the rewrite (default)": best_rates(len(texts), lambda: fast.score(texts),
                                                                      args.repeat),
        }
    print(f"{len(texts)} held-out emails; rewrite derived in {load_s:.2f} s (session load included); "
          f"bit-identical to the unmodified graph on every email: {exact}")
    base_wall, base_cpu = rates["sklearn predict_proba"]
    print(f"{'what':<46}{'wall/s':>9}{'/ sklearn':>11}{'cpu/s':>9}{'/ sklearn':>11}")
    for what, (wall, cpu) in rates.items():
        print(f"{what:<46}{wall:>9.0f}{wall / base_wall:>11.2f}{cpu:>9.0f}{cpu / base_cpu:>11.2f}")


if __name__ == "__main__":
    main()
