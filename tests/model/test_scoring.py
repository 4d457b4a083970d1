"""enclave.scoring: a session from bytes, schema checks, batch-invariant bits, the per-digest cache."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from enclave.scoring import CHUNK_ROWS, ModelLoadError, ModelSession
from sdk.training import sklearn_spam_probability

from .conftest import TrainedModel

EDGE_TEXTS = ["", " ", "\n", "free money click here " * 2000, "Grüße \u212a \U0001f600 日本語", "x"]


@pytest.fixture(scope="module")
def texts(held_out_texts: tuple[list[str], list[int]]) -> list[str]:
    return held_out_texts[0][:400] + EDGE_TEXTS


def _bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


@pytest.mark.parametrize("threads", [1, 2])
def test_same_text_same_bits_whatever_the_batch(small_model: TrainedModel, texts: list[str], threads: int) -> None:
    session = ModelSession(small_model.onnx_bytes, threads=threads)
    whole_p, whole_y = session.score(texts)
    rng = random.Random(threads)
    for size in (1, 2, 3, 5, 17, CHUNK_ROWS - 1, CHUNK_ROWS, CHUNK_ROWS + 1, 200):
        parts = [session.score(texts[i : i + size]) for i in range(0, len(texts), size)]
        assert _bits(np.concatenate([p for p, _ in parts])) == _bits(whole_p), size
        assert _bits(np.concatenate([y for _, y in parts])) == _bits(whole_y), size
    ragged, start = [], 0
    while start < len(texts):  # chunks of random sizes
        size = rng.randint(1, 90)
        ragged.append(session.score(texts[start : start + size])[0])
        start += size
    assert _bits(np.concatenate(ragged)) == _bits(whole_p)
    order = list(range(len(texts)))
    rng.shuffle(order)
    shuffled_p, _ = session.score([texts[i] for i in order])
    assert _bits(shuffled_p[np.argsort(order)]) == _bits(whole_p)


def test_one_thread_and_two_threads_agree_bitwise(small_model: TrainedModel, texts: list[str]) -> None:
    one = ModelSession(small_model.onnx_bytes, threads=1).score(texts)
    two = ModelSession(small_model.onnx_bytes, threads=2).score(texts)
    assert _bits(one[0]) == _bits(two[0]) and _bits(one[1]) == _bits(two[1])


def test_scores_match_sklearn_and_types(small_model: TrainedModel, texts: list[str]) -> None:
    probability, label = ModelSession(small_model.onnx_bytes).score(texts)
    assert probability.dtype == np.float32 and label.dtype == np.int8
    assert probability.shape == label.shape == (len(texts),)
    expected = sklearn_spam_probability(small_model.pipeline, texts)
    assert np.abs(probability - expected).max() < 1e-5
    assert set(np.unique(label)) <= {0, 1}
    assert np.array_equal(label, (probability > 0.5).astype(np.int8))


def test_empty_input_and_non_text(small_model: TrainedModel) -> None:
    session = ModelSession(small_model.onnx_bytes)
    probability, label = session.score([])
    assert probability.shape == (0,) and probability.dtype == np.float32 and label.dtype == np.int8
    with pytest.raises(TypeError, match="texts must be str, found bytes"):
        session.score(["fine", b"raw bytes"])  # type: ignore[list-item]


def test_garbage_bytes_are_refused() -> None:
    with pytest.raises(ModelLoadError, match="onnxruntime cannot load the model"):
        ModelSession(b"\x89PNG not a model")
    with pytest.raises(ModelLoadError, match="empty"):
        ModelSession(b"")


def _renamed_input(onnx_bytes: bytes, new_name: str) -> bytes:
    model = onnx.load_from_string(onnx_bytes)
    old = model.graph.input[0].name
    model.graph.input[0].name = new_name
    for node in model.graph.node:
        node.input[:] = [new_name if i == old else i for i in node.input]
    return model.SerializeToString()


def _dropped_output(onnx_bytes: bytes, name: str) -> bytes:
    model = onnx.load_from_string(onnx_bytes)
    keep = [o for o in model.graph.output if o.name != name]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    return model.SerializeToString()


def test_wrong_schema_is_refused_naming_expected_and_found(small_model: TrainedModel) -> None:
    with pytest.raises(ModelLoadError, match=r"expected one input 'text'.*found \[\('email'"):
        ModelSession(_renamed_input(small_model.onnx_bytes, "email"))
    with pytest.raises(ModelLoadError, match=r"expected output 'probabilities' of type tensor\(float\)"):
        ModelSession(_dropped_output(small_model.onnx_bytes, "probabilities"))


def test_session_writes_nothing_to_disk(small_model: TrainedModel, tmp_path: Path) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        ModelSession(small_model.onnx_bytes, threads=2).score(["hello world"] * 10)
    finally:
        os.chdir(cwd)
    assert list(tmp_path.iterdir()) == []


def test_enclave_scoring_imports_only_stdlib_numpy_onnxruntime() -> None:
    code = (
        "import sys, enclave.scoring\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'sklearn', 'skl2onnx', 'onnx', 'pyarrow', 'sdk', 'scipy', 'pandas'})\n"
        "print(','.join(bad))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
