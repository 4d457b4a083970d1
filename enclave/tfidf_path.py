"""A faster, bit-identical path for TF-IDF + linear-classifier graphs, derived from the published model at load.

skl2onnx exports a TfidfVectorizer + LogisticRegression pipeline as ``Reshape -> StringNormalizer(LOWER) ->
Tokenizer(tokenexp) -> Flatten -> TfIdfVectorizer(TF, unigrams) -> Mul(idf) -> Normalizer(L2) ->
LinearClassifier``. onnxruntime runs every step after the tokenizer on dense [rows, vocabulary] tensors, most
of whose entries are zero, and its tokenizer is slower than Python's ``bytes.split``. This path computes the same
numbers with the same float32 operations in the same order, on the non-zero entries only, and runs the
graph's own LinearClassifier node (same attributes, same [CHUNK_ROWS, vocabulary] input shape) in
onnxruntime:

- tokens: the UTF-8 bytes with A-Z lower-cased and every byte outside ``[a-z0-9_]`` a space, split; runs
  shorter than the token pattern's least length match no vocabulary entry. Equal to the graph's tokens for a
  text without a NUL and without a character that the graph's own StringNormalizer lower-cases to ASCII
  (found at load by running that node over every code point); other chunks run the whole graph;
- counts: exact integers (a text shorter than 2**24 characters has fewer than 2**24 of any token);
- ``Mul``: count * idf, float32, element by element;
- ``Normalizer`` L2, as onnxruntime's kernel does it: ``sum += x*x`` in float32 in column order (zeros add
  nothing), then ``sqrt(x*x / sum)`` per entry;
- ``LinearClassifier``: onnxruntime's kernel on the dense normalised rows.

`derive` returns None for any graph that is not exactly this shape, and for one whose outputs differ by a
single bit from the whole graph's on a fixed self-check chunk (texts built from its own vocabulary): the
caller then runs the published graph unmodified. The model's digest is checked by the caller on the
published bytes; nothing here changes what is scored, only how.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from itertools import pairwise, repeat

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

PIPELINE = (("", "Reshape"), ("", "StringNormalizer"), ("com.microsoft", "Tokenizer"), ("", "Flatten"),
            ("", "TfIdfVectorizer"), ("", "Mul"), ("ai.onnx.ml", "Normalizer"), ("ai.onnx.ml", "LinearClassifier"))
MAX_TEXT_CHARS = 1 << 24  # counts stay exact float32 integers below this
_ASCII = re.compile("[\x00-\x7f]")
_WORD = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_")
# Bytes in the token class stay (A-Z lower-cased), every other byte becomes a space: UTF-8's multi-byte
# characters become separators, as they are for the graph's ASCII token class.
_TABLE = bytes(c + 32 if 65 <= c <= 90 else c if c in _WORD else 32 for c in range(256))
_ROW_MARK = b" ROW "
_MARK_COLUMN = -2


def derive(onnx_bytes: bytes, options: ort.SessionOptions, whole: ort.InferenceSession,
           chunk_rows: int) -> TfidfPath | None:
    """The fast path for this published graph, or None when the graph is not the TF-IDF pipeline above or the
    path's outputs differ from `whole`'s (the session of the published bytes) on the self-check chunk."""
    try:
        path = TfidfPath(onnx.load_from_string(bytes(onnx_bytes)), options, chunk_rows)
    except _NotThisGraph:
        return None
    try:
        return path if path.agrees_with(whole) else None
    except Exception:  # noqa: BLE001 - onnxruntime's own error types: any failure means the whole graph runs
        return None


class _NotThisGraph(Exception):
    """The graph is not the exact TF-IDF + linear classifier pipeline this path reproduces."""


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _expect(condition: bool) -> None:
    if not condition:
        raise _NotThisGraph


class TfidfPath:
    """Scores chunks of exactly `chunk_rows` texts; `run` returns None for a chunk it leaves to the graph."""

    def __init__(self, model: onnx.ModelProto, options: ort.SessionOptions, chunk_rows: int) -> None:
        graph = model.graph
        nodes = list(graph.node)
        _expect(tuple((n.domain, n.op_type) for n in nodes) == PIPELINE)
        reshape, lower, tokenizer, flatten, tfidf, mul, normalizer, linear = nodes
        _expect(len(graph.input) == 1 and graph.input[0].type.tensor_type.elem_type == TensorProto.STRING)
        self.input_name = graph.input[0].name
        # A chain: each node reads the previous one's only output; nothing else is read or exposed.
        _expect(reshape.input[0] == self.input_name and len(linear.input) == 1)
        _expect(all(n.input[0] == before.output[0] and len(before.output) == 1 for before, n in pairwise(nodes)))
        _expect([o.name for o in graph.output] == list(linear.output))
        initializers = {i.name: i for i in graph.initializer}
        _expect(len(reshape.input) == 2 and reshape.input[1] in initializers)
        _expect(numpy_helper.to_array(initializers[reshape.input[1]]).tolist() == [-1])
        _expect(len(flatten.input) == 1 and _attrs(flatten).get("axis", 1) == 1)
        a = _attrs(lower)
        _expect(a.get("case_change_action") == b"LOWER" and not a.get("stopwords") and len(lower.input) == 1)
        a = _attrs(tokenizer)
        _expect(a.get("mark") == 0 and a.get("mincharnum") == 1 and "separators" not in a and "tokenexp" in a)
        pad = a["pad_value"]
        expression = a["tokenexp"]
        if not (isinstance(expression, bytes) and isinstance(pad, bytes)):
            raise _NotThisGraph
        # Only runs of ASCII word characters of a least length: what `bytes.split` on translated text finds.
        found = re.fullmatch(rb"\[a-zA-Z0-9_\]\{(\d+),\}", expression)
        _expect(found is not None)
        assert found is not None
        shortest = max(1, int(found.group(1)))
        a = _attrs(tfidf)
        _expect(a.get("mode") == b"TF" and a.get("min_gram_length") == 1 and a.get("max_gram_length") == 1
                and a.get("max_skip_count") == 0 and list(a.get("ngram_counts", [])) == [0]  # type: ignore[call-overload]
                and "pool_int64s" not in a and len(tfidf.input) == 1)
        pool = list(a["pool_strings"])  # type: ignore[call-overload]
        indexes = [int(i) for i in a["ngram_indexes"]]  # type: ignore[attr-defined]
        _expect(len(pool) == len(indexes) == len(set(pool)) == len(set(indexes)) > 0 and min(indexes) >= 0)
        _expect(pad not in pool)  # the graph would count the tokenizer's padding
        self.width = max(indexes) + 1
        # Pool strings the graph's tokenizer can produce (lower-case runs); others never count, in either path.
        self._columns = {w: i for w, i in zip(pool, indexes, strict=True)
                         if len(w) >= shortest and re.fullmatch(rb"[a-z0-9_]+", w)}
        self._columns[_ROW_MARK.strip()] = _MARK_COLUMN
        self.words = sorted(w.decode() for w, i in self._columns.items() if i >= 0)
        _expect(mul.input[0] == tfidf.output[0] and len(mul.input) == 2 and mul.input[1] in initializers)
        idf = numpy_helper.to_array(initializers[mul.input[1]])
        _expect(idf.dtype == np.float32 and idf.shape == (self.width,) and bool(np.all(np.isfinite(idf))))
        self.idf = idf
        _expect(_attrs(normalizer).get("norm") == b"L2")
        self.chunk_rows = chunk_rows
        self.outputs = list(linear.output)
        self._linear = _session([linear], [helper.make_tensor_value_info(linear.input[0], TensorProto.FLOAT,
                                                                         [None, self.width])],
                                list(graph.output), model, options)
        self._linear_input = linear.input[0]
        self._risky = self._risky_characters(lower, model, options)
        self._dense = np.zeros((chunk_rows, self.width), np.float32)
        self._touched: tuple[np.ndarray, np.ndarray] | None = None

    def _risky_characters(self, lower: onnx.NodeProto, model: onnx.ModelProto,
                          options: ort.SessionOptions) -> list[bytes]:
        """The characters (UTF-8) after which this path's tokens could differ from the graph's: NUL, and any
        non-ASCII character that the graph's own StringNormalizer lower-cases to ASCII (this path keeps every
        non-ASCII byte a separator)."""
        normalizer = _session([lower], [helper.make_tensor_value_info(lower.input[0], TensorProto.STRING, [None])],
                              [helper.make_tensor_value_info(lower.output[0], TensorProto.STRING, [None])],
                              model, options)
        ascii_chars = "".join(map(chr, range(1, 128)))
        every = _code_points(0x80, 0xD800) + _code_points(0xE000, 0x110000)
        lowered = normalizer.run(None, {lower.input[0]: np.array([ascii_chars, every], dtype=object)})[0]
        _expect(lowered[0] == ascii_chars.lower() and len(lowered[1]) == len(every))
        risky = {"\x00"} | {every[m.start()] for m in _ASCII.finditer(lowered[1])}
        return [c.encode() for c in sorted(risky)]

    def _encoded(self, texts: Sequence[str]) -> list[bytes] | None:
        """Each text's UTF-8 with every byte outside the token class a space and A-Z lower-cased, or None when
        a text needs the graph's own tokenizer (a NUL or a risky character, too long, or not encodable)."""
        out = []
        for text in texts:
            if len(text) >= MAX_TEXT_CHARS:
                return None
            try:
                data = text.encode()
            except UnicodeEncodeError:  # a lone surrogate: the graph refuses it as it always did
                return None
            if b"\x00" in data or (not data.isascii() and any(r in data for r in self._risky)):
                return None
            out.append(data.translate(_TABLE))
        return out

    def run(self, texts: Sequence[str], fetch: Sequence[str],
            options: ort.RunOptions | None = None) -> list[np.ndarray] | None:
        """The outputs `fetch` (names of the graph's outputs) for exactly `chunk_rows` texts, or None when one
        of them needs the graph's own tokenizer. `options` go to onnxruntime's run (a watchdog's terminate)."""
        encoded = self._encoded(texts) if len(texts) == self.chunk_rows else None
        if encoded is None:
            return None
        # One split for the chunk: rows are cut by a marker no lower-cased text can hold (upper case).
        tokens = _ROW_MARK.join(encoded).split()
        columns = np.fromiter(map(self._columns.get, tokens, repeat(-1)), np.int64, count=len(tokens))
        rows = np.cumsum(columns == _MARK_COLUMN)
        known = columns >= 0
        # Sorted (row, column) pairs with their counts: each row's terms in column order, as the kernels sum.
        keys, counts = np.unique(rows[known] * self.width + columns[known], return_counts=True)
        row, column = np.divmod(keys, self.width)
        x = counts.astype(np.float32) * self.idf[column]
        squares = x * x
        starts = np.searchsorted(row, np.arange(self.chunk_rows))
        # Each row's squares in column order, left-aligned, zero-padded: cumsum adds left to right in float32.
        longest = int(np.bincount(row).max()) if len(row) else 1
        padded = np.zeros((self.chunk_rows, longest), np.float32)
        padded[row, np.arange(len(row)) - starts[row]] = squares
        sums = np.cumsum(padded, axis=1)[:, -1]
        dense = self._dense
        if self._touched is not None:
            dense[self._touched] = 0.0
        dense[row, column] = self._l2(squares, sums[row])  # a row without terms stays zero (sum == 0 leaves it)
        self._touched = (row, column)
        return [np.asarray(v) for v in self._linear.run(list(fetch), {self._linear_input: dense}, options)]

    @staticmethod
    def _l2(squares: np.ndarray, sums: np.ndarray) -> np.ndarray:
        """onnxruntime's L2 Normalizer per entry from x*x: sqrt(x*x / sum), not x / sqrt(sum) (other bits); x >= 0."""
        return np.sqrt(squares / sums)

    def agrees_with(self, whole: ort.InferenceSession) -> bool:
        """Bit for bit the whole graph's outputs on a fixed chunk of texts built from the vocabulary."""
        rng = random.Random(0)
        words = self.words
        fillers = [" ", "  ", "\n", ", ", ". ", "\t", "-", " 7 ", " x ", " é ", " \u00df ", " \u4e2d "]
        texts = []
        for row in range(self.chunk_rows - 2):
            picked = [rng.choice(words) for _ in range(rng.randint(1, 60 + 10 * row))]
            texts.append("".join(w.upper() if rng.random() < 0.2 else w for w in
                                 (x for word in picked for x in (word, rng.choice(fillers)))))
        texts += ["", "no_such_word_in_any_vocabulary"]
        fetch = list(self.outputs)
        fast = self.run(texts, fetch)
        if fast is None:
            return False
        batch = np.array(texts, dtype=object).reshape(-1, 1)
        reference = whole.run(fetch, {self.input_name: batch})
        return all(np.asarray(r).dtype == f.dtype and np.asarray(r).shape == f.shape
                   and np.asarray(r).tobytes() == f.tobytes() for r, f in zip(reference, fast, strict=True))


def _code_points(start: int, stop: int) -> str:
    """Every code point in [start, stop) as one string (no surrogates in the range)."""
    return np.arange(start, stop, dtype="<u4").tobytes().decode("utf-32-le")


def _session(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
             model: onnx.ModelProto, options: ort.SessionOptions) -> ort.InferenceSession:
    """A session of some of the published graph's own nodes (same attributes), under the model's opsets."""
    graph = helper.make_graph(nodes, "cscore-tfidf-part", inputs, outputs)
    part = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    try:
        return ort.InferenceSession(part.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types; the caller then runs the whole graph
        raise _NotThisGraph from exc
