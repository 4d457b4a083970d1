"""Throughput of the spam model: sklearn vs the enclave's ONNX ModelSession, and email parsing.

    .venv/bin/python -m bench.scoring [--repeat 3] [--max-features 20000]

Trains on the corpus' 60 % split and scores the held-out 40 % (2,418 emails). Prints emails/s (best of
``--repeat`` runs) as a small table. The corpus is fetched into $CSCORE_CACHE_DIR (default ~/.cache/cscore).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np

from enclave.scoring import CHUNK_ROWS, ModelSession
from sdk.corpus import default_cache_dir, fetch_corpus, load_corpus, split_corpus
from sdk.emails import email_text
from sdk.training import MAX_FEATURES, export_onnx, sklearn_spam_probability, train_spam_model


def best_rate(n: int, run: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(items per wall-clock second, items per CPU second of this process), fastest of ``repeat`` runs.

    CPU seconds are the steadier figure on a shared machine; with 2 threads they add up both threads.
    """
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return n / min(walls), n / min(cpus)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--max-features", type=int, default=MAX_FEATURES)
    args = parser.parse_args(argv)

    corpus = load_corpus(fetch_corpus(default_cache_dir()))
    train, held_out = split_corpus(corpus, train_fraction=0.6, seed=0)
    raws = [e.raw for e in held_out]
    parse_rate = best_rate(len(raws), lambda: [email_text(r) for r in raws], args.repeat)
    texts = [email_text(r) for r in raws]
    labels = np.array([e.label for e in held_out])

    pipeline = train_spam_model(
        [email_text(e.raw) for e in train], [e.label for e in train], max_features=args.max_features
    )
    onnx_bytes = export_onnx(pipeline)
    reference = sklearn_spam_probability(pipeline, texts)

    rows = [("email_text (parse + decode)", parse_rate, "")]
    rows.append(
        (
            "sklearn predict_proba",
            best_rate(len(texts), lambda: pipeline.predict_proba(texts), args.repeat),
            f"acc {np.mean((reference > 0.5) == labels):.4f}",
        )
    )
    for threads in (1, 2):
        session = ModelSession(onnx_bytes, threads=threads)
        probability, label = session.score(texts)
        rate = best_rate(len(texts), lambda s=session: s.score(texts), args.repeat)
        note = f"max|dp| {np.abs(probability - reference).max():.1e}, acc {np.mean(label == labels):.4f}"
        rows.append((f"ONNX ModelSession, {threads} thread(s)", rate, note))

    vocabulary = len(pipeline.named_steps["tfidf"].vocabulary_)
    print(
        f"held-out emails: {len(texts)}; vocabulary: {vocabulary}; chunk rows: {CHUNK_ROWS}; "
        f"cpus: {os.cpu_count()}; model: {len(onnx_bytes) / 1e6:.2f} MB"
    )
    print(f"{'what':<34}{'emails/s':>10}{'per cpu-s':>11}  notes")
    for what, (rate, cpu_rate), note in rows:
        print(f"{what:<34}{rate:>10.0f}{cpu_rate:>11.0f}  {note}")


if __name__ == "__main__":
    main()
