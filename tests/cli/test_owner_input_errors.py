"""The owner's bad input gets a clear error naming the file and what was wrong, and nothing is uploaded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _cscore(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # An unreachable endpoint: any upload attempt would fail loudly instead of the input check.
    env = {"PATH": "/usr/bin:/bin", "CSCORE_S3_ENDPOINT": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1",
           "CSCORE_OWNER_BROKER_URL": "http://127.0.0.1:9"}
    return subprocess.run([sys.executable, "-m", "cscore", "--state-dir", str(cwd / "state"), *args],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def test_submitting_a_picture_names_the_file_and_what_it_is(tmp_path: Path) -> None:
    picture = tmp_path / "inbox" / "cat.png"
    picture.parent.mkdir()
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    result = _cscore("owner", "submit", str(picture.parent), "--model", "spam-filter", "--tenant", "acme",
                     cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "cat.png" in result.stderr and "PNG" in result.stderr
    assert "Traceback" not in result.stderr


def test_submitting_an_empty_folder_says_what_was_expected(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = _cscore("owner", "submit", str(tmp_path / "empty"), "--model", "spam-filter", "--tenant", "acme",
                     cwd=tmp_path)
    assert result.returncode == 2
    assert "holds no files; expected an email source" in result.stderr


@pytest.mark.parametrize("content", [b"a,b,c\n1,2,3\n", b"[1, 2, 3]"])
def test_submitting_non_email_text_is_refused(tmp_path: Path, content: bytes) -> None:
    data = tmp_path / "data.jsonl"
    data.write_bytes(content)
    result = _cscore("owner", "submit", str(data), "--model", "spam-filter", "--tenant", "acme", cwd=tmp_path)
    assert result.returncode == 2
    assert "data.jsonl" in result.stderr and "expected" in result.stderr
