"""enclave.tfidf_path, fast: which graphs the rewrite takes (each structural check on its own), the texts it
leaves to the graph, its bits against onnxruntime on the published bytes, and its load-time self-check.

On the TF-IDF model of `tests.enclave.tiny_spam` (no corpus): each edit below changes one thing the rewrite
relies on, and `TfidfPath` must refuse it at construction, before the self-check (which would catch most of
them again: these tests pin the first line, not only the second).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import skl2onnx  # noqa: F401 - imported at collection: mutmut's forked children do not import it again
from onnx import TensorProto, helper, numpy_helper

from enclave import tfidf_path
from enclave.scoring import CHUNK_ROWS, load_session, session_options
from enclave.tfidf_path import MAX_TEXT_CHARS, TfidfPath, _code_points, _NotThisGraph, derive
from tests.enclave.tiny_spam import WORDS, tiny_spam_model

# node indexes in skl2onnx's graph (tfidf_path.PIPELINE)
RESHAPE, LOWER, TOKENIZER, FLATTEN, TFIDF, MUL, NORMALIZER, LINEAR = range(8)


def _model() -> onnx.ModelProto:
    return onnx.load_from_string(tiny_spam_model()[1])


def _path(model: onnx.ModelProto | None = None) -> TfidfPath:
    return TfidfPath(model or _model(), session_options(1), CHUNK_ROWS)


def _attribute(node_index: int, name: str, value: object, kind: int | None = None) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        node = model.graph.node[node_index]
        kept = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend(kept if value is None else [*kept, helper.make_attribute(name, value, attr_type=kind)])
    return edit


def _initializer(name: str, value: np.ndarray) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        target = next(i for i in model.graph.initializer if i.name == name)
        target.CopyFrom(numpy_helper.from_array(value, name))
    return edit


def _pool(strings: list[str], indexes: list[int]) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        _attribute(TFIDF, "pool_strings", strings, onnx.AttributeProto.STRINGS)(model)
        _attribute(TFIDF, "ngram_indexes", indexes, onnx.AttributeProto.INTS)(model)
    return edit


def _set(action: Callable[[onnx.ModelProto], object]) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        action(model)
    return edit


def _n(model: onnx.ModelProto, i: int) -> onnx.NodeProto:
    return model.graph.node[i]


VOCABULARY = sorted(WORDS)
EDITS: dict[str, Callable[[onnx.ModelProto], None]] = {
    "a node of another domain": _set(lambda m: setattr(_n(m, TOKENIZER), "domain", "")),
    "one node more": _set(lambda m: m.graph.node.append(helper.make_node("Identity", ["label"], ["copy"]))),
    "a second graph input": _set(lambda m: m.graph.input.append(
        helper.make_tensor_value_info("more", TensorProto.STRING, [None, 1]))),
    "a float input": _set(lambda m: setattr(m.graph.input[0].type.tensor_type, "elem_type", TensorProto.FLOAT)),
    "the reshape reads another input": _set(lambda m: _n(m, RESHAPE).input.__setitem__(0, "other")),
    "a step skipped": _set(lambda m: _n(m, TFIDF).input.__setitem__(0, "tokenized")),
    "a step with a second output": _set(lambda m: _n(m, FLATTEN).output.append("spare")),
    "the classifier reads the unnormalised weights": _set(lambda m: _n(m, LINEAR).input.__setitem__(
        0, "tfidftr_output")),
    "the classifier reads a second input": _set(lambda m: _n(m, LINEAR).input.append("idfcst")),
    "graph outputs in another order": _set(lambda m: m.graph.output.insert(0, m.graph.output.pop())),
    "the reshape's shape not an initializer": _set(lambda m: _n(m, RESHAPE).input.__setitem__(1, "label")),
    "the reshape without a shape": _set(lambda m: _n(m, RESHAPE).input.pop()),
    "the reshape to [-1, 1]": _initializer("shape_tensor", np.array([-1, 1], np.int64)),
    "a flatten on axis 0": _attribute(FLATTEN, "axis", 0),
    "a flatten of two inputs": _set(lambda m: _n(m, FLATTEN).input.append("shape_tensor")),
    "upper case": _attribute(LOWER, "case_change_action", "UPPER"),
    "stop words": _attribute(LOWER, "stopwords", ["free"]),
    "a normaliser of two inputs": _set(lambda m: _n(m, LOWER).input.append("shape_tensor")),
    "marked tokens": _attribute(TOKENIZER, "mark", 1),
    "tokens of 2 characters at least": _attribute(TOKENIZER, "mincharnum", 2),
    "separators": _attribute(TOKENIZER, "separators", [" "]),
    "no token expression": _attribute(TOKENIZER, "tokenexp", None),
    "tokens cut at 5 characters": _attribute(TOKENIZER, "tokenexp", "[a-zA-Z0-9_]{2,5}"),
    "another character class": _attribute(TOKENIZER, "tokenexp", "[a-z]{2,}"),
    "TF-IDF weights": _attribute(TFIDF, "mode", "TFIDF"),
    "bigrams too": _attribute(TFIDF, "max_gram_length", 2),
    "bigrams only": _attribute(TFIDF, "min_gram_length", 2),
    "skips": _attribute(TFIDF, "max_skip_count", 1),
    "no skip count (onnxruntime requires one)": _attribute(TFIDF, "max_skip_count", None),
    "no n-gram counts": _attribute(TFIDF, "ngram_counts", None),
    "another n-gram count": _attribute(TFIDF, "ngram_counts", [0, 5]),
    "integer pool": _attribute(TFIDF, "pool_int64s", [1, 2]),
    "a TF-IDF of two inputs": _set(lambda m: _n(m, TFIDF).input.append("shape_tensor")),
    "an empty pool": _pool([], []),
    "more strings than indexes": _pool(VOCABULARY, list(range(len(VOCABULARY) - 1))),
    "a string twice": _pool([*VOCABULARY[:-1], VOCABULARY[0]], list(range(len(VOCABULARY)))),
    "an index twice": _pool(VOCABULARY, [*range(len(VOCABULARY) - 1), 0]),
    "a negative index": _pool(VOCABULARY, [-1, *range(1, len(VOCABULARY))]),
    "the padding is a word": _attribute(TOKENIZER, "pad_value", "free"),
    "the weights read the tokens": _set(lambda m: _n(m, MUL).input.__setitem__(0, "flattened1")),
    "weights of one input": _set(lambda m: _n(m, MUL).input.pop()),
    "weights not an initializer": _set(lambda m: _n(m, MUL).input.__setitem__(1, "label")),
    "double weights": _initializer("idfcst", np.ones(len(VOCABULARY), np.float64)),
    "one weight short": _initializer("idfcst", np.ones(len(VOCABULARY) - 1, np.float32)),
    "an infinite weight": _initializer("idfcst", np.array([np.inf, *[1.0] * (len(VOCABULARY) - 1)], np.float32)),
    "an L1 norm": _attribute(NORMALIZER, "norm", "L1"),
    "a classifier onnxruntime cannot build": _attribute(LINEAR, "post_transform", "NO_SUCH_TRANSFORM"),
    "the normaliser reads the unweighted counts": _set(lambda m: _n(m, NORMALIZER).input.__setitem__(0, "output")),
    "a normaliser with a second output": _set(lambda m: _n(m, NORMALIZER).output.append("spare")),
    "a token expression of another type": _attribute(TOKENIZER, "tokenexp", ["[a-zA-Z0-9_]{2,}"]),
    "a non-ASCII token expression": _attribute(TOKENIZER, "tokenexp", "[a-zA-Z0-9_\u00e9]{2,}"),
    "padding of another type": _attribute(TOKENIZER, "pad_value", ["#"]),
}


@pytest.mark.parametrize("what", list(EDITS))
def test_a_graph_that_is_not_exactly_the_pipeline_is_refused_at_construction(what: str) -> None:
    model = _model()
    EDITS[what](model)
    with pytest.raises(_NotThisGraph):
        _path(model)


def test_the_published_pipeline_is_taken_and_read_as_scikit_learn_fitted_it() -> None:
    pipeline, _ = tiny_spam_model()
    path = _path()
    vectorizer = pipeline.named_steps["tfidf"]
    assert (path.input_name, path.outputs, path.chunk_rows) == ("text", ["label", "probabilities"], CHUNK_ROWS)
    assert path.words == VOCABULARY and path.width == len(VOCABULARY)
    assert path.idf.dtype == np.float32 and path.idf.tolist() == vectorizer.idf_.astype(np.float32).tolist()
    # onnxruntime's StringNormalizer lower-cases the Kelvin sign and the dotted capital I to ASCII; NUL ends a string
    assert path._risky == [b"\x00", "\u0130".encode(), "\u212a".encode()]


def test_a_one_character_token_pattern_counts_one_character_words() -> None:
    pipeline, onnx_bytes = tiny_spam_model(r"[a-zA-Z0-9_]{1,}", ("x", "7"))
    path = _path(onnx.load_from_string(onnx_bytes))
    assert "x" in path.words and "7" in path.words
    assert path.agrees_with(load_session(onnx_bytes, 1))
    texts = ["x 7 free", "X", "7x", *[""] * (CHUNK_ROWS - 3)]
    fast = path.run(texts, ["label", "probabilities"])
    assert fast is not None
    assert fast[0][:3].tolist() == pipeline.predict(texts[:3]).tolist()
    assert np.abs(fast[1][:3] - pipeline.predict_proba(texts[:3])).max() < 1e-6
    assert _bits(fast) == _bits(_whole(onnx_bytes, texts))


def _whole(onnx_bytes: bytes, texts: list[str]) -> list[np.ndarray]:
    batch = np.array(texts, dtype=object).reshape(-1, 1)
    return [np.asarray(v) for v in load_session(onnx_bytes, 1).run(["label", "probabilities"], {"text": batch})]


def _bits(values: list[np.ndarray]) -> list[tuple[str, tuple[int, ...], bytes]]:
    return [(v.dtype.str, v.shape, np.ascontiguousarray(v).tobytes()) for v in values]


CHUNKS = {
    "words, case, digits, separators": [f"{w.upper() if i % 3 else w}, {i} x_{w}\u00e9{w}" for i, w in
                                        enumerate(WORDS * 4)][:CHUNK_ROWS - 3] + ["", "ROW row", "no_such_word"],
    "no known word anywhere": ["nothing here", ""] * (CHUNK_ROWS // 2),
    "the same word many times": ["free " * (i + 1) + "money" for i in range(CHUNK_ROWS)],
}


def test_the_rewrite_gives_the_graphs_bits_chunk_after_chunk() -> None:
    """One path over several chunks: the dense rows a chunk wrote are cleared before the next one is written."""
    _, onnx_bytes = tiny_spam_model()
    path = _path()
    for name in [*CHUNKS, *reversed(CHUNKS)]:
        texts = CHUNKS[name]
        fast = path.run(texts, ["label", "probabilities"])
        assert fast is not None, name
        assert _bits(fast) == _bits(_whole(onnx_bytes, texts)), name
        assert _bits(path.run(texts, ["probabilities"]) or []) == _bits(_whole(onnx_bytes, texts)[1:]), name


@pytest.mark.parametrize("odd", ["\u212a", "\u0130", "\x00", "\ud800"])
def test_a_chunk_with_a_text_the_graph_must_tokenize_is_left_to_it(odd: str) -> None:
    path = _path()
    texts = ["free money", "caf\u00e9 \u00e9t\u00e9 \u4e2d"] * (CHUNK_ROWS // 2)
    assert path.run(texts, ["label"]) is not None  # non-ASCII text without a risky character: the rewrite's
    texts[5] = f"free {odd}money"
    assert path.run(texts, ["label"]) is None


def test_only_whole_chunks_and_texts_shorter_than_the_limit_are_taken() -> None:
    path = _path()
    texts = ["free money"] * CHUNK_ROWS
    assert path.run(texts[:-1], ["label"]) is None and path.run([*texts, "x"], ["label"]) is None
    assert path.run([*texts[:-1], "a" * (MAX_TEXT_CHARS - 1)], ["label"]) is not None
    assert path.run([*texts[:-1], "a" * MAX_TEXT_CHARS], ["label"]) is None


def test_derive_takes_the_pipeline_and_leaves_anything_else_to_the_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    _, onnx_bytes = tiny_spam_model()
    whole = load_session(onnx_bytes, 1)
    assert isinstance(derive(onnx_bytes, session_options(1), whole, CHUNK_ROWS), TfidfPath)
    model = _model()
    EDITS["an L1 norm"](model)
    assert derive(model.SerializeToString(), session_options(1), whole, CHUNK_ROWS) is None
    with monkeypatch.context() as patch:  # one bit off: refused by the self-check
        patch.setattr(TfidfPath, "_l2", staticmethod(lambda squares, sums: np.sqrt(squares) / np.sqrt(sums)))
        assert derive(onnx_bytes, session_options(1), whole, CHUNK_ROWS) is None

    def failing(*_: object) -> None:
        raise RuntimeError("onnxruntime failed")
    monkeypatch.setattr(TfidfPath, "run", failing)
    assert derive(onnx_bytes, session_options(1), whole, CHUNK_ROWS) is None


def test_the_self_check_refuses_any_difference_in_bits_type_or_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    _, onnx_bytes = tiny_spam_model()
    whole = load_session(onnx_bytes, 1)
    path = _path()
    assert path.agrees_with(whole)
    original = TfidfPath.run
    changes: list[Callable[[Any], list[np.ndarray]]] = [
        lambda out: [out[0], np.nextafter(out[1], np.float32(2))],  # one ulp
        lambda out: [out[0].astype(np.int32), out[1]],  # the same values, another type
        lambda out: [out[0], out[1].reshape(-1, 1, 2)],  # the same bytes, another shape
        lambda out: [out[0]],  # an output missing
    ]
    for change in changes[:-1]:
        monkeypatch.setattr(TfidfPath, "run", lambda self, *a, change=change: change(original(self, *a)))
        assert not path.agrees_with(whole)
    monkeypatch.setattr(TfidfPath, "run", lambda self, *a: changes[-1](original(self, *a)))
    with pytest.raises(ValueError, match="zip"):  # derive() takes any error for a refusal
        path.agrees_with(whole)
    monkeypatch.setattr(TfidfPath, "run", lambda *_: None)
    assert not path.agrees_with(whole)


def test_the_self_check_chunk_uses_the_vocabulary_and_every_kind_of_separator(monkeypatch: pytest.MonkeyPatch) -> None:
    """What `agrees_with` runs: chunk_rows texts, every word of the vocabulary among them, upper and lower case,
    separators that split (space, punctuation, non-ASCII letters), then an empty text and an unknown word."""
    _, onnx_bytes = tiny_spam_model()
    path = _path()
    seen: list[list[str]] = []
    original = TfidfPath.run

    def recorded(self: TfidfPath, texts: list[str], *rest: Any) -> list[np.ndarray] | None:
        seen.append(list(texts))
        return original(self, texts, *rest)
    monkeypatch.setattr(TfidfPath, "run", recorded)
    assert path.agrees_with(load_session(onnx_bytes, 1)) and path.agrees_with(load_session(onnx_bytes, 1))
    texts, again = seen
    assert texts == again  # a fixed chunk
    assert len(texts) == CHUNK_ROWS and texts[-2:] == ["", "no_such_word_in_any_vocabulary"]
    # each text: words of the vocabulary, each followed by one of the separators below, either in lower or upper case
    word, separator = ("|".join(re.escape(w) for v in values for w in (v, v.upper())) for values in (VOCABULARY,
                                                                                                     SEPARATORS))
    assert all(re.fullmatch(f"(?:(?:{word})(?:{separator}))+", text) for text in texts[:-2])
    joined = " ".join(texts)
    assert all(w in joined and w.upper() in joined for w in VOCABULARY)
    assert all(c in joined for c in SEPARATORS)


SEPARATORS = (" ", "  ", "\n", ", ", ". ", "\t", "-", " 7 ", " x ", " \u00e9 ", " \u00df ", " \u4e2d ")


def test_code_points_are_the_range_as_one_string() -> None:
    assert _code_points(0x41, 0x44) == "ABC"
    assert _code_points(0x10FFFE, 0x110000) == "\U0010fffe\U0010ffff"


def test_onnxruntime_refusing_a_part_is_not_this_graph() -> None:
    model = _model()
    with pytest.raises(_NotThisGraph):
        tfidf_path._session([helper.make_node("NoSuchOp", ["a"], ["b"])],
                            [helper.make_tensor_value_info("a", TensorProto.FLOAT, [None])],
                            [helper.make_tensor_value_info("b", TensorProto.FLOAT, [None])], model,
                            session_options(1))


def _bytes_pool(model: onnx.ModelProto, word: str, replacement: bytes) -> None:
    """The TF-IDF pool with `word` replaced by `replacement` (any bytes), in place."""
    pool = [replacement if w == word.encode() else w for w in
            helper.get_attribute_value(next(a for a in _n(model, TFIDF).attribute if a.name == "pool_strings"))]
    _attribute(TFIDF, "pool_strings", pool, onnx.AttributeProto.STRINGS)(model)


ACCEPTED: dict[str, Callable[[], bytes]] = {
    "a vocabulary of one word": lambda: tiny_spam_model(max_features=1)[1],
    "a pool string that is not UTF-8 (never a token)": lambda: _edited(lambda m: _bytes_pool(m, "free", b"\xff\xfe")),
}


def _edited(edit: Callable[[onnx.ModelProto], None]) -> bytes:
    model = _model()
    edit(model)
    return model.SerializeToString()


@pytest.mark.parametrize("what", list(ACCEPTED))
def test_a_graph_of_the_pipeline_written_another_valid_way_is_taken_with_the_graphs_bits(what: str) -> None:
    onnx_bytes = ACCEPTED[what]()
    path = derive(onnx_bytes, session_options(1), load_session(onnx_bytes, 1), CHUNK_ROWS)
    assert isinstance(path, TfidfPath)
    texts = CHUNKS["words, case, digits, separators"]
    assert _bits(path.run(texts, ["label", "probabilities"]) or []) == _bits(_whole(onnx_bytes, texts))


def test_the_one_word_and_the_non_utf8_pools_are_read_as_written() -> None:
    pipeline, onnx_bytes = tiny_spam_model(max_features=1)
    path = _path(onnx.load_from_string(onnx_bytes))
    assert path.words == list(pipeline.named_steps["tfidf"].vocabulary_) and path.width == 1
    path = _path(onnx.load_from_string(ACCEPTED["a pool string that is not UTF-8 (never a token)"]()))
    assert path.words == [w for w in VOCABULARY if w != "free"] and path.width == len(VOCABULARY)


def test_run_options_reach_the_classifier_run() -> None:
    """The watchdog stops a run through its RunOptions: the rewrite's onnxruntime run must receive them."""
    options = ort.RunOptions()
    options.terminate = True
    with pytest.raises(Exception, match=r"Exiting due to terminate flag being set to true\.$"):
        _path().run(["free money"] * CHUNK_ROWS, ["label"], options)


def test_each_part_session_is_the_published_nodes_under_the_scorers_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two parts of the published graph run in onnxruntime: its LinearClassifier on [rows, vocabulary] floats and
    its StringNormalizer on a vector of strings, each with the session options the scorer gave (threads, logs)."""
    calls: list[tuple[list[str], list[tuple[str, int, list[Any]]], list[tuple[str, int, list[Any]]], Any]] = []
    original = tfidf_path._session

    def recorded(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
                 outputs: list[onnx.ValueInfoProto], *rest: Any) -> Any:
        calls.append(([n.op_type for n in nodes], [_described(i) for i in inputs], [_described(o) for o in outputs],
                      rest[-1]))
        return original(nodes, inputs, outputs, *rest)
    monkeypatch.setattr(tfidf_path, "_session", recorded)
    options = session_options(3)
    path = TfidfPath(_model(), options, CHUNK_ROWS)
    assert calls == [(["LinearClassifier"], [("tfidftr_norm", TensorProto.FLOAT, [None, len(VOCABULARY)])],
                      [("label", TensorProto.INT64, [None]), ("probabilities", TensorProto.FLOAT, [None, 2])], options),
                     (["StringNormalizer"], [("flattened", TensorProto.STRING, [None])],
                      [("normalized", TensorProto.STRING, [None])], options)]
    got = path._linear.get_session_options()
    assert (got.intra_op_num_threads, got.log_severity_level) == (3, 3)
    assert path._linear.get_providers() == ["CPUExecutionProvider"]


def _described(value: onnx.ValueInfoProto) -> tuple[str, int, list[Any]]:
    tensor = value.type.tensor_type
    return value.name, tensor.elem_type, [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]


def test_building_the_path_prints_and_warns_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    """Logs leave the enclave: onnxruntime's provider fallback, for one, would print and warn."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _path()
    assert capfd.readouterr() == ("", "")


def test_a_normaliser_that_does_not_lower_ascii_as_python_does_is_not_this_graph() -> None:
    """The sanity run of the graph's StringNormalizer: an UPPER one (or any other ASCII mapping) is refused."""
    path, model = _path(), _model()
    EDITS["upper case"](model)
    with pytest.raises(_NotThisGraph):
        path._risky_characters(_n(model, LOWER), model, session_options(1))
