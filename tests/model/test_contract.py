"""Model contracts: the card's strict parse, the graph check (publish time and load time), the runner's
bits for text and images, the preprocessing's refusals, and the owner's per-file checks."""

from __future__ import annotations

import copy
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pyarrow as pa
import pytest
from PIL import Image

from enclave.preprocess import InputRefused
from enclave.runner import ContractSession, OutputRefused
from enclave.scoring import ModelLoadError, ModelSession
from sdk.contracts import DIGITS_CONTRACT, DIGITS_TASK, SPAM_CONTRACT, contract_mismatch
from sdk.digits import digit_image, digits_split, export_digits_onnx, model_inputs, train_digits_model
from sdk.images import ImageInputError, check_images, read_images
from sdk.provider import ModelError, Offer, publish_model
from wire.card import CARD_TYPE, ModelCard
from wire.contract import Contract
from wire.errors import FormatError

from .conftest import TrainedModel


def _bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


@pytest.fixture(scope="module")
def digits() -> tuple[Any, bytes, Any]:
    split = digits_split()
    model = train_digits_model(split.train_x, split.train_y)
    return split, export_digits_onnx(model), model


@pytest.fixture(scope="module")
def digit_files(digits: tuple[Any, bytes, Any]) -> tuple[list[str], list[bytes], list[int]]:
    split = digits[0]
    names, data = [], []
    for i, pixels in enumerate(split.test_x[:150]):
        fmt = "JPEG" if i % 5 == 4 else "PNG"
        names.append(f"scan-{i:04d}.{fmt.lower()}")
        data.append(digit_image(pixels, fmt))
    return names, data, [int(y) for y in split.test_y[:150]]


def _card(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": CARD_TYPE, "name": "digits", "version": 1, "digest": "sha256:" + "0" * 64,
                           "object_key": "models/digits/1/model.onnx", "protection": "none", "task": DIGITS_TASK,
                           "contract": copy.deepcopy(DIGITS_CONTRACT)}
    doc.update(changes)
    return doc


# -- the card's contract: strict parse ------------------------------------------------------------------


def test_both_shipped_contracts_parse_and_round_trip() -> None:
    for doc in (SPAM_CONTRACT, DIGITS_CONTRACT):
        contract = Contract.parse(doc)
        assert Contract.parse(contract.to_json()) == contract
    assert Contract.parse(SPAM_CONTRACT).result_columns == ("message_id", "spam_probability", "label")
    card = ModelCard.parse(_card(metrics={"accuracy": 0.97}, price={"currency": "EUR", "per_1000_rows": 0.5}))
    assert (card.task, card.metrics, card.contract.input_columns) == (DIGITS_TASK, {"accuracy": 0.97}, ("image",))


def _contract_with(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(DIGITS_CONTRACT)
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is _DELETE:
        del node[last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return doc


_DELETE = object()


@pytest.mark.parametrize(("path", "value", "field"), [
    ("inputs.0.preprocess.kind", "python-code", "card.contract.inputs[0].preprocess.kind"),
    ("inputs.0.preprocess.width", 9, "card.contract.inputs[0].shape"),  # 81 pixels, the shape says 64
    ("inputs.0.preprocess.mode", "CMYK", "card.contract.inputs[0].preprocess.mode"),
    ("inputs.0.preprocess.max_bytes", 0, "card.contract.inputs[0].preprocess.max_bytes"),
    ("inputs.0.preprocess.formats", ["png", "pdf"], "card.contract.inputs[0].preprocess.formats"),
    ("inputs.0.preprocess.scale", float("nan"), "card.contract.inputs[0].preprocess.scale"),
    ("inputs.0.preprocess.shell", "rm -rf", "card.contract.inputs[0].preprocess.shell"),
    ("inputs.0.dtype", "float64", "card.contract.inputs[0].dtype"),
    ("inputs.0.shape", [1, 64], "card.contract.inputs[0].shape"),
    ("inputs.0.column", "file", "card.contract.inputs[0].column"),  # the id column is not an input
    ("outputs.0.kind", "class-name", "card.contract.outputs[0].kind"),
    ("outputs.1.column", "class", "card.contract.outputs"),  # two outputs into one column
    ("outputs.1.column", "model_digest", "card.contract.outputs[1].column"),  # the enclave's own column
    ("outputs.0.column", "Class Name", "card.contract.outputs[0].column"),
    ("classes", None, "card.contract.outputs[0].kind"),  # 'class' needs class names
    ("classes", ["0", "0"], "card.contract.classes"),
    ("inputs", [], "card.contract.inputs"),
    ("id_column", _DELETE, "card.contract.id_column"),
])
def test_a_malformed_contract_is_refused_naming_the_field(path: str, value: Any, field: str) -> None:
    with pytest.raises(FormatError) as caught:
        ModelCard.parse(_card(contract=_contract_with(path, value)))
    assert caught.value.field == field


def test_probability_class_index_beyond_the_classes_is_refused() -> None:
    doc = copy.deepcopy(SPAM_CONTRACT)
    doc["outputs"][0]["class_index"] = 2
    with pytest.raises(FormatError, match=r"card.contract.outputs\[0\].class_index: expected 0..1"):
        Contract.parse(doc)


@pytest.mark.parametrize(("changes", "field"), [
    ({"type": "cscore.model-card/v1"}, "card.type"),
    ({"task": "mind-reading"}, "card.task"),
    ({"contract": None}, "card.contract"),
    ({"schema": {"inputs": ["text"]}}, "card.schema"),  # v1's field: unknown in v2
    ({"metrics": {"accuracy": "high"}}, "card.metrics"),
    ({"price": {"currency": "euro", "per_1000_rows": 1}}, "card.price"),
    ({"price": {"currency": "EUR", "per_1000_rows": -1}}, "card.price"),
])
def test_card_fields_are_strict(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(FormatError) as caught:
        ModelCard.parse(_card(**changes))
    assert caught.value.field == field
    if field == "card.type":
        assert "publish the model again" in str(caught.value)


# -- the contract against the graph: publish time and load time -----------------------------------------


def _mismatching(change: str) -> dict[str, Any]:
    doc = copy.deepcopy(DIGITS_CONTRACT)
    if change == "tensor":
        doc["inputs"][0]["tensor"] = "image"
    elif change == "output":
        doc["outputs"][1]["tensor"] = "scores"
    elif change == "classes":
        doc["classes"] = ["0", "1", "2"]
    elif change == "size":
        doc["inputs"][0]["preprocess"].update(width=7, height=9)
        doc["inputs"][0]["shape"] = [None, 63]
    elif change == "kind":
        doc["outputs"][0]["kind"] = "value"
    return doc


MISMATCHES = [
    ("tensor", r"inputs: the contract feeds \['image'\], the graph takes \['pixels'\]"),
    ("output", r"output 'scores' \(-> column 'probabilities'\): not among the graph's outputs"),
    ("classes", r"output 'probabilities' \(probabilities\): the contract names 3 classes, the graph declares 10"),
    ("size", r"input 'pixels': dimension 1 is 63 in the contract, 64 in the graph"),
    ("kind", r"output 'label' \(value\): expected a tensor of float32 or float64, the graph declares int64"),
]


@pytest.mark.parametrize(("change", "message"), MISMATCHES)
def test_publish_refuses_a_contract_that_does_not_match_the_graph(digits: tuple[Any, bytes, Any], change: str,
                                                                  message: str) -> None:
    class Untouchable:  # the refusal comes before any key is created or any byte uploaded
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"publish touched {name} before checking the contract")

    offer = Offer(task=DIGITS_TASK, contract=_mismatching(change))
    with pytest.raises(ModelError, match="contract does not match the ONNX graph: " + message):
        publish_model(digits[1], "digits", provider=Untouchable(), store=Untouchable(),  # type: ignore[arg-type]
                      allowed_measurements=["00"], offer=offer)


def test_an_empty_contract_is_refused_not_replaced_by_the_spam_filters(digits: tuple[Any, bytes, Any]) -> None:
    """`--contract c.json` holding `{}` published the model under the spam filter's contract (an empty dict is
    falsy): only a contract left out takes the default."""
    class Untouchable:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"publish touched {name} before checking the contract")

    with pytest.raises(ModelError) as refused:
        publish_model(digits[1], "digits", provider=Untouchable(), store=Untouchable(),  # type: ignore[arg-type]
                      allowed_measurements=["00"], offer=Offer(task=DIGITS_TASK, contract={}))
    assert str(refused.value) == "model card: card.contract.id_column: expected str, got None"
    assert Offer().fields()["contract"] == SPAM_CONTRACT


@pytest.mark.parametrize(("change", "message"), MISMATCHES)
def test_the_enclave_refuses_to_load_a_model_its_contract_does_not_describe(
        digits: tuple[Any, bytes, Any], change: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match="does not match its card's contract: " + message):
        ContractSession(digits[1], Contract.parse(_mismatching(change)))


def test_a_fixed_batch_dimension_is_refused(digits: tuple[Any, bytes, Any]) -> None:
    model = onnx.load_from_string(digits[1])
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    assert "expected a free batch dimension" in str(contract_mismatch(model, Contract.parse(DIGITS_CONTRACT)))


def test_the_spam_model_matches_its_contract_and_not_the_digits_one(small_model: TrainedModel) -> None:
    model = onnx.load_from_string(small_model.onnx_bytes)
    assert contract_mismatch(model, Contract.parse(SPAM_CONTRACT)) is None
    assert "the graph takes ['text']" in str(contract_mismatch(model, Contract.parse(DIGITS_CONTRACT)))


# -- the runner: same bits as the spam scorer, batch-invariant bits for images -------------------------


def test_the_spam_contract_gives_the_spam_scorers_bits(small_model: TrainedModel,
                                                       held_out_texts: tuple[list[str], list[int]]) -> None:
    texts = held_out_texts[0][:300] + ["", "x", "Grüße \U0001f600"]
    p, y = ModelSession(small_model.onnx_bytes).score(texts)
    session = ContractSession(small_model.onnx_bytes, Contract.parse(SPAM_CONTRACT))
    table = session.results(pa.array([str(i) for i in range(len(texts))]), {"text": texts}, None)
    assert _bits(table["spam_probability"].to_numpy()) == _bits(p)
    assert table["label"].type == pa.int8() and _bits(table["label"].to_numpy()) == _bits(y)


@pytest.mark.parametrize("threads", [1, 2])
def test_an_image_gets_the_same_bits_whatever_the_batch(digits: tuple[Any, bytes, Any], threads: int,
                                                        digit_files: tuple[list[str], list[bytes], list[int]]) -> None:
    _, data, _ = digit_files
    session = ContractSession(digits[1], Contract.parse(DIGITS_CONTRACT), threads=threads)
    whole = session.run({"image": data}, len(data))["probabilities"]
    for size in (1, 3, 63, 64, 65):
        parts = [session.run({"image": data[i:i + size]}, len(data[i:i + size]))["probabilities"]
                 for i in range(0, len(data), size)]
        assert _bits(np.concatenate(parts)) == _bits(whole), size
    reference = ContractSession(digits[1], Contract.parse(DIGITS_CONTRACT), threads=1).run({"image": data}, len(data))
    assert _bits(reference["probabilities"]) == _bits(whole)


def test_images_are_classified_as_sklearn_does(digits: tuple[Any, bytes, Any],
                                               digit_files: tuple[list[str], list[bytes], list[int]]) -> None:
    split, onnx_bytes, model = digits
    names, data, truth = digit_files
    session = ContractSession(onnx_bytes, Contract.parse(DIGITS_CONTRACT))
    table = session.results(pa.array(names), {"image": data}, None)
    assert table["class"].type == pa.string() and table["probabilities"].type == pa.list_(pa.float32())
    png = [i for i, n in enumerate(names) if n.endswith(".png")]  # lossless: the 8-bit pixels that were written
    pixels = np.round(255.0 - split.test_x[:150] * 255.0 / 16.0).astype(np.float32)
    expected = model.predict_proba(pixels * np.float32(-1 / 255) + np.float32(1.0))
    assert np.abs(model_inputs(split.test_x[:150]) - pixels * np.float32(-1 / 255) - 1).max() < 2.0 / 255
    got = np.array(table["probabilities"].to_pylist())
    assert np.abs(got[png] - expected[png]).max() < 1e-5
    accuracy = np.mean([int(c) == t for c, t in zip(table["class"].to_pylist(), truth, strict=True)])
    assert accuracy > 0.93


def test_precision_terms_apply_to_every_float_column(digits: tuple[Any, bytes, Any],
                                                     digit_files: tuple[list[str], list[bytes], list[int]]) -> None:
    names, data, _ = digit_files
    session = ContractSession(digits[1], Contract.parse(DIGITS_CONTRACT))
    full = session.results(pa.array(names[:5]), {"image": data[:5]}, None)["probabilities"].to_pylist()
    rounded = session.results(pa.array(names[:5]), {"image": data[:5]}, 2)["probabilities"].to_pylist()
    assert rounded[0] == pytest.approx([round(v, 2) for v in full[0]], abs=1e-6) and rounded != full
    labels_only = session.results(pa.array(names[:5]), {"image": data[:5]}, 0)
    assert labels_only["probabilities"].null_count == 5 and labels_only["class"].null_count == 0


def test_a_label_outside_the_cards_classes_is_refused(digits: tuple[Any, bytes, Any],
                                                      digit_files: tuple[list[str], list[bytes], list[int]]) -> None:
    doc = copy.deepcopy(DIGITS_CONTRACT)
    doc["outputs"] = [doc["outputs"][0]]
    doc["classes"] = ["0", "1"]  # the graph gives 0..9
    session = ContractSession(digits[1], Contract.parse(doc))
    with pytest.raises(OutputRefused, match=r"output 'label': a label outside the card's 2 classes") as refused:
        session.results(pa.array(digit_files[0]), {"image": digit_files[1]}, None)
    # Neither the label the graph gave nor its row: the provider's graph chooses both, the platform reads this.
    assert "row" not in str(refused.value) and not re.search(r"label \d", str(refused.value))


# -- bad inputs: in the enclave (per row, no content) and at the owner (per file, before upload) --------


def _png(side: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (side, side), 255).save(out, format="PNG")
    return out.getvalue()


PDF = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n"


def test_the_enclave_refuses_a_row_that_is_not_an_allowed_image(digits: tuple[Any, bytes, Any]) -> None:
    """The refusal the platform reads names the row and the rule only: what the owner's image was (its kind,
    dimensions, size) stays in `found`, which only the owner's own check shows."""
    session = ContractSession(digits[1], Contract.parse(DIGITS_CONTRACT))
    cases = [([_png(8), PDF], "shard row 1: expected a PNG or JPEG image", "bytes of another kind"),
             ([_png(2049)], "shard row 0: expected at most 4194304 pixels (the model's contract)",
              "2049 x 2049 = 4198401"),
             ([_png(8)[:20]], "shard row 0: expected a readable image", "a damaged PNG image (OSError)")]
    for images, message, found in cases:
        with pytest.raises(InputRefused) as refused:
            session.run({"image": images}, len(images))
        assert (str(refused.value), refused.value.found) == (message, found)


def test_the_owner_refuses_each_bad_file_before_upload(tmp_path: Path) -> None:
    contract = Contract.parse(DIGITS_CONTRACT)
    (tmp_path / "a.png").write_bytes(_png(32))
    (tmp_path / "invoice.png").write_bytes(PDF)
    (tmp_path / "poster.png").write_bytes(_png(2049))
    (tmp_path / "huge.jpg").write_bytes(b"\xff\xd8\xff" + bytes((1 << 20) + 1))
    (tmp_path / ".hidden").write_bytes(PDF)
    reports = {r.file: r for r in check_images(tmp_path, contract, "digits:1")}
    assert set(reports) == {"a.png", "invoice.png", "poster.png", "huge.jpg"}
    assert reports["a.png"].error is None and (reports["a.png"].width, reports["a.png"].height) == (32, 32)
    assert reports["invoice.png"].error == "invoice.png: expected a PNG or JPEG image, found a PDF document"
    assert "poster.png: expected at most 4194304 pixels" in str(reports["poster.png"].error)
    assert "huge.jpg: expected at most 1048576 bytes per image" in str(reports["huge.jpg"].error)
    with pytest.raises(ImageInputError, match=r"3 of 4 file\(s\) refused for digits:1; nothing was uploaded"):
        read_images(tmp_path, contract, "digits:1")
    for bad in ("invoice.png", "poster.png", "huge.jpg"):
        (tmp_path / bad).unlink()
    table = read_images(tmp_path, contract)
    assert table.column_names == ["file", "image"] and table.column("file").to_pylist() == ["a.png"]


def test_an_image_folder_for_a_text_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_png(8))
    with pytest.raises(ImageInputError, match=r"model spam:1: expected a model that takes one image per row"):
        read_images(tmp_path, Contract.parse(SPAM_CONTRACT), "spam:1")


@pytest.mark.parametrize(("value", "found"), [(1e39, "one beyond it"), (float("nan"), "nan"), ("7", "str")])
def test_the_enclave_refuses_a_number_its_tensor_cannot_hold(value: object, found: str) -> None:
    """1e39 is a finite Python float that float32 holds only as inf: refused, not scored as inf."""
    from enclave.preprocess import tensor
    from wire.contract import InputSpec

    spec = InputSpec("x", ("age", "bmi"), "float32", (None, 2), "numbers")
    held = tensor(spec, {"age": [1.5, 2.0], "bmi": [3.4e38, 0.0]}, 2)
    assert held.tolist() == [[1.5, np.float32(3.4e38)], [2.0, 0.0]]
    refusal = rf"^shard row 1, column 'bmi': numbers expects a finite number.*found {found}$"
    with pytest.raises(InputRefused, match=refusal):
        tensor(spec, {"age": [1.5, 2.0], "bmi": [0.0, value]}, 2)


def test_precision_rounds_the_float32_value_the_result_carries() -> None:
    """A double output is made float32 first, then rounded: 0.125000001 is 0.125 in float32, which rounds to even."""
    from enclave.runner import _precision

    doubles = np.array([0.125000001, 0.5, 0.7], dtype=np.float64)
    full = _precision(doubles, None)
    assert full.type == pa.float32() and full.to_pylist() == doubles.astype(np.float32).tolist()
    two = _precision(doubles, 2)
    assert two.type == pa.float32() and two.to_pylist() == np.array([0.12, 0.5, 0.7], dtype=np.float32).tolist()
    one = _precision(doubles, 1)
    assert one.to_pylist() == np.array([0.1, 0.5, 0.7], dtype=np.float32).tolist()
    none = _precision(doubles, 0)
    assert (none.type, len(none), none.null_count) == (pa.float32(), 3, 3)


def test_no_rows_give_empty_columns_of_each_outputs_type(digits: tuple[Any, bytes, Any],
                                                         small_model: TrainedModel) -> None:
    from tests.enclave.heavy_models import CONTRACT as VALUE_CONTRACT
    from tests.enclave.heavy_models import columns, slow_model

    ids = pa.array([], pa.string())
    cases: list[tuple[bytes, Contract, dict[str, Sequence[object]], dict[str, pa.DataType]]] = [
             (digits[1], Contract.parse(DIGITS_CONTRACT), {"image": []},
              {"file": pa.string(), "class": pa.string(), "probabilities": pa.list_(pa.float32())}),
             (small_model.onnx_bytes, Contract.parse(SPAM_CONTRACT), {"text": []},
              {"message_id": pa.string(), "spam_probability": pa.float32(), "label": pa.int8()}),
             (slow_model(), VALUE_CONTRACT, {**columns(0)}, {"id": pa.string(), "value": pa.float32()})]
    for onnx_bytes, contract, columns_in, types in cases:
        table = ContractSession(onnx_bytes, contract).results(ids, columns_in, None)
        assert {name: column.type for name, column in table.items()} == types
        assert all(len(column) == 0 for column in table.values())


def test_every_float_output_kind_takes_the_precision_terms(digits: tuple[Any, bytes, Any],
                                                           digit_files: tuple[list[str], list[bytes], list[int]],
                                                           small_model: TrainedModel) -> None:
    from tests.enclave.heavy_models import CONTRACT as VALUE_CONTRACT
    from tests.enclave.heavy_models import columns, slow_model

    def rounded(values: list[float], digits: int) -> list[float]:
        return np.round(np.array(values, dtype=np.float32).astype(np.float64), digits).astype(np.float32).tolist()

    spam = ContractSession(small_model.onnx_bytes, Contract.parse(SPAM_CONTRACT))
    ids = pa.array(["a", "b", "c"])
    texts: dict[str, Sequence[object]] = {"text": ["win money now", "meeting at noon", ""]}
    full = spam.results(ids, texts, None)["spam_probability"]
    two = spam.results(ids, texts, 2)["spam_probability"]
    assert two.type == pa.float32() and two.to_pylist() == rounded(full.to_pylist(), 2) != full.to_pylist()
    value = ContractSession(slow_model(width=256, depth=8), VALUE_CONTRACT)
    features: dict[str, Sequence[object]] = {**columns(3)}
    full = value.results(ids, features, None)["value"]
    one = value.results(ids, features, 1)["value"]
    assert one.type == pa.float32() and one.to_pylist() == rounded(full.to_pylist(), 1) != full.to_pylist()
    assert value.results(ids, features, 0)["value"].null_count == 3
    names, data, _ = digit_files
    hidden = ContractSession(digits[1], Contract.parse(DIGITS_CONTRACT)).results(pa.array(names[:2]),
                                                                                 {"image": [*data[:2]]}, 0)
    assert (hidden["probabilities"].type, hidden["probabilities"].null_count) == (pa.list_(pa.float32()), 2)
