"""enclave.scoring, fast: the spam scorer's chunks (exactly CHUNK_ROWS texts in length order, padded with ''), its
bits against onnxruntime on the published bytes, the session's options, and each schema refusal word for word.

On the TF-IDF model of `tests.enclave.tiny_spam` (no corpus); tests/model/test_scoring.py does the same on models
trained on the corpus (seconds to build, so not in bench/mutation.py's list).
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import skl2onnx  # noqa: F401 - imported at collection: mutmut's forked children do not import it again
from onnx import TensorProto, helper

from enclave.scoring import CHUNK_ROWS, ModelLoadError, ModelSession, load_session, session_options
from tests.enclave.tiny_spam import WORDS, rewrite_derivations, tiny_spam_model


@pytest.fixture(scope="module")
def session() -> ModelSession:
    return ModelSession(tiny_spam_model()[1])


def _texts(rows: int, risky: int | None = None) -> list[str]:
    rng = random.Random(rows)
    out = [" ".join(rng.choice(WORDS).upper() if rng.random() < 0.2 else rng.choice(WORDS)
                    for _ in range(rng.randint(0, 25))) for _ in range(rows)]
    if risky is not None:
        out[risky] += " free \u212amoney"  # the Kelvin sign: its chunk runs the whole graph
    return out


def _reference(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime on the published bytes, chunks of CHUNK_ROWS in input order padded with '': (P(spam), label)."""
    whole = load_session(tiny_spam_model()[1], 1)
    p, y = [], []
    for start in range(0, len(texts), CHUNK_ROWS):
        chunk = texts[start:start + CHUNK_ROWS]
        batch = np.array([*chunk, *[""] * (CHUNK_ROWS - len(chunk))], dtype=object).reshape(-1, 1)
        label, proba = whole.run(["label", "probabilities"], {"text": batch})
        p.append(np.asarray(proba)[:len(chunk), 1])
        y.append(np.asarray(label)[:len(chunk)])
    return np.concatenate(p).astype(np.float32), np.concatenate(y).astype(np.int8)


def _bits(a: np.ndarray) -> tuple[str, tuple[int, ...], bytes]:
    return a.dtype.str, a.shape, np.ascontiguousarray(a).tobytes()


@pytest.mark.parametrize("rows", [1, 63, 64, 65, 150])
def test_scores_are_the_published_graphs_bits_through_either_path(session: ModelSession, rows: int) -> None:
    texts = _texts(rows, risky=rows // 2)
    expected = _reference(texts)
    plain = ModelSession(tiny_spam_model()[1], rewrite=False)
    assert session.rewrite is not None and plain.rewrite is None
    for scorer in (session, plain):
        assert [_bits(a) for a in scorer.score(texts)] == [_bits(a) for a in expected]
    pipeline = tiny_spam_model()[0]
    assert expected[1].tolist() == pipeline.predict(texts).tolist()
    assert np.abs(expected[0] - pipeline.predict_proba(texts)[:, 1]).max() < 1e-6


def test_no_texts_give_empty_arrays_of_the_result_types(session: ModelSession) -> None:
    assert [_bits(a) for a in session.score([])] == [("<f4", (0,), b""), ("|i1", (0,), b"")]


class _Spy:
    def __init__(self, target: Any, name: str, calls: list[tuple[str, list[str]]]) -> None:
        self.target, self.name, self.calls = target, name, calls

    def run(self, *args: Any) -> Any:
        texts = list(args[0]) if self.name == "rewrite" else args[1]["text"][:, 0].tolist()
        self.calls.append((self.name, texts))
        return self.target.run(*args)


def test_chunks_hold_exactly_chunk_rows_in_length_order_padded_with_empty_texts(
        session: ModelSession, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = 2 * CHUNK_ROWS + 9
    texts = _texts(rows, risky=3)
    calls: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(session, "rewrite", _Spy(session.rewrite, "rewrite", calls))
    monkeypatch.setattr(session, "_session", _Spy(session._session, "graph", calls))
    session.score(texts)
    order = sorted(range(rows), key=lambda i: len(texts[i]))
    chunks = [[texts[i] for i in order[s:s + CHUNK_ROWS]] for s in range(0, rows, CHUNK_ROWS)]
    chunks[-1] += [""] * (CHUNK_ROWS - len(chunks[-1]))
    risky = next(k for k, chunk in enumerate(chunks) if texts[3] in chunk)
    expected = [("rewrite", chunk) for chunk in chunks]
    expected.insert(risky + 1, ("graph", chunks[risky]))
    assert calls == expected


def test_a_text_that_is_not_a_string_is_refused_naming_its_chunk_row(session: ModelSession) -> None:
    texts: list[Any] = [*_texts(CHUNK_ROWS), "a" * 20, b"b" * 300, "c"]  # the bytes are the longest: last
    with pytest.raises(TypeError) as refused:
        session.score(texts)
    assert str(refused.value) == "texts must be str, found bytes at chunk row 2"  # of the second chunk


def test_threads_below_one_are_refused_and_threads_reach_the_session() -> None:
    with pytest.raises(ValueError) as refused:
        ModelSession(tiny_spam_model()[1], threads=0)
    assert str(refused.value) == "threads must be >= 1, got 0"
    assert ModelSession(tiny_spam_model()[1], rewrite=False).threads == 1  # the default: one thread
    two = ModelSession(tiny_spam_model()[1], threads=2)
    assert two.threads == 2 and two._session.get_session_options().intra_op_num_threads == 2


def test_session_options_are_cpu_sequential_quiet_and_write_no_profile() -> None:
    options = session_options(3)
    assert (options.intra_op_num_threads, options.inter_op_num_threads, options.execution_mode,
            options.log_severity_level, options.enable_profiling) == (3, 1, ort.ExecutionMode.ORT_SEQUENTIAL, 3, False)
    loaded = load_session(tiny_spam_model()[1], 2)
    assert loaded.get_providers() == ["CPUExecutionProvider"]
    got = loaded.get_session_options()
    assert (got.intra_op_num_threads, got.inter_op_num_threads, got.execution_mode, got.log_severity_level,
            got.enable_profiling) == (2, 1, ort.ExecutionMode.ORT_SEQUENTIAL, 3, False)


def test_model_bytes_of_any_buffer_type_load_and_anything_else_is_refused() -> None:
    onnx_bytes = tiny_spam_model()[1]
    for buffer in (bytearray(onnx_bytes), memoryview(onnx_bytes)):
        assert load_session(buffer, 1).get_inputs()[0].name == "text"  # type: ignore[arg-type]
    for bad in (b"", bytearray(), "a model", None):
        with pytest.raises(ModelLoadError) as refused:
            load_session(bad, 1)  # type: ignore[arg-type]
        assert str(refused.value) == "model bytes are empty or not bytes"
    with pytest.raises(ModelLoadError) as refused:
        load_session(b"\x89PNG not a model", 1)
    assert str(refused.value).startswith("onnxruntime cannot load the model (16 bytes): ")
    assert refused.value.__cause__ is None and refused.value.__suppress_context__


def _edited(edit: Callable[[onnx.ModelProto], None]) -> bytes:
    model = onnx.load_from_string(tiny_spam_model()[1])
    edit(model)
    return model.SerializeToString()


def _through(model: onnx.ModelProto, name: str, node: onnx.NodeProto, elem_type: int,
             dims: list[int | str | None]) -> None:
    """The graph output `name` made by `node` from the classifier's own output (renamed `raw`)."""
    for n in model.graph.node:
        n.output[:] = ["raw" if o == name else o for o in n.output]
    model.graph.node.append(node)
    output = next(o for o in model.graph.output if o.name == name)
    output.CopyFrom(helper.make_tensor_value_info(name, elem_type, dims))


def _cast_label(model: onnx.ModelProto) -> None:
    _through(model, "label", helper.make_node("Cast", ["raw"], ["label"], to=TensorProto.INT32), TensorProto.INT32,
             [None])


def _summed_probabilities(model: onnx.ModelProto) -> None:
    model.graph.initializer.append(helper.make_tensor("axis", TensorProto.INT64, [1], [1]))
    _through(model, "probabilities", helper.make_node("ReduceSum", ["raw", "axis"], ["probabilities"], keepdims=0),
             TensorProto.FLOAT, [None])


def _three_classes(model: onnx.ModelProto) -> None:
    linear = model.graph.node[-1]
    attrs = {a.name: helper.get_attribute_value(a) for a in linear.attribute}
    width = len(attrs["coefficients"]) // 2
    attrs.update(classlabels_ints=[0, 1, 2], coefficients=[*attrs["coefficients"], *attrs["coefficients"][:width]],
                 intercepts=[*attrs["intercepts"], 0.0])
    del linear.attribute[:]
    linear.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
    next(o for o in model.graph.output if o.name == "probabilities").CopyFrom(
        helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3]))


def _input(dims: list[int | str | None]) -> Callable[[onnx.ModelProto], None]:
    return lambda model: model.graph.input[0].CopyFrom(helper.make_tensor_value_info("text", TensorProto.STRING, dims))


def _second_input(model: onnx.ModelProto) -> None:
    model.graph.input.append(helper.make_tensor_value_info("more", TensorProto.STRING, [None, 1]))


def _renamed_input(model: onnx.ModelProto) -> None:
    model.graph.input[0].name = "email"
    model.graph.node[0].input[0] = "email"


SCHEMA: dict[str, tuple[Callable[[onnx.ModelProto], None], str]] = {
    "a second input": (_second_input, "expected one input 'text' of type tensor(string) [N, 1], found [('text', "
                       "'tensor(string)', [None, 1]), ('more', 'tensor(string)', [None, 1])]"),
    "an input of another name": (_renamed_input, "expected one input 'text' of type tensor(string) [N, 1], found "
                                 "[('email', 'tensor(string)', [None, 1])]"),
    "an input of rank 1": (_input([None]), "expected input 'text' of shape [N, 1], found [None]"),
    "an input two wide": (_input([None, 2]), "expected input 'text' of shape [N, 1], found [None, 2]"),
    "a label of another type": (_cast_label, "expected output 'label' of type tensor(int64) and rank 1, found "
                                "{'label': ('tensor(int32)', [None]), 'probabilities': ('tensor(float)', [None, 2])}"),
    "no probabilities": (lambda m: m.graph.output.pop(), "expected output 'probabilities' of type tensor(float) and "
                         "rank 2, found {'label': ('tensor(int64)', [None])}"),
    "probabilities of rank 1": (_summed_probabilities, "expected output 'probabilities' of type tensor(float) and "
                                "rank 2, found {'label': ('tensor(int64)', [None]), 'probabilities': "
                                "('tensor(float)', [None])}"),
    "three probabilities": (_three_classes, "expected output 'probabilities' of shape [N, 2], found "
                            "('tensor(float)', [None, 3])"),
}


@pytest.mark.parametrize("what", list(SCHEMA))
def test_a_graph_of_another_schema_is_refused_naming_what_was_found(what: str) -> None:
    edit, message = SCHEMA[what]
    with pytest.raises(ModelLoadError) as refused:
        ModelSession(_edited(edit), rewrite=False)
    assert str(refused.value) == message


@pytest.mark.parametrize("dims", [[None, 1], [None, None], ["N", 1]])
def test_an_input_of_n_by_1_or_free_width_and_probabilities_of_free_width_are_taken(
        dims: list[int | str | None]) -> None:
    def edit(model: onnx.ModelProto) -> None:
        _input(dims)(model)
        next(o for o in model.graph.output if o.name == "probabilities").CopyFrom(
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, "classes"]))
    assert ModelSession(_edited(edit), rewrite=False).score(["free money"])[1].tolist() == [1]


def test_the_rewrite_is_derived_with_the_sessions_threads_and_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = rewrite_derivations(monkeypatch)
    assert ModelSession(tiny_spam_model()[1], threads=2).rewrite is not None
    assert seen == [(2, CHUNK_ROWS)]


def test_outputs_are_read_by_name_whatever_their_order_in_the_graph() -> None:
    """A published graph listing `probabilities` before `label` (the rewrite declines it): the same scores."""
    onnx_bytes = _edited(lambda m: m.graph.output.insert(0, m.graph.output.pop()))
    assert [o.name for o in load_session(onnx_bytes, 1).get_outputs()] == ["probabilities", "label"]
    texts = _texts(70)
    for rewrite in (True, False):
        scorer = ModelSession(onnx_bytes, rewrite=rewrite)
        assert scorer.rewrite is None
        assert [_bits(a) for a in scorer.score(texts)] == [_bits(a) for a in _reference(texts)]


def test_loading_a_model_prints_and_warns_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    """Logs leave the enclave: onnxruntime's fallback from a provider it does not have would print and warn."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_session(tiny_spam_model()[1], 1).get_providers() == ["CPUExecutionProvider"]
    assert capfd.readouterr() == ("", "")
