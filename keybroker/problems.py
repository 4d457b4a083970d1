"""RFC 7807 problem documents: every refusal names the field, the expected and the actual value."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:cscore:keybroker:"


class Problem(Exception):
    """Raise to answer with a problem document (`slug` becomes the `type` URN)."""

    def __init__(self, status: int, slug: str, detail: str, *, field: str | None = None,
                 expected: Any = None, actual: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.slug, self.detail = status, slug, detail
        self.field, self.expected, self.actual = field, expected, actual
        self.headers = headers or {}

    def document(self, instance: str) -> dict[str, Any]:
        """The JSON body."""
        doc: dict[str, Any] = {"type": TYPE_PREFIX + self.slug, "title": self.slug.replace("-", " "),
                               "status": self.status, "detail": self.detail, "instance": instance}
        for name in ("field", "expected", "actual"):
            value = getattr(self, name)
            if value is not None:
                doc[name] = value
        return doc


def problem_response(problem: Problem, instance: str) -> JSONResponse:
    """Render a Problem as application/problem+json."""
    return JSONResponse(problem.document(instance), status_code=problem.status,
                        media_type=PROBLEM_MEDIA_TYPE, headers=problem.headers)


def install_handlers(app: FastAPI) -> None:
    """Route Problem, validation and plain HTTP errors through problem+json."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        detail = f"request field '{field}': {first.get('msg', 'invalid')}"
        actual = first.get("input")
        # Echo the offending value only when short and not possibly secret-bearing.
        shown = actual if isinstance(actual, int | float | bool) or (isinstance(actual, str) and len(actual) < 80
                                                                     and "jwe" not in field) else None
        problem = Problem(422, "invalid-request", detail, field=field, expected=first.get("type"), actual=shown)
        return problem_response(problem, request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        slug = {404: "not-found", 405: "method-not-allowed", 413: "body-too-large"}.get(exc.status_code,
                                                                                         "http-error")
        return problem_response(Problem(exc.status_code, slug, str(exc.detail)), request.url.path)
