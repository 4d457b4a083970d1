"""`cscore owner submit FILE --numbers`: a CSV or Parquet table for a model whose card takes numeric columns.

Each kind of bad input is refused before any upload with the file, row, column, expected and found; a dry run
against a real local stack (moto and the key brokers, no Airflow) reads the card and uploads nothing; a real
submit uploads parts that decrypt, with the owner's own broker, to the file's id and numeric columns only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from enclave.pme import EncryptedParquet, PmeKeys
from enclave.signing import unverified_payload
from infra.local.stack import LocalStack
from sdk.numbers import NumbersInputError, check_numbers, read_numbers
from sdk.party import Party
from sdk.provider import Offer, publish_model
from sdk.storage import ObjectStore
from tests.stacks import storage_stack
from wire.contract import Contract

COLUMNS = ["age", "bmi", "bp"]
CONTRACT_DOC: dict[str, Any] = {
    "id_column": "patient",
    "inputs": [{"tensor": "x", "columns": COLUMNS, "dtype": "float32", "shape": [None, len(COLUMNS)],
                "preprocess": {"kind": "numbers"}}],
    "outputs": [{"tensor": "variable", "column": "progression", "kind": "value"}],
    "classes": None,
}
CONTRACT = Contract.parse(CONTRACT_DOC)
GOOD = "patient,age,bmi,bp,note\np1,0.5,22.1,80,private note\np2,-1e-3,30,95.5,another\n"


def _csv(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _refusal(path: Path) -> str:
    with pytest.raises(NumbersInputError) as caught:
        read_numbers(path, CONTRACT, "diabetes:1")
    return str(caught.value)


def test_a_good_csv_gives_the_id_as_text_and_only_the_columns_the_card_names(tmp_path: Path) -> None:
    table = read_numbers(_csv(tmp_path, GOOD), CONTRACT, "diabetes:1")
    assert table.column_names == ["patient", *COLUMNS]  # the "note" column never leaves the machine
    assert table.to_pylist() == [{"patient": "p1", "age": 0.5, "bmi": 22.1, "bp": 80.0},
                                 {"patient": "p2", "age": -1e-3, "bmi": 30.0, "bp": 95.5}]


def test_a_missing_column_is_refused_naming_it(tmp_path: Path) -> None:
    path = _csv(tmp_path, "patient,age,bp\np1,1,2\n")
    assert _refusal(path) == (f"{path}: model diabetes:1 reads columns ['patient', 'age', 'bmi', 'bp'], column "
                              "'bmi' is missing (found ['patient', 'age', 'bp'])")


def test_a_non_numeric_value_is_refused_with_row_line_and_column(tmp_path: Path) -> None:
    path = _csv(tmp_path, GOOD + "p3,41,twenty,70,x\n")
    assert _refusal(path) == (f"{path}: 1 field(s) refused for diabetes:1; nothing was uploaded:\n"
                              "  data.csv row 3 (line 4), column 'bmi': expected a number, found 'twenty'")


def test_a_row_of_the_wrong_width_is_refused(tmp_path: Path) -> None:
    path = _csv(tmp_path, GOOD + "p3,41,22\n")
    assert _refusal(path) == (f"{path}: 1 field(s) refused for diabetes:1; nothing was uploaded:\n"
                              "  data.csv row 3 (line 4): expected 5 fields (the header's), found 3")


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-Infinity"])
def test_nan_and_infinities_are_refused_as_the_contract_says(tmp_path: Path, text: str) -> None:
    path = _csv(tmp_path, GOOD + f"p3,41,{text},70,x\n")
    assert _refusal(path) == (f"{path}: 1 field(s) refused for diabetes:1; nothing was uploaded:\n"
                              "  data.csv row 3 (line 4), column 'bmi': expected a finite number (the model's "
                              f"contract refuses NaN and infinities), found {text!r}")


def test_an_empty_field_and_a_value_beyond_float32_are_refused(tmp_path: Path) -> None:
    path = _csv(tmp_path, GOOD + "p3,,1e39,70,x\n")
    assert _refusal(path) == (f"{path}: 2 field(s) refused for diabetes:1; nothing was uploaded:\n"
                              "  data.csv row 3 (line 4), column 'age': expected a number, found an empty field\n"
                              "  data.csv row 3 (line 4), column 'bmi': expected a number within float32's range "
                              "(the model reads float32, at most 3.402823e+38), found '1e39'")


def test_empty_and_duplicate_ids_are_refused(tmp_path: Path) -> None:
    path = _csv(tmp_path, GOOD + ",1,2,3,x\np1,1,2,3,x\n")
    assert _refusal(path) == (f"{path}: 2 field(s) refused for diabetes:1; nothing was uploaded:\n"
                              "  data.csv row 3 (line 4), column 'patient': expected a non-empty id, found an "
                              "empty field\n"
                              "  data.csv row 4 (line 5), column 'patient': expected a unique id, found 'p1' again "
                              "(first at row 1)")


def test_a_parquet_file_is_checked_value_by_value_with_its_types(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"patient": [7, 8, 9], "age": [1.0, float("nan"), 2.0], "bmi": [1, 2, None],
                             "bp": ["1", "2", "3"]}), path)
    report = check_numbers(path, CONTRACT, "diabetes:1")
    assert (report.rows, report.refused) == (3, 5)
    assert report.errors == (
        "data.parquet row 1, column 'bp': expected a number, found '1'",
        "data.parquet row 2, column 'age': expected a finite number (the model's contract refuses NaN and "
        "infinities), found nan (float)",
        "data.parquet row 2, column 'bp': expected a number, found '2'",
        "data.parquet row 3, column 'bmi': expected a number, found null",
        "data.parquet row 3, column 'bp': expected a number, found '3'")


def test_a_model_that_does_not_take_numbers_is_named(tmp_path: Path) -> None:
    images = Contract.parse({"id_column": "file", "inputs": [
        {"tensor": "pixels", "column": "image", "dtype": "float32", "shape": [None, 4],
         "preprocess": {"kind": "image", "mode": "L", "width": 2, "height": 2, "resample": "box", "scale": 1.0,
                        "offset": 0.0, "layout": "flat", "max_bytes": 1 << 20, "max_pixels": 1 << 22,
                        "formats": ["png"]}}],
        "outputs": [{"tensor": "label", "column": "label", "kind": "label", "dtype": "int64"}], "classes": None})
    with pytest.raises(NumbersInputError, match=r"^model digits:1: expected a model that takes numeric columns, "
                       r"its contract takes \['image'\]; choose a tabular model"):
        read_numbers(_csv(tmp_path, GOOD), images, "digits:1")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with storage_stack(tmp_path_factory.mktemp("numbers-submit")) as running:
        yield running


@pytest.fixture(scope="module")
def published(stack: LocalStack) -> str:
    """A provider's regression model on three numeric columns, its card in the stack's storage."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(7)
    x = rng.normal(size=(40, len(COLUMNS)))
    onnx_model = convert_sklearn(LinearRegression().fit(x, x @ [1.0, 2.0, 3.0]),
                                 initial_types=[("x", FloatTensorType([None, len(COLUMNS)]))], target_opset=17)
    saved = dict(os.environ)
    os.environ.update(stack.env)
    try:
        provider = Party.from_env("provider")
        publish_model(bytes(onnx_model.SerializeToString()), "progress", provider=provider, store=ObjectStore(),
                      allowed_measurements=["00" * 48], offer=Offer(task="regression", contract=CONTRACT_DOC))
        Party.from_env("owner").trust_provider(provider.public_key())  # as `cscore owner trust-provider` does
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return "progress:1"


def _cscore(stack: LocalStack, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cscore", *argv], env=stack.child_env(), capture_output=True,
                          text=True, timeout=300)


def test_a_dry_run_reads_the_card_reports_each_refusal_and_uploads_nothing(
        stack: LocalStack, published: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in stack.env.items():
        monkeypatch.setenv(name, value)
    store = ObjectStore()
    before = set(store.keys("incoming/"))
    path = _csv(tmp_path, GOOD + "p3,41,twenty,70,x\n")
    dry = _cscore(stack, "owner", "submit", str(path), "--numbers", "--model", published, "--tenant", "acme",
                  "--dry-run", "--json")
    assert dry.returncode == 2, dry.stderr
    assert json.loads(dry.stdout) == {
        "input": str(path), "model": published, "ok": False, "rows": 3, "columns": COLUMNS, "refused": 1,
        "errors": ["data.csv row 3 (line 4), column 'bmi': expected a number, found 'twenty'"]}
    good = _cscore(stack, "owner", "submit", str(_csv(tmp_path, GOOD, "good.csv")), "--numbers", "--model",
                   published, "--tenant", "acme", "--dry-run")
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip() == (f"2 row(s) of 3 numeric column(s) for {published}, 0 field(s) refused: ready to "
                                   "submit (dry run: nothing uploaded, no key created)")
    refused = _cscore(stack, "owner", "submit", str(path), "--numbers", "--model", published, "--tenant", "acme",
                      "--measurement", "00" * 48)
    assert refused.returncode == 2
    assert "data.csv row 3 (line 4), column 'bmi': expected a number, found 'twenty'" in refused.stderr
    assert set(store.keys("incoming/")) == before  # neither the dry run nor the refused submit uploaded a byte


def test_a_submitted_table_decrypts_to_the_files_id_and_numeric_columns(
        stack: LocalStack, published: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in stack.env.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "patients.parquet"
    pq.write_table(pa.table({"patient": ["a", "b", "c"], "age": [1, 2, 3], "bmi": [0.25, -1.5, 1e3],
                             "bp": [9.0, 8.0, 7.0], "name": ["canary-numbers-1", "x", "y"]}), path)
    sent = _cscore(stack, "owner", "submit", str(path), "--numbers", "--model", published, "--tenant", "acme",
                   "--measurement", "00" * 48, "--json")
    assert sent.returncode == 0, sent.stderr
    batch = json.loads(sent.stdout)
    assert batch["rows"] == 3 and batch["tenant"] == "acme"
    store, owner = ObjectStore(), Party.from_env("owner")
    manifest = unverified_payload(store.get(batch["manifest_key"]).decode(), what="manifest")
    got: list[dict[str, Any]] = []
    with PmeKeys(owner.broker().for_batch(batch["batch_id"])) as keys:
        for obj in manifest["objects"]:
            data = store.get(obj["key"])
            assert b"canary-numbers-1" not in data
            with EncryptedParquet(data, keys) as part:
                got.extend(part.read().to_pylist())
    assert got == [{"patient": "a", "age": 1.0, "bmi": 0.25, "bp": 9.0},
                   {"patient": "b", "age": 2.0, "bmi": -1.5, "bp": 8.0},
                   {"patient": "c", "age": 3.0, "bmi": 1e3, "bp": 7.0}]
