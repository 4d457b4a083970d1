"""The contract-driven runner: any ONNX model whose signed card passes validation, run unmodified.

The card's contract (`wire.contract`) says which columns feed which tensors through which preprocessing
(`enclave.preprocess`), and which output tensors become which result columns. The contract is checked
against the onnxruntime session at load (`wire.contract.check_graph`), so a model that does not match
its card never scores a row.

Determinism, as for the spam model (`enclave.scoring`): rows run in chunks of exactly ``CHUNK_ROWS``,
the last one padded with the preprocessing's filler row, so every run has the same shapes and a row
gets the same bits whatever batch, shard or position it arrives in.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import onnxruntime as ort
import pyarrow as pa

from enclave import preprocess
from enclave.limits import DEFAULT_LIMITS, RunLimits, watched
from enclave.scoring import CHUNK_ROWS, ModelLoadError, load_session, session_options
from wire.contract import Contract, ContractMismatch, OutputSpec, TensorInfo, check_graph

_ORT_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(int64)": "int64",
               "tensor(int32)": "int32", "tensor(string)": "string"}
_LABEL_RANGES = {"int8": (-(1 << 7), (1 << 7) - 1), "int16": (-(1 << 15), (1 << 15) - 1),
                 "int32": (-(1 << 31), (1 << 31) - 1), "int64": (-(1 << 63), (1 << 63) - 1)}
_CACHE_SIZE = 4


class OutputRefused(ValueError):
    """A model output cannot become the result column its contract names (a label outside the classes)."""


class ContractSession:
    """One onnxruntime session and the contract it runs under. Built from bytes; nothing is written to disk."""

    def __init__(self, onnx_bytes: bytes, contract: Contract, threads: int = 1, *, rewrite: bool = True) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.contract = contract
        self.threads = threads
        self._session = load_session(onnx_bytes, threads)
        try:
            check_graph(contract, tensor_infos(self._session.get_inputs()), tensor_infos(self._session.get_outputs()))
        except ContractMismatch as exc:
            raise ModelLoadError(f"the model does not match its card's contract: {exc}") from None
        self._fetch = list(dict.fromkeys(o.tensor for o in contract.outputs))
        self._lock = threading.Lock()  # one run at a time: the pool threads belong to this session
        # The same bits, faster, for a TF-IDF graph fed one email-text column (`enclave.tfidf_path`).
        from enclave import tfidf_path  # parses the graph with `onnx`: at load, not at import

        # Only for a contract whose one input is the email text: `_run_chunk` hands the rewrite that tensor.
        self.rewrite = tfidf_path.derive(onnx_bytes, session_options(threads), self._session, CHUNK_ROWS) \
            if rewrite and len(contract.inputs) == 1 and contract.inputs[0].kind == "email-text" else None

    def run(self, columns: dict[str, Sequence[object]], rows: int,
            limits: RunLimits = DEFAULT_LIMITS) -> dict[str, np.ndarray]:
        """Output tensors by name, one row per input row in input order: {tensor: array [rows, ...]}.

        `columns` holds the shard's values by column name (each of length `rows`). Raises
        preprocess.InputRefused naming the row for a value that does not fit the contract, and
        enclave.limits.LimitExceeded when a chunk's run outgrows the platform's `limits`.
        """
        pads = {spec.tensor: preprocess.padding(spec) for spec in self.contract.inputs}
        # Texts of similar length together when the first input is the email text; rows never mix, so no bit changes.
        order = preprocess.order_key(self.contract.inputs[0], columns) or list(range(rows))
        outputs: dict[str, np.ndarray] = {}
        for start in range(0, rows, CHUNK_ROWS):
            picked = order[start:start + CHUNK_ROWS]
            # Per chunk: memory is bounded by CHUNK_ROWS decoded rows, not by the shard.
            chunk: dict[str, Sequence[object]] = {name: [values[i] for i in picked] for name, values in columns.items()}
            feeds = {spec.tensor: _padded(preprocess.tensor(spec, chunk, len(picked), index=picked), pads[spec.tensor])
                     for spec in self.contract.inputs}
            results = self._run_chunk(feeds, limits)
            for name, value in zip(self._fetch, results, strict=True):
                if name not in outputs:
                    outputs[name] = np.empty((rows, *value.shape[1:]), dtype=value.dtype)
                outputs[name][picked] = value[:len(picked)]
        if rows == 0:
            return {name: np.empty((0,), dtype=np.float32) for name in self._fetch}
        return outputs

    def _run_chunk(self, feeds: dict[str, np.ndarray], limits: RunLimits) -> list[np.ndarray]:
        with self._lock:
            def run(options: ort.RunOptions) -> list[np.ndarray]:
                if self.rewrite is not None:
                    fast = self.rewrite.run(list(feeds[self.contract.inputs[0].tensor][:, 0]), self._fetch, options)
                    if fast is not None:
                        return fast
                return list(self._session.run(self._fetch, feeds, options))

            return [np.asarray(v) for v in watched(run, limits, CHUNK_ROWS)]

    def results(self, ids: pa.Array, columns: dict[str, Sequence[object]], digits: int | None,
                limits: RunLimits = DEFAULT_LIMITS) -> dict[str, pa.Array]:
        """The result columns (the id, then each output's column) for one shard's rows, run within `limits`."""
        rows = len(ids)
        outputs = self.run(columns, rows, limits)
        table: dict[str, pa.Array] = {self.contract.id_column: ids}
        for spec in self.contract.outputs:
            table[spec.column] = _column(spec, self.contract, outputs[spec.tensor], rows, digits)
        return table


def tensor_infos(args: Sequence[ort.NodeArg]) -> list[TensorInfo]:
    """onnxruntime's declared inputs or outputs in the contract's terms."""
    return [TensorInfo(a.name, _ORT_DTYPES.get(a.type, a.type), tuple(a.shape)) for a in args]


def _padded(batch: np.ndarray, pad: np.ndarray) -> np.ndarray:
    """`batch` and as many filler rows as make CHUNK_ROWS (none for a full chunk)."""
    return np.concatenate([batch, np.repeat(pad, CHUNK_ROWS - len(batch), axis=0)])


def _column(spec: OutputSpec, contract: Contract, value: np.ndarray, rows: int, digits: int | None) -> pa.Array:
    if rows == 0:
        return pa.array([], _arrow_type(spec))
    if spec.kind == "probability":
        return _precision(value[:, spec.class_index], digits)
    if spec.kind == "value":
        return _precision(value.reshape(rows), digits)
    if spec.kind == "probabilities":
        if digits == 0:
            return pa.nulls(rows, pa.list_(pa.float32()))
        width = value.shape[1]
        flat = _precision(value.reshape(-1), digits)
        offsets = pa.array(np.arange(0, rows * width + 1, width))  # from_arrays makes them int32: list<float32>
        return pa.ListArray.from_arrays(offsets, flat)
    labels = value.reshape(rows).astype(np.int64)
    if spec.kind == "class":
        classes = contract.classes or ()
        bad = np.flatnonzero((labels < 0) | (labels >= len(classes)))
        if bad.size:
            # Neither the value nor the row: a provider's graph chooses both, and this text reaches the platform.
            raise OutputRefused(f"output {spec.tensor!r}: a label outside the card's {len(classes)} classes "
                                f"(0..{len(classes) - 1})")
        return pa.array([classes[i] for i in labels])  # rows > 0 strings: a string column
    low, high = _LABEL_RANGES[spec.dtype or "int64"]
    bad = np.flatnonzero((labels < low) | (labels > high))
    if bad.size:
        raise OutputRefused(f"output {spec.tensor!r}: a label that does not fit the card's {spec.dtype}")
    return pa.array(labels.astype(np.dtype(spec.dtype or "int64")))


def _arrow_type(spec: OutputSpec) -> pa.DataType:
    if spec.kind in ("probability", "value"):
        return pa.float32()
    if spec.kind == "probabilities":
        return pa.list_(pa.float32())
    return pa.string() if spec.kind == "class" else pa.from_numpy_dtype(np.dtype(spec.dtype or "int64"))


def _precision(values: np.ndarray, digits: int | None) -> pa.Array:
    """The output precision the provider's card allows: full float32, rounded to `digits`, or none (nulls)."""
    values = np.asarray(values, dtype=np.float32)
    if digits == 0:
        return pa.nulls(len(values), pa.float32())
    if digits is not None:
        values = np.round(values.astype(np.float64), digits).astype(np.float32)
    return pa.array(values)  # a float32 array: a float32 column


_cache: OrderedDict[tuple[str, str, str, int], ContractSession] = OrderedDict()
_cache_lock = threading.Lock()


def contract_session_for(digest: str, contract: Contract, loader: Callable[[], bytes], threads: int = 1, *,
                         namespace: str = "confidential") -> ContractSession:
    """The cached session for the model whose SHA-256 is `digest`, run under `contract`.

    `loader` is called only on a miss, and its bytes must hash to `digest` (else ModelLoadError). The key
    holds the contract too: the same bytes under another card's contract are another session. `namespace`
    keeps models loaded by different paths apart (a plaintext baseline never reaches a confidential model).
    """
    expected = digest.removeprefix("sha256:").lower()
    terms = hashlib.sha256(json.dumps(contract.to_json(), sort_keys=True).encode()).hexdigest()
    key = (namespace, expected, terms, threads)
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            _cache.move_to_end(key)
            return cached
    onnx_bytes = loader()
    actual = hashlib.sha256(onnx_bytes).hexdigest()
    if actual != expected:
        raise ModelLoadError(f"model bytes hash to sha256:{actual}, expected sha256:{expected}")
    session = ContractSession(onnx_bytes, contract, threads=threads)
    with _cache_lock:
        _cache[key] = session
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return session


def clear_contract_sessions() -> None:
    """Drop every cached session (their weights go with them)."""
    with _cache_lock:
        _cache.clear()
