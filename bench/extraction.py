"""How many queries a paying owner needs to extract the spam model, with and without the card's rounding.

    .venv/bin/python -m bench.extraction [--max-features 20000] [--digits none 6 4 2 1 0]

The attack (equation solving, Tramèr et al., USENIX Security 2016): for TF-IDF + logistic regression, an
email made of one vocabulary word has the unit vector of that word as features, so its logit is
``coef[word] + intercept``; the empty email gives the intercept. V + 1 queries recover every coefficient.
The enclave answers through `enclave.worker._precision` (the card's `output.probability_digits`), exactly
as a worker would; this bench scores with the same ONNX `ModelSession`.

Prints, per precision: queries used, coefficients recovered (within 1 % or 0.01 absolute), median absolute
error of the recovered ones, and the rows a quota must allow for the full extraction.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from enclave.scoring import ModelSession
from enclave.worker import _precision
from sdk.corpus import default_cache_dir, fetch_corpus, load_corpus, split_corpus
from sdk.emails import email_text
from sdk.training import MAX_FEATURES, export_onnx, train_spam_model


def _logit(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(p) - np.log1p(-p)


def attack(session: ModelSession, words: list[str], digits: int | None) -> np.ndarray:
    """Estimated coefficients (NaN where the answers carry no magnitude) from V + 1 one-word queries."""
    probabilities, _ = session.score(["", *words])
    answered = np.asarray(_precision(probabilities, digits).to_numpy(zero_copy_only=False), dtype=np.float64)
    logits = _logit(answered)
    estimate = logits[1:] - logits[0]
    estimate[~np.isfinite(estimate)] = np.nan
    return estimate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-features", type=int, default=MAX_FEATURES)
    parser.add_argument("--digits", nargs="+", default=["none", "6", "4", "2", "1", "0"])
    args = parser.parse_args(argv)

    corpus = load_corpus(fetch_corpus(default_cache_dir()))
    train, _ = split_corpus(corpus, train_fraction=0.6, seed=0)
    pipeline = train_spam_model([email_text(e.raw) for e in train], [e.label for e in train],
                                max_features=args.max_features)
    vocabulary = pipeline.named_steps["tfidf"].vocabulary_
    words = sorted(vocabulary, key=vocabulary.__getitem__)
    truth = pipeline.named_steps["clf"].coef_[0][[vocabulary[w] for w in words]]
    session = ModelSession(export_onnx(pipeline))
    print(f"vocabulary {len(words)} words; queries per attack {len(words) + 1} (one email each)")
    print(f"{'probability digits':<20}{'recovered':>12}{'median |err|':>14}  rows a quota must allow")
    for name in args.digits:
        digits = None if name == "none" else int(name)
        estimate = attack(session, words, digits)
        ok = np.isfinite(estimate) & (np.abs(estimate - truth) <= np.maximum(0.01, 0.01 * np.abs(truth)))
        errors = np.abs(estimate - truth)[np.isfinite(estimate)]
        median = float(np.median(errors)) if errors.size else math.nan
        label = "full float32" if digits is None else ("labels only" if digits == 0 else f"{digits}")
        print(f"{label:<20}{ok.mean():>11.1%}{median:>14.2e}  {len(words) + 1}")


if __name__ == "__main__":
    main()
