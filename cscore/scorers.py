"""The raw scorer's rate for the benchmarks' pipeline/raw ratio: N scorer processes timed at once.

The ratio's denominator was one scorer timed alone, times the number of workers. On a shared machine that is not
what N workers get: two scorers started together reached 0.89x to 1.87x of one. So `concurrent_scorer_rate` runs
`processes` scorers (the enclave's ModelSession, one onnxruntime thread, as each worker runs) at the same time, in
the caller's run, and counts the emails all of them scored over the wall time from the first start to the last
end. Each process scores its contiguous share of the same texts in calls of `call_rows` rows, as a worker scores
its shard slice by slice (`enclave.worker.SLICE_ROW_GROUPS` row groups of `sdk.owner.ROW_GROUP_SIZE` rows): one
sort by length over 20,000 repeated texts put each text's copies side by side, which alone made the scorer ~16 %
faster than on the slices a worker sees.

Imports only the standard library and the enclave's scorer: the spawned children import this module, not the
benchmark's stack.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CALL_ROWS = 1_000  # a worker's slice: SLICE_ROW_GROUPS (5) row groups of ROW_GROUP_SIZE (200) rows
TIMED_ROWS = 20_000  # texts timed in all, shared between the processes
START_TIMEOUT_S = 600.0  # a child that has not loaded its session by then: the measurement fails


@dataclass(frozen=True)
class Span:
    """One process's timed run: rows scored between `start` and `end` (time.monotonic, system-wide), CPU seconds;
    `ready`: when it had loaded and warmed its session and reached the barrier."""

    rows: int
    ready: float
    start: float
    end: float
    cpu: float


@dataclass(frozen=True)
class ConcurrentRate:
    """Emails/s of `processes` scorers run at once: all rows over the wall time from the first start to the last end."""

    processes: int
    spans: tuple[Span, ...]

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.spans)

    @property
    def wall(self) -> float:
        return max(s.end for s in self.spans) - min(s.start for s in self.spans)

    @property
    def per_s(self) -> float:
        return self.rows / self.wall

    @property
    def per_cpu_s(self) -> float:
        """Emails per CPU second of the scorers (their process time while timed)."""
        return self.rows / sum(s.cpu for s in self.spans)


def shares(texts: Sequence[str], processes: int) -> list[list[str]]:
    """`texts` cut into `processes` contiguous shares, in order, sizes differing by at most one."""
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    n = len(texts)
    return [list(texts[k * n // processes:(k + 1) * n // processes]) for k in range(processes)]


def repeated(texts: Sequence[str], rows: int = TIMED_ROWS) -> list[str]:
    """`rows` texts cycling through `texts` in order (a batch of `n` copies holds them in this order)."""
    if not texts:
        raise ValueError("no texts to score")
    return [texts[i % len(texts)] for i in range(rows)]


def concurrent_scorer_rate(onnx_bytes: bytes, texts: Sequence[str], processes: int = 2, *,
                           call_rows: int = CALL_ROWS) -> ConcurrentRate:
    """Time `processes` spawned scorer processes scoring their shares of `texts` at once (see the module's doc).

    Each child loads its session and scores a warm-up chunk, then all pass one barrier together and are timed.
    Raises RuntimeError when a child fails or does not report.
    """
    context = multiprocessing.get_context("spawn")  # no fork of a process holding threads and a running stack
    barrier = context.Barrier(processes)
    results = context.Queue()
    children = [context.Process(target=_score_share, args=(onnx_bytes, share, call_rows, barrier, results),
                                name=f"cscore-raw-scorer-{k}", daemon=True)
                for k, share in enumerate(shares(texts, processes))]
    for child in children:
        child.start()
    try:
        reports = [results.get(timeout=START_TIMEOUT_S) for _ in children]
    except Exception as exc:  # queue.Empty: a child died before reporting
        raise RuntimeError(f"a raw scorer process did not report: {exc!r}") from None
    finally:
        for child in children:
            child.join(30)
            if child.is_alive():
                child.kill()
    failed = sorted((r for r in reports if isinstance(r, str)), key=lambda r: r.startswith("BrokenBarrierError"))
    if failed:  # the child that failed first, not one that then found the barrier broken
        raise RuntimeError(f"a raw scorer process failed: {failed[0]}")
    return ConcurrentRate(processes, tuple(reports))


def _score_share(onnx_bytes: bytes, texts: list[str], call_rows: int, barrier: Any, results: Any) -> None:
    """In a child: load, warm, wait for the others, score `texts` in calls of `call_rows`, report a Span."""
    try:
        from enclave.scoring import ModelSession

        session = ModelSession(onnx_bytes, threads=1)
        session.score(texts[:256])  # warm
        ready = time.monotonic()
        barrier.wait(START_TIMEOUT_S)
        start, cpu = time.monotonic(), time.process_time()
        for i in range(0, len(texts), call_rows):
            session.score(texts[i:i + call_rows])
        results.put(Span(len(texts), ready, start, time.monotonic(), time.process_time() - cpu))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises
        barrier.abort()  # the others stop waiting for this one and report too
        results.put(f"{type(exc).__name__}: {exc}")
        raise
