"""`cscore owner results`' summary, read from the verified results file a row group at a time, is the summary of
the whole table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cscore.cli import _spam_results
from cscore.present import histogram, label_rule


def test_summary_read_in_row_groups_matches_the_whole_table(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    probabilities = [0.0, 0.93, 0.12, 0.51, 0.49, 1.0, 0.0, 0.7]
    labels = [0, 1, 0, 1, 0, 1, 0, 1]
    flags = ["", "charset", "", "", "x; y", "", "", ""]
    path = tmp_path / "results.parquet"
    pq.write_table(pa.table({"message_id": [f"m{i}" for i in range(8)], "spam_probability": probabilities,
                             "label": labels, "flags": flags}), path, row_group_size=3)
    results = SimpleNamespace(path=path, rows=8, columns=["message_id", "spam_probability", "label", "flags"],
                              receipts=[], measurements=["ab"])
    args = argparse.Namespace(batch="b-1", out=path, plot=None, json=True)
    assert _spam_results(args, results) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["histogram"] == histogram(probabilities)
    assert summary["label_rule"] == label_rule(probabilities, labels)
    assert "highest ham 0.4900" in summary["label_rule"] and "lowest spam 0.5100" in summary["label_rule"]
    assert (summary["emails_scored"], summary["spam_found"], summary["emails_flagged"]) == (8, 4, 2)
