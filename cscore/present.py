"""What the owner's and the demo's summaries show: the TEE, the label rule and a score histogram.

Pure functions over plain values (no I/O except `plot_histogram`, which writes one PNG).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

BINS = 10  # histogram bins of width 0.1 over [0, 1]
BAR = 40  # widest terminal bar, in characters


def tee_line(roots: Sequence[str]) -> str:
    """Which TEE signed the receipts, said plainly when it was the simulated one."""
    if "simulated" in roots:
        return ("SIMULATED SEV-SNP (development only: no hardware protected this batch; "
                "a production owner refuses it without --accept-simulated)")
    return f"hardware-attested ({', '.join(sorted(set(roots))) or 'unknown'} root)"


def label_rule(probabilities: Sequence[float], labels: Sequence[int]) -> str:
    """The threshold that made the labels: the model's own decision, with the observed boundary."""
    spam = [p for p, y in zip(probabilities, labels, strict=True) if y == 1]
    ham = [p for p, y in zip(probabilities, labels, strict=True) if y == 0]
    return label_rule_seen(min(spam) if spam else None, max(ham) if ham else None)


def label_rule_seen(lowest_spam: float | None, highest_ham: float | None) -> str:
    """`label_rule` from the boundary seen (None: no email of that label), for results read in parts."""
    seen = []
    if lowest_spam is not None:
        seen.append(f"lowest spam {lowest_spam:.4f}")
    if highest_ham is not None:
        seen.append(f"highest ham {highest_ham:.4f}")
    return "spam when spam probability > 0.5 (the model's own label output)" + (
        f"; observed: {', '.join(seen)}" if seen else "")


def confusion(predicted: Sequence[int], truth: Sequence[int]) -> dict[str, int]:
    """{"tp", "fp", "fn", "tn"} for 0/1 labels, spam = 1."""
    pairs = list(zip(predicted, truth, strict=True))
    return {"tp": sum(1 for p, t in pairs if p == 1 and t == 1), "fp": sum(1 for p, t in pairs if p == 1 and t == 0),
            "fn": sum(1 for p, t in pairs if p == 0 and t == 1), "tn": sum(1 for p, t in pairs if p == 0 and t == 0)}


def histogram(probabilities: Sequence[float], bins: int = BINS) -> list[int]:
    """Counts per bin [i/bins, (i+1)/bins); the last bin includes 1.0."""
    counts = [0] * bins
    for p in probabilities:
        counts[min(int(float(p) * bins), bins - 1)] += 1
    return counts


def histogram_lines(probabilities: Sequence[float], bins: int = BINS) -> list[str]:
    """The spam-probability histogram for a terminal: one line per bin, half-open ranges, bar and count."""
    return histogram_lines_of(histogram(probabilities, bins))


def histogram_lines_of(counts: Sequence[int]) -> list[str]:
    """`histogram_lines` from counts per bin (as `histogram` makes them), for results read in parts."""
    bins = len(counts)
    top = max(counts) or 1
    lines = []
    for i, n in enumerate(counts):
        lo, hi = i / bins, (i + 1) / bins
        close = "]" if i == bins - 1 else ")"
        bar = "#" * (round(n / top * BAR) if n else 0)
        lines.append(f"  [{lo:.1f}, {hi:.1f}{close} {bar:<{BAR}} {n}")
    return lines


def plot_histogram(probabilities: Sequence[float], path: Path, *, title: str) -> Path:
    """Write the histogram as a PNG (matplotlib, no display needed); returns the path."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never a window
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        ax.hist(list(probabilities), bins=[i / BINS for i in range(BINS + 1)], color="#3a7", edgecolor="#222")
        ax.axvline(0.5, color="#c33", linestyle="--", label="label threshold 0.5")
        ax.set(title=title, xlabel="spam probability", ylabel="emails", xlim=(0, 1))
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
