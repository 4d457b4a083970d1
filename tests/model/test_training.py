"""The provider's model: sklearn pipeline, its ONNX export, and the two agreeing on held-out mail."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave.scoring import ModelSession
from sdk.emails import clean_text
from sdk.training import sklearn_spam_probability, train_spam_model

from .conftest import TrainedModel


def test_onnx_equals_sklearn_and_is_accurate_on_held_out(
    full_model: TrainedModel, held_out_texts: tuple[list[str], list[int]]
) -> None:
    texts, labels = held_out_texts
    expected = sklearn_spam_probability(full_model.pipeline, texts)
    probability, label = ModelSession(full_model.onnx_bytes).score(texts)
    assert np.abs(probability - expected).max() < 1e-5
    decided = np.abs(expected - 0.5) > 1e-5  # away from the boundary the labels must agree exactly
    assert np.array_equal(label[decided], (expected[decided] > 0.5).astype(np.int8))
    accuracy = float(np.mean(label == np.asarray(labels)))
    assert accuracy > 0.97, accuracy


def test_exported_graph_has_the_scoring_schema(small_model: TrainedModel) -> None:
    model = onnx.load_from_string(small_model.onnx_bytes)
    (graph_input,) = model.graph.input
    assert graph_input.name == "text"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.STRING
    assert [d.dim_value for d in graph_input.type.tensor_type.shape.dim][1] == 1
    outputs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    assert outputs == {"label": onnx.TensorProto.INT64, "probabilities": onnx.TensorProto.FLOAT}
    normalizer = next(n for n in model.graph.node if n.op_type == "StringNormalizer")
    assert {a.name: a.s for a in normalizer.attribute}["locale"] == b"C.UTF-8"
    assert "ZipMap" not in {n.op_type for n in model.graph.node}


def test_vocabulary_is_bounded(small_model: TrainedModel) -> None:
    assert len(small_model.pipeline.named_steps["tfidf"].vocabulary_) == 5000


_WORDS = st.sampled_from(["free", "money", "click", "here", "meeting", "patch", "linux", "offer", "re", "the"])
_NOISE = st.text(alphabet=st.characters(codec="utf-8"), max_size=8)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(_WORDS, _NOISE, st.just("\u0130"), st.just("\u212a")), max_size=40))
def test_onnx_equals_sklearn_on_arbitrary_cleaned_text(small_model: TrainedModel, pieces: list[str]) -> None:
    text = clean_text(" ".join(pieces))
    expected = sklearn_spam_probability(small_model.pipeline, [text])
    probability, _ = _session(small_model).score([text])
    assert abs(float(probability[0]) - float(expected[0])) < 1e-5


def test_raw_dotted_capital_i_is_why_clean_text_exists(small_model: TrainedModel) -> None:
    vocabulary = small_model.pipeline.named_steps["tfidf"].vocabulary_
    word = next(w for w in sorted(vocabulary) if w.startswith("i") and len(w) > 4 and w[1:] not in vocabulary)
    raw = "\u0130" + word[1:].upper()  # Python lowercases İ to "i" + U+0307, the ONNX graph to "i"
    onnx_p, _ = _session(small_model).score([raw])
    sk_raw = sklearn_spam_probability(small_model.pipeline, [raw])[0]
    sk_clean = sklearn_spam_probability(small_model.pipeline, [clean_text(raw)])[0]
    assert abs(float(onnx_p[0]) - sk_clean) < 1e-5
    assert abs(sk_raw - sk_clean) > 1e-6


def test_training_rejects_bad_labels() -> None:
    with pytest.raises(ValueError, match="both 0"):
        train_spam_model(["a b", "c d"], [1, 1])
    with pytest.raises(ValueError, match="2 texts but 1 labels"):
        train_spam_model(["a b", "c d"], [1])


_SESSIONS: dict[int, ModelSession] = {}


def _session(model: TrainedModel) -> ModelSession:
    return _SESSIONS.setdefault(id(model), ModelSession(model.onnx_bytes))
