"""enclave.runner's own paths, fast: the TF-IDF rewrite as the contract runner drives it (chunks of exactly
CHUNK_ROWS rows in length order, padding, the fallback to the graph), labels and classes at their bounds, the
graph's declared types, and the refusals word for word.

Models are built in memory: a TF-IDF + logistic regression pipeline trained on a few sentences (the graph
`enclave.tfidf_path` reproduces, as skl2onnx exports it) and one-node graphs that turn a number into a label.
Outputs are checked against onnxruntime run on the published bytes in input order (`enclave.scoring.load_session`,
no runner code) and against scikit-learn, so a change to the runner's row order or padding cannot hide by changing
the reference too.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest
import skl2onnx  # noqa: F401 - imported at collection: mutmut's forked children do not import it again
from onnx import TensorProto, helper, numpy_helper
from sklearn.pipeline import Pipeline

from enclave import runner
from enclave.preprocess import InputRefused
from enclave.runner import ContractSession, OutputRefused, contract_session_for
from enclave.scoring import CHUNK_ROWS, ModelLoadError, load_session
from tests.enclave.tiny_spam import WORDS, rewrite_derivations, tiny_spam_model
from wire.contract import SPAM_CONTRACT, Contract, InputSpec, OutputSpec


@pytest.fixture(scope="module")
def spam_model() -> tuple[Pipeline, bytes]:
    return tiny_spam_model()


@pytest.fixture(scope="module")
def sessions(spam_model: tuple[Pipeline, bytes]) -> tuple[ContractSession, ContractSession]:
    contract = Contract.parse(SPAM_CONTRACT)
    return ContractSession(spam_model[1], contract), ContractSession(spam_model[1], contract, rewrite=False)


def _texts(rows: int, risky: int | None = None) -> list[str]:
    """`rows` texts of many lengths (words, case, punctuation, non-ASCII separators); row `risky` holds a Kelvin
    sign, which the graph's StringNormalizer lower-cases to ASCII: its chunk must run the whole graph."""
    rng = random.Random(rows)
    fillers = [" ", ", ", "\n", " \u00e9 ", "-", "  "]
    out = []
    for i in range(rows):
        words = [rng.choice(WORDS) for _ in range(rng.randint(0, 30))]
        text = "".join(w.upper() if rng.random() < 0.2 else w for word in words for w in (word, rng.choice(fillers)))
        out.append(text + ("free \u212amoney" if i == risky else ""))
    return out


def _reference(onnx_bytes: bytes, texts: list[str]) -> dict[str, np.ndarray]:
    """onnxruntime on the published bytes, chunks of CHUNK_ROWS texts in input order, the last padded with ''."""
    session = load_session(onnx_bytes, 1)
    out: dict[str, list[np.ndarray]] = {"label": [], "probabilities": []}
    for start in range(0, len(texts), CHUNK_ROWS):
        chunk = texts[start:start + CHUNK_ROWS]
        batch = np.array([*chunk, *[""] * (CHUNK_ROWS - len(chunk))], dtype=object).reshape(-1, 1)
        for name, value in zip(out, session.run(list(out), {"text": batch}), strict=True):
            out[name].append(np.asarray(value)[:len(chunk)])
    return {name: np.concatenate(parts) for name, parts in out.items()}


def _bits(a: np.ndarray) -> tuple[str, tuple[int, ...], bytes]:
    return a.dtype.str, a.shape, np.ascontiguousarray(a).tobytes()


@pytest.mark.parametrize("rows", [1, 63, 64, 65, 150])
def test_the_rewrite_and_the_graph_give_the_published_graphs_bits(
        spam_model: tuple[Pipeline, bytes], sessions: tuple[ContractSession, ContractSession], rows: int) -> None:
    fast, plain = sessions
    assert fast.rewrite is not None and plain.rewrite is None
    texts = _texts(rows, risky=rows // 2 if rows > 1 else None)
    expected = _reference(spam_model[1], texts)
    for session in (fast, plain):
        got = session.run({"text": texts}, rows)
        assert {name: _bits(value) for name, value in got.items()} == \
            {name: _bits(value) for name, value in expected.items()}
    pipeline = spam_model[0]
    assert expected["label"].tolist() == pipeline.predict(texts).tolist()
    assert np.abs(expected["probabilities"] - pipeline.predict_proba(texts)).max() < 1e-6
    table = fast.results(pa.array([str(i) for i in range(rows)]), {"text": texts}, None)
    assert table["message_id"].to_pylist() == [str(i) for i in range(rows)]
    assert _bits(table["spam_probability"].to_numpy()) == _bits(expected["probabilities"][:, 1].copy())
    assert _bits(table["label"].to_numpy()) == _bits(expected["label"].astype(np.int8))


class _Spy:
    """Records what the runner hands one of its two paths (the texts of each call, the run options), then runs it."""

    def __init__(self, target: Any, name: str, calls: list[tuple[str, list[str], object]]) -> None:
        self.target, self.name, self.calls = target, name, calls

    def run(self, *args: Any) -> Any:
        texts = list(args[0]) if self.name == "rewrite" else args[1]["text"][:, 0].tolist()
        assert len(args) == 3, args
        self.calls.append((self.name, texts, args[2]))
        return self.target.run(*args)


@pytest.mark.parametrize("last", [22, CHUNK_ROWS - 1])  # filler rows: many, and one
def test_chunks_hold_exactly_chunk_rows_in_length_order_and_only_a_risky_one_runs_the_graph(
        sessions: tuple[ContractSession, ContractSession], monkeypatch: pytest.MonkeyPatch, last: int) -> None:
    fast = sessions[0]
    rows = 2 * CHUNK_ROWS + last
    texts = _texts(rows, risky=7)
    calls: list[tuple[str, list[str], object]] = []
    monkeypatch.setattr(fast, "rewrite", _Spy(fast.rewrite, "rewrite", calls))
    monkeypatch.setattr(fast, "_session", _Spy(fast._session, "graph", calls))
    fast.run({"text": texts}, rows)
    order = sorted(range(rows), key=lambda i: len(texts[i]))  # similar lengths together; ties in input order
    chunks = [[texts[i] for i in order[s:s + CHUNK_ROWS]] for s in range(0, rows, CHUNK_ROWS)]
    chunks[-1] += [""] * (CHUNK_ROWS - len(chunks[-1]))
    risky = next(k for k, chunk in enumerate(chunks) if texts[7] in chunk)
    expected = [("rewrite", chunk) for chunk in chunks]
    expected.insert(risky + 1, ("graph", chunks[risky]))
    assert [(name, got) for name, got, _ in calls] == expected
    # each run gets the watchdog's own options (its `terminate` must reach whichever path runs)
    assert all(isinstance(options, ort.RunOptions) for _, _, options in calls)
    assert len({id(options) for name, _, options in calls if name == "rewrite"}) == len(chunks)


def test_no_rows_give_an_empty_array_per_output_tensor(sessions: tuple[ContractSession, ContractSession]) -> None:
    for session in sessions:
        got = session.run({"text": []}, 0)
        assert {name: _bits(value) for name, value in got.items()} == \
            {name: ("<f4", (0,), b"") for name in ("probabilities", "label")}


def test_a_non_text_value_is_refused_naming_its_shard_row(sessions: tuple[ContractSession, ContractSession]) -> None:
    texts: list[object] = [*_texts(70)]
    texts[66] = b"bytes"
    with pytest.raises(InputRefused) as refused:
        sessions[0].run({"text": texts}, 70)
    assert str(refused.value) == "shard row 66: email-text expects a string, found bytes"


def test_threads_below_one_are_refused_and_one_is_the_default(spam_model: tuple[Pipeline, bytes]) -> None:
    contract = Contract.parse(SPAM_CONTRACT)
    with pytest.raises(ValueError) as refused:
        ContractSession(spam_model[1], contract, threads=0)
    assert str(refused.value) == "threads must be >= 1, got 0"
    assert ContractSession(spam_model[1], contract, rewrite=False).threads == 1  # the default: one thread


def test_the_rewrite_is_derived_with_the_sessions_threads_and_chunk(spam_model: tuple[Pipeline, bytes],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    seen = rewrite_derivations(monkeypatch)
    assert ContractSession(spam_model[1], Contract.parse(SPAM_CONTRACT), threads=2).rewrite is not None
    assert seen == [(2, CHUNK_ROWS)]


# -- labels and classes: a graph that turns a number into an integer label --------------------------------------


def _label_model(output_type: int = TensorProto.INT64) -> bytes:
    """x float32 [N, 1] -> y = int(x) [N] (of `output_type`)."""
    nodes = [helper.make_node("Cast", ["x"], ["xi"], to=output_type),
             helper.make_node("Reshape", ["xi", "flat"], ["y"])]
    graph = helper.make_graph(nodes, "labels", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])],
                              [helper.make_tensor_value_info("y", output_type, [None])],
                              [numpy_helper.from_array(np.array([-1], np.int64), "flat")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()


_NUMBER = InputSpec("x", ("n",), "float32", (None, 1), "numbers")


def _contract(output: OutputSpec, classes: tuple[str, ...] | None = None) -> Contract:
    return Contract("id", (_NUMBER,), (output,), classes)


def _results(session: ContractSession, values: Sequence[float]) -> dict[str, pa.Array]:
    return session.results(pa.array([str(i) for i in range(len(values))]), {"n": list(values)}, None)


def test_classes_at_both_ends_are_named_and_one_beyond_either_end_is_refused() -> None:
    session = ContractSession(_label_model(), _contract(OutputSpec("y", "kind", "class"), ("a", "b", "c")))
    assert session.rewrite is None  # no text input: the graph runs as published
    table = _results(session, [2.0, 0.0, 1.0, 0.0])
    assert (table["kind"].type, table["kind"].to_pylist()) == (pa.string(), ["c", "a", "b", "a"])
    assert (_results(session, [])["kind"].type, len(_results(session, [])["kind"])) == (pa.string(), 0)
    for value in (3.0, -1.0):
        with pytest.raises(OutputRefused) as refused:
            _results(session, [0.0, value, 2.0])
        assert str(refused.value) == "output 'y': a label outside the card's 3 classes (0..2)"


def test_a_class_output_without_class_names_refuses_every_label() -> None:
    """`Contract.parse` never yields this (a class output needs classes); a contract built otherwise is refused."""
    session = ContractSession(_label_model(), _contract(OutputSpec("y", "kind", "class")))
    with pytest.raises(OutputRefused) as refused:
        _results(session, [0.0])
    assert str(refused.value) == "output 'y': a label outside the card's 0 classes (0..-1)"


def test_labels_fill_their_integer_type_to_both_ends_and_not_beyond() -> None:
    contract = _contract(OutputSpec("y", "code", "label", dtype="int8"))
    session = ContractSession(_label_model(TensorProto.INT32), contract)
    table = _results(session, [-128.0, 127.0, 0.0])
    assert (table["code"].type, table["code"].to_pylist()) == (pa.int8(), [-128, 127, 0])
    for value in (128.0, -129.0):
        with pytest.raises(OutputRefused) as refused:
            _results(session, [1.0, value])
        assert str(refused.value) == "output 'y': a label that does not fit the card's int8"


def test_a_label_without_a_dtype_is_an_int64_column_with_rows_or_without() -> None:
    """`Contract.parse` insists on a label's dtype; a contract built otherwise gets int64, not an error."""
    session = ContractSession(_label_model(), _contract(OutputSpec("y", "code", "label")))
    table = _results(session, [-5.0, 7.0])
    assert (table["code"].type, table["code"].to_pylist()) == (pa.int64(), [-5, 7])
    assert _results(session, [])["code"].type == pa.int64()


def test_a_graph_type_outside_the_contracts_names_is_refused_by_its_onnxruntime_name() -> None:
    with pytest.raises(ModelLoadError) as refused:
        ContractSession(_label_model(TensorProto.BOOL), _contract(OutputSpec("y", "code", "label", dtype="int8")))
    assert str(refused.value) == ("the model does not match its card's contract: output 'y' (label): expected a "
                                  "tensor of int64 or int32, the graph declares tensor(bool)")


# -- float outputs: a graph that hands its input back, so every expected value is known --------------------------


def _float_model(name: str = "floats") -> bytes:
    """x float32 [N, 2] -> p = x [N, 2] and v = x0 + x1 [N, 1]; `name` changes the bytes, not the graph."""
    nodes = [helper.make_node("Identity", ["x"], ["p"]),
             helper.make_node("ReduceSum", ["x", "axis"], ["v"], keepdims=1)]
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, [None, 2]),
                               helper.make_tensor_value_info("v", TensorProto.FLOAT, [None, 1])],
                              [numpy_helper.from_array(np.array([1], np.int64), "axis")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()


FLOATS = Contract("id", (InputSpec("x", ("a", "b"), "float32", (None, 2), "numbers"),),
                  (OutputSpec("p", "second", "probability", class_index=1), OutputSpec("p", "both", "probabilities"),
                   OutputSpec("v", "sum", "value")), ("no", "yes"))


def _pairs(rows: int) -> np.ndarray:
    """Random pairs, the first 0.175 twice: float32 0.17499999702, which rounds to 0.17 in float64 (the runner's
    rounding) and to 0.18 in float32 (0.175 * 100 is 17.5 there)."""
    pairs = np.random.default_rng(rows).random((rows, 2)).astype(np.float32)
    pairs[0] = 0.175
    return pairs


@pytest.mark.parametrize("digits", [None, 1, 2, 0])
def test_each_float_output_kind_carries_the_graphs_values_at_the_cards_precision(digits: int | None) -> None:
    session = ContractSession(_float_model(), FLOATS)
    rows = CHUNK_ROWS + 66
    x = _pairs(rows)
    table = session.results(pa.array([str(i) for i in range(rows)]), {"a": x[:, 0].tolist(), "b": x[:, 1].tolist()},
                            digits)
    assert list(table) == ["id", "second", "both", "sum"]
    types = (pa.float32(), pa.list_(pa.float32()), pa.float32())
    assert tuple(table[c].type for c in ("second", "both", "sum")) == types
    if digits == 0:
        assert all(table[c].null_count == rows for c in ("second", "both", "sum"))
        return
    sums = load_session(_float_model(), 1).run(["v"], {"x": x})[0].reshape(rows)  # onnxruntime's own float32 sums

    def kept(values: np.ndarray) -> list[float]:
        values = values.astype(np.float32)
        return (values if digits is None else np.round(values.astype(np.float64), digits).astype(np.float32)).tolist()

    assert table["second"].to_pylist() == kept(x[:, 1])
    assert table["both"].to_pylist() == [kept(row) for row in x]
    assert table["sum"].to_pylist() == kept(sums)
    assert table["second"].null_count == table["both"].null_count == table["sum"].null_count == 0


def test_probabilities_of_one_class_are_lists_of_one() -> None:
    contract = Contract("id", FLOATS.inputs, (OutputSpec("v", "sums", "probabilities"),), None)
    x = _pairs(5)
    table = ContractSession(_float_model(), contract).results(pa.array(list("abcde")), {"a": x[:, 0].tolist(),
                                                                                         "b": x[:, 1].tolist()}, None)
    sums = load_session(_float_model(), 1).run(["v"], {"x": x})[0]
    assert (table["sums"].type, table["sums"].to_pylist()) == (pa.list_(pa.float32()), sums.tolist())


def test_no_rows_give_empty_columns_of_each_float_outputs_type() -> None:
    table = ContractSession(_float_model(), FLOATS).results(pa.array([], pa.string()), {"a": [], "b": []}, None)
    assert {name: (column.type, len(column)) for name, column in table.items()} == {
        "id": (pa.string(), 0), "second": (pa.float32(), 0), "both": (pa.list_(pa.float32()), 0),
        "sum": (pa.float32(), 0)}


# -- the session cache ------------------------------------------------------------------------------------------


def _models(count: int, prefix: str) -> tuple[list[bytes], list[str]]:
    models = [_float_model(f"{prefix}{i}") for i in range(count)]  # same graph, other bytes, another digest
    return models, [hashlib.sha256(m).hexdigest() for m in models]


def test_the_cache_keys_on_the_contract_and_checks_the_digest() -> None:
    runner.clear_contract_sessions()
    (onnx_bytes,), (digest,) = _models(1, "d")
    first = contract_session_for(digest, FLOATS, lambda: onnx_bytes)
    assert contract_session_for("sha256:" + digest.upper(), FLOATS, lambda: b"unused") is first
    other = Contract(FLOATS.id_column, FLOATS.inputs, (*FLOATS.outputs[:2], OutputSpec("v", "total", "value")),
                     FLOATS.classes)
    assert contract_session_for(digest, other, lambda: onnx_bytes) is not first
    with pytest.raises(ModelLoadError) as refused:
        contract_session_for("0" * 64, FLOATS, lambda: onnx_bytes)
    assert str(refused.value) == f"model bytes hash to sha256:{digest}, expected sha256:{'0' * 64}"
    assert contract_session_for(digest, FLOATS, lambda: onnx_bytes, threads=2) is not first
    runner.clear_contract_sessions()


def test_the_cache_is_bounded_and_loads_only_on_a_miss() -> None:
    runner.clear_contract_sessions()
    models, digests = _models(runner._CACHE_SIZE + 1, "m")
    loads: list[int] = []

    def loader(i: int) -> bytes:
        loads.append(i)
        return models[i]

    sessions = [contract_session_for(d, FLOATS, partial(loader, i)) for i, d in enumerate(digests)]
    assert contract_session_for(digests[-1], FLOATS, lambda: b"unused") is sessions[-1]
    assert contract_session_for(digests[0], FLOATS, lambda: loader(0)) is not sessions[0]  # evicted, loaded again
    assert loads == [*range(len(models)), 0]
    runner.clear_contract_sessions()


def test_the_cache_holds_exactly_its_size_and_keeps_threads_and_the_default_namespace() -> None:
    runner.clear_contract_sessions()
    models, digests = _models(runner._CACHE_SIZE, "k")
    sessions = [contract_session_for(d, FLOATS, m.__bytes__) for d, m in zip(digests, models, strict=True)]
    # all four still held: a reload would hash b"unused" and be refused
    assert [contract_session_for(d, FLOATS, lambda: b"unused", namespace="confidential") for d in digests] == sessions
    assert contract_session_for(digests[0], FLOATS, lambda: models[0], namespace="baseline") is not sessions[0]
    assert contract_session_for(digests[1], FLOATS, lambda: models[1], threads=2).threads == 2
    runner.clear_contract_sessions()
