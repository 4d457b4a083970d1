"""ASGI middleware: request body size limit and a per-client rate limit, both answered as problem+json."""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keybroker.problems import PROBLEM_MEDIA_TYPE, TYPE_PREFIX
from keybroker.sessions import RateLimiter

EXEMPT = {"/healthz", "/readyz", "/metrics"}  # probes and scrapes are never rate-limited


class BodyTooLarge(HTTPException):
    """The streamed body passed the limit.

    An HTTPException, so that FastAPI's body parsing lets it through (it turns other exceptions raised
    while reading the body into a 400) and the problem handler answers 413 body-too-large.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


class LimitsMiddleware:
    """Refuses bodies over `max_body_bytes` (413) and clients over their token bucket (429)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, rate: float, burst: int) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.limiter = RateLimiter(rate, burst)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("?", 0))[0]
        wait = self.limiter.allow(client)
        if wait > 0:
            await _problem(send, scope, 429, "rate-limited", f"too many requests from {client}; retry later",
                           {"retry-after": str(math.ceil(wait))})
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await _problem(send, scope, 413, "body-too-large",
                           f"request body of {int(declared)} bytes exceeds the limit of {self.max_body}")
            return
        await self._guarded(scope, receive, send)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count streamed bytes too: a chunked body carries no Content-Length."""
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise BodyTooLarge(self.max_body)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _problem(send, scope, 413, "body-too-large", f"request body exceeds {self.max_body} bytes")


async def _problem(send: Send, scope: Scope, status: int, slug: str, detail: str,
                   headers: dict[str, str] | None = None) -> None:
    doc: dict[str, Any] = {"type": TYPE_PREFIX + slug, "title": slug.replace("-", " "), "status": status,
                           "detail": detail, "instance": scope["path"]}
    body = json.dumps(doc).encode()
    raw = [(b"content-type", PROBLEM_MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
