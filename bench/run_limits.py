"""What the per-batch limits' watchdog costs the scorer: the spam contract run with and without it, one run.

    .venv/bin/python -m bench.run_limits [--repeat 5]

Runs the published spam graph through `ContractSession` (the enclave's runner) on the held-out emails, once
with the watchdog (`enclave.limits.watched`, what the worker does) and once calling onnxruntime directly,
alternating rounds so both see the same machine load; prints the best emails/s of each and their ratio.
"""

from __future__ import annotations

import argparse
import time

from enclave import runner
from enclave.runner import ContractSession
from sdk.contracts import SPAM_CONTRACT
from sdk.corpus import default_cache_dir, fetch_corpus, load_corpus, split_corpus
from sdk.emails import email_text
from sdk.training import export_onnx, train_spam_model
from wire.contract import Contract


def _unwatched(run, limits, rows):  # type: ignore[no-untyped-def]
    return run(None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    train, held_out = split_corpus(load_corpus(fetch_corpus(default_cache_dir())), train_fraction=0.6, seed=0)
    onnx_bytes = export_onnx(train_spam_model([email_text(e.raw) for e in train], [e.label for e in train]))
    texts = [email_text(e.raw) for e in held_out]
    session = ContractSession(onnx_bytes, Contract.parse(SPAM_CONTRACT))
    watched = runner.watched
    best = {"with the watchdog": 0.0, "without": 0.0}
    for _ in range(args.repeat):
        for name, wrapper in (("with the watchdog", watched), ("without", _unwatched)):
            runner.watched = wrapper  # type: ignore[assignment]
            t0 = time.perf_counter()
            session.run({"text": texts}, len(texts))
            best[name] = max(best[name], len(texts) / (time.perf_counter() - t0))
    runner.watched = watched
    for name, rate in best.items():
        print(f"{name:>20}: {rate:,.0f} emails/s")
    print(f"ratio with/without: {best['with the watchdog'] / best['without']:.3f} ({len(texts)} emails, best of "
          f"{args.repeat})")


if __name__ == "__main__":
    main()
