"""An input path that is not a regular file or folder (/dev/null, a named pipe) is refused saying what it is, what
`cscore owner submit` takes, and what to do: not "no such file"."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sdk.images import ImageInputError, image_files
from sdk.numbers import NumbersInputError, read_numbers
from wire.contract import Contract

NUMBERS = Contract.parse({
    "id_column": "patient",
    "inputs": [{"tensor": "x", "columns": ["age"], "dtype": "float32", "shape": [None, 1],
                "preprocess": {"kind": "numbers"}}],
    "outputs": [{"tensor": "variable", "column": "progression", "kind": "value"}],
    "classes": None,
})
REPO = Path(__file__).resolve().parents[2]  # the code under test, wherever the venv's editable install points


def _cscore(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # An unreachable endpoint: any upload attempt would fail loudly instead of the input check.
    env = {"PATH": "/usr/bin:/bin", "CSCORE_S3_ENDPOINT": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1",
           "CSCORE_OWNER_BROKER_URL": "http://127.0.0.1:9", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "cscore", "--state-dir", str(cwd / "state"), *args],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_dev_null_is_named_a_character_device_with_what_submit_takes(tmp_path: Path, dry_run: list[str]) -> None:
    result = _cscore("owner", "submit", "/dev/null", "--model", "spam-filter", "--tenant", "acme", *dry_run,
                     cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr == ("cscore: error: /dev/null: expected an email source (.eml/.txt RFC 822 message, mbox, "
                             "JSON lines or Parquet) or a folder of them, found a character device; save the input "
                             "as a regular file (or a folder of them) and give that path\n")


def test_a_named_pipe_is_named_and_never_read(tmp_path: Path) -> None:
    # Reading a FIFO nobody writes to would hang: it must be refused by what it is.
    result = _cscore("owner", "submit", str(_fifo(tmp_path)), "--model", "spam-filter", "--tenant", "acme",
                     cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "pipe: expected an email source" in result.stderr and "found a named pipe (FIFO)" in result.stderr


def test_a_missing_path_still_says_so_and_to_check_it(tmp_path: Path) -> None:
    result = _cscore("owner", "submit", "nope", "--model", "spam-filter", "--tenant", "acme", cwd=tmp_path)
    assert result.returncode == 2
    assert "nope: expected an email source" in result.stderr
    assert "found no such file or folder; check the path" in result.stderr


def test_images_and_numbers_name_what_the_path_is(tmp_path: Path) -> None:
    with pytest.raises(ImageInputError) as images:
        image_files(_fifo(tmp_path))
    assert str(images.value) == (f"{tmp_path / 'pipe'}: expected a folder of PNG or JPEG images (or one image file), "
                                 "found a named pipe (FIFO); save the input as a regular file (or a folder of them) "
                                 "and give that path")
    with pytest.raises(NumbersInputError) as numbers:
        read_numbers(Path("/dev/null"), NUMBERS, "diabetes:1")
    assert str(numbers.value) == ("/dev/null: expected a CSV or Parquet file of the columns diabetes:1 reads "
                                  "(['patient', 'age']), found a character device; save the input as a regular file "
                                  "(or a folder of them) and give that path")
    with pytest.raises(NumbersInputError, match="found a folder;"):
        read_numbers(tmp_path, NUMBERS, "diabetes:1")


def test_a_folders_bad_file_is_named_with_the_dry_run_that_checks_every_file(tmp_path: Path,
                                                                             owner_inputs: Path) -> None:
    folder = tmp_path / "my mail"
    folder.mkdir()
    shutil.copy(owner_inputs / "b64-padding.eml", folder / "a-good.eml")
    shutil.copy(owner_inputs / "already-pme-encrypted.parquet", folder / "b-encrypted.parquet")
    shutil.copy(owner_inputs / "surrogate-message-id.jsonl", folder / "c-surrogate.jsonl")
    result = _cscore("owner", "submit", str(folder), "--model", "spam-filter", "--tenant", "acme", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    first, advice = result.stderr.removeprefix("cscore: error: ").split(". Nothing was uploaded; ")
    assert first.startswith(f"{folder / 'b-encrypted.parquet'}: expected an email source")
    assert "found Parquet encrypted with Parquet Modular Encryption" in first
    command = f"cscore owner submit '{folder}' --dry-run --tenant acme"
    assert advice == f"to check every file in '{folder}' before anything is uploaded (each refused file listed): " \
                     f"{command}\n"
    # The advice is true: that dry run names both bad files.
    checked = _cscore(*shlex.split(command)[1:], cwd=tmp_path)
    assert checked.returncode == 2
    assert "b-encrypted.parquet: REFUSED" in checked.stdout and "c-surrogate.jsonl: REFUSED" in checked.stdout


def test_a_single_bad_file_gets_no_folder_advice(tmp_path: Path, owner_inputs: Path) -> None:
    result = _cscore("owner", "submit", str(owner_inputs / "surrogate-message-id.jsonl"), "--model", "spam-filter",
                     "--tenant", "acme", cwd=tmp_path)
    assert result.returncode == 2 and "lone surrogate" in result.stderr and "--dry-run" not in result.stderr
