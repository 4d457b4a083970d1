"""The worker's broker client over a real socket: a kept-alive connection that a broker or proxy closes
unanswered is sent again once (with a fresh proof of possession), a second one is reported by party."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from joserfc import jwt

from attestation import Evidence
from enclave.kbs_client import POP_HEADER, AttestedSession, BrokerUnreachable, KbsError

TOKEN = "h.eyJjbGFpbXMiOnt9fQ.s"  # shaped as a JWT whose payload is {"claims":{}}, as in the answer below


class _Provider:
    """Evidence this test's broker never reads (it answers every attestation alike)."""

    tee = "sev-snp"

    def get_evidence(self, report_data: bytes) -> Evidence:
        return Evidence(tee="sev-snp", report=report_data)


class FlakyBroker:
    """An HTTP/1.1 server on loopback that closes, unanswered, the connections whose request matches
    `drop` (one close per listed path occurrence), and answers the rest from `answers` by path."""

    def __init__(self, answers: dict[str, tuple[int, dict[str, Any]]], drop: list[str]) -> None:
        self._answers, self._drop = answers, list(drop)
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        with conn:
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                lines = head.decode().split("\r\n")
                path = lines[0].split()[1]
                headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
                length = int(headers.get("content-length", "0"))
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                buffer = buffer[length:]
                self.requests.append((path, headers))
                if path in self._drop:
                    self._drop.remove(path)
                    return  # closed with the request read and no answer, as a stale kept-alive connection
                status, body = self._answers[path]
                data = json.dumps(body).encode()
                conn.sendall(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(data)}\r\n\r\n".encode() + data)

    def close(self) -> None:
        self._listener.close()


ANSWERS: dict[str, tuple[int, dict[str, Any]]] = {"/kbs/v0/auth": (200, {"nonce": "n0", "session": "s0"}),
           "/kbs/v0/attest": (200, {"token": TOKEN, "expires_at": int(time.time()) + 3600, "claims": {}}),
           "/kbs/v0/unwrap": (403, {"type": "policy-denied", "detail": "no grant", "field": "grant"})}


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> Iterator[FlakyBroker]:
    server = FlakyBroker(ANSWERS, request.param)
    yield server
    server.close()


@pytest.mark.parametrize("broker", [["/kbs/v0/unwrap"]], indirect=True)
@pytest.mark.parametrize(("party", "named"), [("owner", "owner"), ("", "key")])
def test_a_connection_closed_unanswered_is_sent_again_with_a_fresh_proof(broker: FlakyBroker, party: str, named: str,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    session = AttestedSession(broker.url, _Provider(), party=party)
    with caplog.at_level(logging.INFO, logger="enclave.kbs_client"), pytest.raises(KbsError) as refused:
        session.unwrap("k", b"w" * 40, batch_id="b1", model_digest="d")  # the broker's answer to the second sending
    resent = [r.getMessage() for r in caplog.records if "kept-alive" in r.getMessage()]
    assert resent == [f"the {named} broker at {broker.url} closed a kept-alive connection unanswered; sending again"]
    assert refused.value.status == 403 and refused.value.problem["field"] == "grant"
    sent = [headers for path, headers in broker.requests if path == "/kbs/v0/unwrap"]
    assert len(sent) == 2
    jtis = [jwt.decode(h[POP_HEADER.lower()], session._tee_key).claims["jti"] for h in sent]
    assert jtis[0] != jtis[1]  # the broker refuses a replayed jti: the second sending is a new proof


@pytest.mark.parametrize("broker", [["/kbs/v0/auth", "/kbs/v0/auth"]], indirect=True)
def test_a_second_closed_connection_names_the_party_and_the_url(broker: FlakyBroker) -> None:
    session = AttestedSession(broker.url, _Provider(), party="owner")
    with pytest.raises(BrokerUnreachable, match=f"owner's key broker at {broker.url} did not answer "
                                               r"\(RemoteProtocolError"):
        session.attest("b1")
    assert [path for path, _ in broker.requests] == ["/kbs/v0/auth", "/kbs/v0/auth"]
