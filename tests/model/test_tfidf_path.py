"""enclave.tfidf_path: the TF-IDF rewrite gives the published graph's bits, or is not used.

Bit for bit against onnxruntime running the published bytes unmodified (`rewrite=False`), on the held-out
corpus and on texts made to find a difference (case, digits, underscores, non-ASCII separators, the Kelvin
sign and dotted capital I that lower-case to ASCII, NUL, the row marker's own word).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from enclave import tfidf_path
from enclave.runner import ContractSession
from enclave.scoring import CHUNK_ROWS, ModelSession, load_session, session_options
from sdk.contracts import SPAM_CONTRACT
from wire.contract import Contract

from .conftest import TrainedModel

HARD_TEXTS = [
    "", " ", "x", "xx", "_", "__", "FREE MONEY Free money free", "click-here: http://x.example/a_b?c=1&d=2",
    "K\u212aelvin \u212a\u212a sign", "\u0130stanbul \u0130\u0130 DOTTED", "nul\x00byte in\x00side", "ROW row Row",
    "Gr\u00fc\u00dfe aus M\u00fcnchen, stra\u00dfe", "\U0001f600money\U0001f600 \u00e9t\u00e9 na\u00efve",
    "\u65e5\u672c\u8a9e\u306e\u30e1\u30fc\u30eb free", "\u0391\u0392\u0393 \u0434\u0435\u043d\u044c\u0433\u0438",
    "tab\tnew\nline\rreturn\x0bvt\x0cff", "a" * 5000, "money " * 3000, "12 345 6789 00_11", "\u00a0nbsp\u2003em",
]


def _bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


@pytest.fixture(scope="module")
def texts(held_out_texts: tuple[list[str], list[int]]) -> list[str]:
    return held_out_texts[0] + HARD_TEXTS


@pytest.mark.parametrize("threads", [1, 2])
def test_rewrite_gives_the_published_graphs_bits(full_model: TrainedModel, texts: list[str], threads: int) -> None:
    fast = ModelSession(full_model.onnx_bytes, threads=threads)
    assert fast.rewrite is not None  # the spam model is the graph the rewrite reproduces
    plain = ModelSession(full_model.onnx_bytes, threads=threads, rewrite=False)
    assert plain.rewrite is None
    for got, expected in zip(fast.score(texts), plain.score(texts), strict=True):
        assert _bits(got) == _bits(expected)


def test_each_hard_text_alone_and_chunks_without_any_term(small_model: TrainedModel) -> None:
    fast = ModelSession(small_model.onnx_bytes)
    plain = ModelSession(small_model.onnx_bytes, rewrite=False)
    for text in [*HARD_TEXTS, "", "!!! ??? ..."]:
        assert _bits(fast.score([text])[0]) == _bits(plain.score([text])[0]), repr(text[:40])
    assert _bits(fast.score([""] * CHUNK_ROWS)[0]) == _bits(plain.score([""] * CHUNK_ROWS)[0])


def test_chunks_with_a_risky_character_run_the_whole_graph(small_model: TrainedModel) -> None:
    rewrite = ModelSession(small_model.onnx_bytes).rewrite
    assert rewrite is not None
    fetch = ["label", "probabilities"]
    plain = ["free money now"] * CHUNK_ROWS
    assert rewrite.run(plain, fetch) is not None
    for risky in ("\u212a", "\u0130", "\x00", "\ud800"):  # Kelvin, dotted I, NUL, a lone surrogate
        assert rewrite.run([*plain[:-1], f"free {risky}money"], fetch) is None, repr(risky)
    assert rewrite.run(plain[:-1], fetch) is None  # not a whole chunk


def test_a_rewrite_a_few_bits_off_is_refused(small_model: TrainedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """The load-time self-check is what guards the bits: the textbook L2 (x / sqrt(sum)), or idf weights one
    ulp off, fail it, and the session then runs the graph as published."""
    whole = load_session(small_model.onnx_bytes, 1)
    path = tfidf_path.TfidfPath(onnx.load_from_string(small_model.onnx_bytes), session_options(1), CHUNK_ROWS)
    assert path.agrees_with(whole)
    path._l2 = lambda squares, sums: np.sqrt(squares) / np.sqrt(sums)  # type: ignore[method-assign]
    assert not path.agrees_with(whole)
    del path._l2
    path.idf = np.nextafter(path.idf, np.float32(np.inf))
    assert not path.agrees_with(whole)
    textbook = staticmethod(lambda squares, sums: np.sqrt(squares) / np.sqrt(sums))  # sqrt(x*x) is x exactly
    monkeypatch.setattr(tfidf_path.TfidfPath, "_l2", textbook)
    assert ModelSession(small_model.onnx_bytes).rewrite is None


def _edited(onnx_bytes: bytes, op_type: str, name: str, value: object) -> bytes:
    model = onnx.load_from_string(onnx_bytes)
    node = next(n for n in model.graph.node if n.op_type == op_type)
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute(name, value)])
    return model.SerializeToString()


@pytest.mark.parametrize("op_type, name, value", [
    ("Normalizer", "norm", "L1"),  # another normalisation
    ("Tokenizer", "tokenexp", "[a-zA-Z0-9_]{2,5}"),  # runs cut at 5: not what split finds
    ("Tokenizer", "tokenexp", "[a-z]{2,}"),  # another character class
    ("TfIdfVectorizer", "mode", "TFIDF"),  # weights would count
    ("StringNormalizer", "case_change_action", "UPPER"),
])
def test_another_graph_runs_as_published(small_model: TrainedModel, op_type: str, name: str, value: object) -> None:
    edited = _edited(small_model.onnx_bytes, op_type, name, value)
    session = ModelSession(edited)
    assert session.rewrite is None
    texts = HARD_TEXTS[:8]
    assert _bits(session.score(texts)[0]) == _bits(ModelSession(edited, rewrite=False).score(texts)[0])


def test_the_contract_runner_uses_it_with_the_same_bits(small_model: TrainedModel, texts: list[str]) -> None:
    contract = Contract.parse(SPAM_CONTRACT)
    fast = ContractSession(small_model.onnx_bytes, contract)
    plain = ContractSession(small_model.onnx_bytes, contract, rewrite=False)
    assert fast.rewrite is not None and plain.rewrite is None
    column = contract.inputs[0].columns[0]
    got, expected = fast.run({column: texts}, len(texts)), plain.run({column: texts}, len(texts))
    assert got.keys() == expected.keys()
    assert all(_bits(got[k]) == _bits(expected[k]) for k in got)
