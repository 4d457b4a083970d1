"""The benchmarks' raw scorer rate with N processes at once (`cscore.scorers`): shares, arithmetic, processes."""

from __future__ import annotations

import pytest

from cscore.scorers import ConcurrentRate, Span, concurrent_scorer_rate, repeated, shares
from tests.model.conftest import TrainedModel


def test_shares_are_contiguous_in_order_and_cover_every_text_once() -> None:
    texts = [f"t{i}" for i in range(11)]
    parts = shares(texts, 3)
    assert parts == [["t0", "t1", "t2"], ["t3", "t4", "t5", "t6"], ["t7", "t8", "t9", "t10"]]
    assert shares(texts, 1) == [texts]
    with pytest.raises(ValueError, match=r"^processes must be >= 1, got 0$"):
        shares(texts, 0)


def test_repeated_cycles_the_texts_in_order_as_a_batch_of_copies_holds_them() -> None:
    assert repeated(["a", "b", "c"], 7) == ["a", "b", "c", "a", "b", "c", "a"]
    with pytest.raises(ValueError, match=r"^no texts to score$"):
        repeated([], 5)


def test_the_rate_is_every_row_over_the_first_start_to_the_last_end() -> None:
    together = ConcurrentRate(2, (Span(rows=100, ready=0.5, start=1.0, end=3.0, cpu=1.5),
                                  Span(rows=300, ready=0.9, start=1.5, end=5.0, cpu=2.5)))
    assert (together.rows, together.wall, together.per_s, together.per_cpu_s) == (400, 4.0, 100.0, 100.0)


def test_processes_score_their_shares_at_once(small_model: TrainedModel,
                                              held_out_texts: tuple[list[str], list[int]]) -> None:
    texts = held_out_texts[0][:300]
    together = concurrent_scorer_rate(small_model.onnx_bytes, texts, 2, call_rows=64)
    assert together.processes == 2 and [s.rows for s in together.spans] == [150, 150]
    # Every process had loaded its session before any was timed: they scored at the same time.
    assert max(s.ready for s in together.spans) <= min(s.start for s in together.spans)
    assert all(s.end > s.start and s.cpu > 0 for s in together.spans) and together.per_s > 0


def test_a_process_that_cannot_load_the_model_fails_the_measurement_naming_why() -> None:
    with pytest.raises(RuntimeError, match=r"^a raw scorer process failed: ModelLoadError: onnxruntime cannot load "
                                           r"the model \(9 bytes\)"):
        concurrent_scorer_rate(b"not onnx!", ["a", "b"], 2)
