"""The broker's limits middleware on its own, over a stand-in ASGI app (milliseconds a test): the body limit by
declared length and by streamed bytes, the per-client rate limit, the exempt probe paths, each refusal's problem
document and headers byte for byte.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from keybroker.middleware import EXEMPT, BodyTooLarge, LimitsMiddleware
from keybroker.problems import PROBLEM_MEDIA_TYPE


class Stand:
    """An ASGI app that reads the whole body, then answers 200 with the bytes it read."""

    def __init__(self, answer_first: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []
        self.read = b""
        self.answer_first = answer_first

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls.append(dict(scope))
        if self.answer_first:  # the answer has started before the body is read
            await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            message = await receive()
            self.read += message.get("body", b"")
            if not message.get("more_body"):
                break
        if not self.answer_first:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": self.read})


def _call(middleware: LimitsMiddleware, path: str = "/kbs/v0/unwrap", chunks: tuple[bytes, ...] = (b"{}",),
          headers: dict[bytes, bytes] | None = None, client: tuple[str, int] | None = ("10.0.0.1", 5000),
          kind: str = "http") -> list[dict[str, Any]]:
    scope: dict[str, Any] = {"type": kind, "path": path, "headers": list((headers or {}).items())}
    if client is not None:
        scope["client"] = client
    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0)

    async def send(message: Any) -> None:
        sent.append(dict(message))

    asyncio.run(middleware(scope, receive, send))
    return sent


def _refusal(sent: list[dict[str, Any]], status: int, slug: str, detail: str, path: str = "/kbs/v0/unwrap",
             extra: list[tuple[bytes, bytes]] | None = None) -> None:
    doc = {"type": f"urn:cscore:keybroker:{slug}", "title": slug.replace("-", " "), "status": status,
           "detail": detail, "instance": path}
    body = json.dumps(doc).encode()
    assert sent == [{"type": "http.response.start", "status": status,
                     "headers": [(b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                                 (b"content-length", str(len(body)).encode()), *(extra or [])]},
                    {"type": "http.response.body", "body": body}]


def test_a_body_declared_over_the_limit_is_refused_before_the_app_runs() -> None:
    app = Stand()
    sent = _call(LimitsMiddleware(app, 10, 100.0, 100), headers={b"content-length": b"11"})
    _refusal(sent, 413, "body-too-large", "request body of 11 bytes exceeds the limit of 10")
    assert app.calls == []


@pytest.mark.parametrize("declared", [b"10", b"0", b"ten", b"-11"])
def test_a_body_declared_at_the_limit_or_not_as_digits_reaches_the_app(declared: bytes) -> None:
    app = Stand()
    sent = _call(LimitsMiddleware(app, 10, 100.0, 100), chunks=(b"x" * 10,), headers={b"content-length": declared})
    assert sent[0]["status"] == 200 and app.read == b"x" * 10


@pytest.mark.parametrize("chunks", [(b"x" * 6, b"x" * 5), (b"x" * 11,), (b"", b"x" * 11)])
def test_a_streamed_body_past_the_limit_is_refused(chunks: tuple[bytes, ...]) -> None:
    sent = _call(LimitsMiddleware(Stand(), 10, 100.0, 100), chunks=chunks)
    _refusal(sent, 413, "body-too-large", "request body exceeds 10 bytes")


@pytest.mark.parametrize("chunks", [(b"x" * 5, b"x" * 5), (b"x" * 10,), (b"",)])
def test_a_streamed_body_up_to_the_limit_is_read_whole(chunks: tuple[bytes, ...]) -> None:
    app = Stand()
    sent = _call(LimitsMiddleware(app, 10, 100.0, 100), chunks=chunks)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 200 and app.read == b"".join(chunks)


def test_a_body_cut_after_the_answer_started_sends_no_second_answer() -> None:
    sent = _call(LimitsMiddleware(Stand(answer_first=True), 10, 100.0, 100), chunks=(b"x" * 11,))
    assert sent == [{"type": "http.response.start", "status": 200, "headers": []}]


def test_the_body_limit_is_an_http_413_fastapi_passes_on() -> None:
    error = BodyTooLarge(10)
    assert isinstance(error, HTTPException)
    assert (error.status_code, error.detail) == (413, "request body exceeds the limit of 10 bytes")


def test_a_client_past_its_burst_is_refused_with_the_seconds_to_wait() -> None:
    app = Stand()
    limits = LimitsMiddleware(app, 100, 0.25, 2)
    for _ in range(2):
        assert _call(limits)[0]["status"] == 200
    _refusal(_call(limits), 429, "rate-limited", "too many requests from 10.0.0.1; retry later",
             extra=[(b"retry-after", b"4")])  # a quarter of a request a second: 4 s to the next one, rounded up
    assert len(app.calls) == 2
    assert _call(limits, client=("10.0.0.2", 5000))[0]["status"] == 200  # another client has its own bucket


def test_a_request_without_a_client_address_is_limited_as_one_unknown_client() -> None:
    limits = LimitsMiddleware(Stand(), 100, 0.5, 1)
    assert _call(limits, client=None)[0]["status"] == 200
    _refusal(_call(limits, client=None), 429, "rate-limited", "too many requests from ?; retry later",
             extra=[(b"retry-after", b"2")])


@pytest.mark.parametrize("path", sorted(EXEMPT))
def test_probes_and_scrapes_are_never_limited(path: str) -> None:
    assert EXEMPT == {"/healthz", "/readyz", "/metrics"}
    app = Stand()
    limits = LimitsMiddleware(app, 1, 0.001, 1)
    for _ in range(3):  # past the burst, and past the body limit
        assert _call(limits, path=path, chunks=(b"x" * 5,), headers={b"content-length": b"5"})[0]["status"] == 200
    assert app.read == b"x" * 15
    _call(limits)  # the one request of the burst
    _refusal(_call(limits, path="/healthzx"), 429, "rate-limited", "too many requests from 10.0.0.1; retry later",
             path="/healthzx", extra=[(b"retry-after", b"1000")])


def test_what_is_not_http_passes_through_unlimited() -> None:
    app = Stand()
    limits = LimitsMiddleware(app, 1, 0.001, 1)
    for _ in range(3):
        _call(limits, kind="websocket", chunks=(b"x" * 5,), headers={b"content-length": b"5"})
    assert len(app.calls) == 3 and app.read == b"x" * 15


def test_a_wait_under_a_second_is_still_a_refusal_rounded_up_to_one_second() -> None:
    app = Stand()
    limits = LimitsMiddleware(app, 100, 2.0, 1)  # two requests a second: half a second to the next one
    assert _call(limits)[0]["status"] == 200
    _refusal(_call(limits), 429, "rate-limited", "too many requests from 10.0.0.1; retry later",
             extra=[(b"retry-after", b"1")])
    assert len(app.calls) == 1
