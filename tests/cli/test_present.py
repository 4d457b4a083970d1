"""The owner's and the demo's summaries: TEE, label rule, confusion counts, histogram (text and PNG), advice."""

from __future__ import annotations

from pathlib import Path

import pytest

from cscore.present import confusion, histogram, histogram_lines, label_rule, plot_histogram, tee_line
from sdk.platform_text import advice


def test_histogram_bins_are_half_open_and_the_last_holds_one() -> None:
    assert histogram([0.0, 0.0999, 0.1, 0.5, 0.95, 1.0]) == [2, 1, 0, 0, 0, 1, 0, 0, 0, 2]
    lines = histogram_lines([0.05, 0.05, 0.97])
    assert lines[0].startswith("  [0.0, 0.1) ") and lines[0].endswith(" 2") and "#" * 40 in lines[0]
    assert lines[-1].startswith("  [0.9, 1.0] ") and lines[-1].endswith(" 1") and "#" * 20 in lines[-1]
    assert len(lines) == 10 and all(line.endswith(" 0") for line in lines[1:-1])


def test_confusion_counts_and_label_rule() -> None:
    assert confusion([1, 1, 0, 0, 1], [1, 0, 1, 0, 1]) == {"tp": 2, "fp": 1, "fn": 1, "tn": 1}
    rule = label_rule([0.2, 0.7, 0.51], [0, 1, 1])
    assert "spam when spam probability > 0.5" in rule and "lowest spam 0.5100" in rule and "highest ham 0.2000" in rule


def test_tee_line_says_when_the_tee_was_simulated() -> None:
    assert tee_line(["simulated", "simulated"]).startswith("SIMULATED SEV-SNP")
    assert tee_line(["amd"]) == "hardware-attested (amd root)"


@pytest.mark.parametrize(("reason", "says", "never"), [
    ("score: shard 0 failed on the worker: KbsError: 403 the batch has no grant at this broker", "new batch",
     "--resubmit"),
    ("attest: worker w1 failed attestation: measurement 00ab… not in allowed_measurements", "cscore audit show b9",
     "--resubmit"),
    ("attest: worker w1 failed attestation: tcb.snp expected >= 23, got 22", "--resubmit b9", "new batch"),
    ("score: 2 of 4 shards unfinished after 3600 s", "--resubmit b9", "new batch"),
    ("score: shard 0 failed on the worker: WorkerRefusal: InputRefused: shard row 3: email-text expects a string, "
     "found int", "new batch", "--resubmit"),
    ("score: shard 0 failed on the worker: WorkerRefusal: ShardInputError: input incoming/acme/b9/part-0.parquet: "
     "expected sha256 ab12 (from the signed manifest), got cd34", "new batch", "cscore owner register"),
    ("validate: manifest signature does not verify with the tenant key", "cscore owner register", "new batch"),
    ("finalize: something else", "--resubmit b9", "new batch"),
    ("score: shard 0 failed on the worker: WorkerRefusal: LimitExceeded: shard 0 of batch b9, model heavy:1: the "
     "model ran 64 rows for more than 64 ms, over the batch's limit of 1 ms per row set by the platform",
     "cscore_limits", "published as named"),
])
def test_advice_is_specific_to_the_refusal(reason: str, says: str, never: str) -> None:
    text = advice(reason, "b9", "acme")
    assert says in text and never not in text


@pytest.mark.parametrize("reason", [
    "finalize: something else", "score: 2 of 4 shards unfinished after 3600 s",
    "attest: worker w1 failed attestation: tcb.snp expected >= 23, got 22",
    "validate: manifest signature does not verify with the tenant key"])
def test_the_commands_advised_run_as_written(reason: str) -> None:
    """`--resubmit B` alone is refused by argparse (--tenant is required): every command advised names the tenant."""
    text = advice(reason, "b9", "acme")
    commands = text.split("`")[1::2]
    assert "cscore owner submit --resubmit b9 --tenant acme" in commands
    assert all("BATCH" not in c and not c.endswith("--tenant T") for c in commands), commands
    if "register" in text:
        assert "cscore owner register --tenant acme" in commands


def test_the_fallback_advice_word_for_word() -> None:
    assert advice("finalize: something else", "b9", "acme") == (
        "Fix the cause named above, then `cscore owner submit --resubmit b9 --tenant acme`; `cscore audit show b9` "
        "shows every step the log recorded.")


def test_plot_writes_a_png(tmp_path: Path) -> None:
    from PIL import Image

    path = plot_histogram([0.01, 0.02, 0.6, 0.99], tmp_path / "h.png", title="Batch b9: spam probability")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (700, 400)
