"""The broker's problem documents (RFC 7807) on their own, over a small app with the broker's handlers: each
member, when it is left out, and what a refused request's value may be echoed."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from keybroker.problems import PROBLEM_MEDIA_TYPE, TYPE_PREFIX, Problem, install_handlers, problem_response


class Inner(BaseModel):
    n: int


class Body(BaseModel):
    inner: Inner
    name: str = ""
    jwe: str = ""
    tags: list[int] = []


def _client() -> TestClient:
    app = FastAPI()
    install_handlers(app)

    @app.post("/echo")
    def echo(body: Body) -> dict[str, Any]:
        return {"ok": True}

    @app.get("/refuse")
    def refuse() -> None:
        raise Problem(403, "policy-denied", "not allowed", field="claims.debug", expected=False, actual=True,
                      headers={"Retry-After": "7"})

    @app.get("/http/{status}")
    def http(status: int) -> None:
        raise HTTPException(status, detail=f"said {status}")

    return TestClient(app, raise_server_exceptions=False)


def test_a_document_names_type_title_status_detail_instance_and_only_the_members_given() -> None:
    bare = Problem(404, "unknown-key", "no such key")
    assert bare.document("/kbs/v0/unwrap") == {"type": TYPE_PREFIX + "unknown-key", "title": "unknown key",
                                               "status": 404, "detail": "no such key", "instance": "/kbs/v0/unwrap"}
    assert TYPE_PREFIX == "urn:cscore:keybroker:"
    falsy = Problem(400, "x", "d", field="", expected=0, actual=False).document("/")
    assert (falsy["field"], falsy["expected"], falsy["actual"]) == ("", 0, False)
    assert str(bare) == "no such key" and bare.headers == {}


def test_a_response_carries_the_status_the_media_type_and_the_headers() -> None:
    response = problem_response(Problem(429, "quota-exceeded", "wait", headers={"Retry-After": "3"}), "/p")
    assert response.status_code == 429 and response.media_type == PROBLEM_MEDIA_TYPE
    assert response.headers["retry-after"] == "3" and response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    assert PROBLEM_MEDIA_TYPE == "application/problem+json"


def test_a_raised_problem_is_answered_as_its_document() -> None:
    answer = _client().get("/refuse")
    assert (answer.status_code, answer.headers["content-type"], answer.headers["retry-after"]) == (
        403, PROBLEM_MEDIA_TYPE, "7")
    assert answer.json() == {"type": TYPE_PREFIX + "policy-denied", "title": "policy denied", "status": 403,
                             "detail": "not allowed", "instance": "/refuse", "field": "claims.debug",
                             "expected": False, "actual": True}


@pytest.mark.parametrize(("body", "field", "expected", "actual"), [
    ({"inner": {"n": "seven"}}, "inner.n", "int_parsing", "seven"),
    ({"inner": {"n": 1}, "name": 5}, "name", "string_type", 5),
    ({"inner": {"n": 1}, "name": "y" * 79}, "name", None, None),
    ({"inner": {"n": 1}, "tags": [1, "two"]}, "tags.1", "int_parsing", "two"),
    ({"inner": {"n": 1}, "jwe": 3}, "jwe", "string_type", 3),
    ({"inner": 2.5}, "inner", "model_attributes_type", 2.5),
    ({"inner": {"n": True}, "name": ["z"]}, "name", "string_type", None),
])
def test_a_malformed_request_names_the_field_and_echoes_only_a_short_plain_value(
        body: dict[str, Any], field: str, expected: str | None, actual: Any) -> None:
    answer = _client().post("/echo", json=body)
    if expected is None:  # a valid request: nothing refused
        assert answer.status_code == 200
        return
    doc = answer.json()
    assert (answer.status_code, answer.headers["content-type"]) == (422, PROBLEM_MEDIA_TYPE)
    assert (doc["type"], doc["field"], doc["expected"], doc.get("actual")) == (
        TYPE_PREFIX + "invalid-request", field, expected, actual)
    assert doc["detail"].startswith(f"request field '{field}': ") and doc["instance"] == "/echo"


def test_a_long_string_a_jwe_and_a_structure_are_never_echoed() -> None:
    client = _client()
    long = client.post("/echo", json={"inner": {"n": "x" * 80}}).json()
    assert (long["field"], long["expected"], "actual" in long) == ("inner.n", "int_parsing", False)
    shorter = client.post("/echo", json={"inner": {"n": "x" * 79}}).json()
    assert shorter["actual"] == "x" * 79
    secret = client.post("/echo", json={"inner": {"n": 1}, "jwe": ["secret"]}).json()
    assert (secret["field"], "actual" in secret) == ("jwe", False)
    secret = client.post("/echo", json={"inner": {"n": 1}, "jwe": {"k": "short"}}).json()
    assert "actual" not in secret and "short" not in str(secret)


def test_a_body_that_is_not_json_names_where_it_broke() -> None:
    doc = _client().post("/echo", content=b"{", headers={"content-type": "application/json"}).json()
    assert (doc["status"], doc["field"], doc["expected"]) == (422, "1", "json_invalid")  # loc ('body', offset)
    assert doc["detail"] == "request field '1': JSON decode error"


def test_a_missing_body_names_the_body_as_missing() -> None:
    doc = _client().post("/echo").json()
    assert (doc["field"], doc["expected"], "actual" in doc) == ("body", "missing", False)
    assert doc["detail"] == "request field 'body': Field required"


@pytest.mark.parametrize(("status", "slug"), [(404, "not-found"), (405, "method-not-allowed"),
                                              (413, "body-too-large"), (418, "http-error"), (400, "http-error")])
def test_plain_http_errors_become_problem_documents(status: int, slug: str) -> None:
    answer = _client().get(f"/http/{status}")
    assert (answer.status_code, answer.headers["content-type"]) == (status, PROBLEM_MEDIA_TYPE)
    assert answer.json() == {"type": TYPE_PREFIX + slug, "title": slug.replace("-", " "), "status": status,
                             "detail": f"said {status}", "instance": f"/http/{status}"}


def test_routing_errors_are_problem_documents_too() -> None:
    client = _client()
    missing = client.get("/nowhere").json()
    assert (missing["status"], missing["type"], missing["detail"]) == (404, TYPE_PREFIX + "not-found", "Not Found")
    wrong = client.get("/echo").json()
    assert (wrong["status"], wrong["type"], wrong["detail"]) == (405, TYPE_PREFIX + "method-not-allowed",
                                                                 "Method Not Allowed")
