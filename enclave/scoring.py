"""Scoring inside the confidential worker: an onnxruntime session built from model bytes in memory.

Imports only the standard library, numpy and onnxruntime (this module is in the measured TCB); building a
session also derives the bit-identical TF-IDF path of `enclave.tfidf_path`, which parses the graph with onnx.

Determinism: ``score`` gives every text the same bits whatever batch it arrives in. onnxruntime alone
does not: the LinearClassifier's matrix product takes another MLAS code path for a single row (and, with
2 threads, for 2-3 rows, split one per thread), which rounds differently in the last bit (|Δp| ~1.5e-7;
tokenizer, TF-IDF and normaliser outputs were identical). So texts are run in chunks of exactly
``CHUNK_ROWS`` rows, the last chunk padded with empty strings: every run has the same shape, and rows
do not mix. ``tests/model`` checks this bit for bit (whole vs chunks vs one by one, 1 and 2 threads).
Bits are reproducible on one machine type; another CPU (AVX2 vs AVX-512 kernels) may differ in the
last bit.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

INPUT_NAME = "text"
LABEL_OUTPUT = "label"
PROBABILITY_OUTPUT = "probabilities"
CHUNK_ROWS = 64


class ModelLoadError(ValueError):
    """The model bytes are not a loadable ONNX model, or do not have the scoring schema."""


class ModelSession:
    """One onnxruntime session for a spam model: ``text`` string [N, 1] -> ``label`` int64 [N] and
    ``probabilities`` float32 [N, 2] (column 1 = spam). Built from bytes; nothing is written to disk."""

    def __init__(self, onnx_bytes: bytes, threads: int = 1, *, rewrite: bool = True) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads = threads
        self._session = load_session(onnx_bytes, threads)
        _check_schema(self._session)
        # The same bits, faster, for a TF-IDF graph; None: the graph runs as published. Imported here: it parses
        # the graph with `onnx` (in the worker's closure already), which importing this module does not need.
        from enclave import tfidf_path

        self.rewrite = tfidf_path.derive(onnx_bytes, session_options(threads), self._session, CHUNK_ROWS) \
            if rewrite else None
        self._lock = threading.Lock()  # one run at a time: the pool threads belong to this session

    def score(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Return (spam probability float32 [N], label int8 [N]) for ``texts``, in their order."""
        n = len(texts)
        probabilities = np.empty(n, dtype=np.float32)
        labels = np.empty(n, dtype=np.int8)
        order = sorted(range(n), key=lambda i: len(texts[i]))  # similar lengths together: faster
        for start in range(0, n, CHUNK_ROWS):
            rows = order[start : start + CHUNK_ROWS]
            p, y = self._run_chunk([texts[i] for i in rows])
            probabilities[rows] = p
            labels[rows] = y
        return probabilities, labels

    def _run_chunk(self, chunk: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Run exactly CHUNK_ROWS rows (padding with empty texts) and return the real rows' results."""
        batch = np.full((CHUNK_ROWS, 1), "", dtype=object)
        for i, text in enumerate(chunk):
            if not isinstance(text, str):
                raise TypeError(f"texts must be str, found {type(text).__name__} at chunk row {i}")
            batch[i, 0] = text
        with self._lock:
            fast = self.rewrite.run(list(batch[:, 0]), [LABEL_OUTPUT, PROBABILITY_OUTPUT]) if self.rewrite else None
            label, proba = fast or self._session.run([LABEL_OUTPUT, PROBABILITY_OUTPUT], {INPUT_NAME: batch})
        k = len(chunk)
        return proba[:k, 1], label[:k]  # `score` stores them as float32 and int8


def session_options(threads: int) -> ort.SessionOptions:
    """CPU, sequential, `threads` intra-op threads, quiet logs, no profiling file."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: logs leave the enclave
    options.enable_profiling = False  # profiling would write a file
    return options


def load_session(onnx_bytes: bytes, threads: int) -> ort.InferenceSession:
    """An onnxruntime session from bytes in memory, with `session_options(threads)`."""
    if not isinstance(onnx_bytes, bytes | bytearray | memoryview) or len(onnx_bytes) == 0:
        raise ModelLoadError("model bytes are empty or not bytes")
    try:
        return ort.InferenceSession(bytes(onnx_bytes), session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        raise ModelLoadError(f"onnxruntime cannot load the model ({len(onnx_bytes)} bytes): {exc}") from None


def _check_schema(session: ort.InferenceSession) -> None:
    """Insist on the card's schema; name what was expected and what was found."""
    inputs = [(i.name, i.type, list(i.shape)) for i in session.get_inputs()]
    if len(inputs) != 1 or inputs[0][0] != INPUT_NAME or inputs[0][1] != "tensor(string)":
        raise ModelLoadError(f"expected one input 'text' of type tensor(string) [N, 1], found {inputs}")
    if len(inputs[0][2]) != 2 or inputs[0][2][1] not in (1, None):
        raise ModelLoadError(f"expected input 'text' of shape [N, 1], found {inputs[0][2]}")
    outputs = {o.name: (o.type, list(o.shape)) for o in session.get_outputs()}
    expected = {LABEL_OUTPUT: ("tensor(int64)", 1), PROBABILITY_OUTPUT: ("tensor(float)", 2)}
    for name, (type_, rank) in expected.items():
        found = outputs.get(name)
        if found is None or found[0] != type_ or len(found[1]) != rank:
            raise ModelLoadError(f"expected output {name!r} of type {type_} and rank {rank}, found {outputs}")
    if outputs[PROBABILITY_OUTPUT][1][1] not in (2, None) and not isinstance(outputs[PROBABILITY_OUTPUT][1][1], str):
        raise ModelLoadError(f"expected output 'probabilities' of shape [N, 2], found {outputs[PROBABILITY_OUTPUT]}")


