"""Clients that misbehave at the connection level: slow or silent heads, huge heads, stalled uploads and
uploads abandoned half-way. Each is answered or closed within the configured limits, counted under its
own reason, and never counted as a server error; everyone else is served meanwhile."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import time

import pytest

from tests.api.helpers import running

READ_TIMEOUT_S = 1.0
MAX_HEADER_BYTES = 4096
LOG_PROB = "/v1/models/tiny/log-prob"


@pytest.fixture(scope="module")
def guarded(repository):
    env = {
        "MADE_READ_TIMEOUT_S": str(READ_TIMEOUT_S),
        "MADE_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
        "MADE_SHUTDOWN_GRACE_S": "20",
    }
    with running(repository, env=env) as server:
        yield server


def connect(server, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(timeout)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def head(path: str = LOG_PROB, length: int = 100) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def status_and_body(answer: bytes) -> tuple[int, dict]:
    head_part, _, body = answer.partition(b"\r\n\r\n")
    return int(head_part.split()[1]), json.loads(body)


def test_a_slow_head_gets_408_and_is_closed(guarded):
    before = guarded.metric("made_rejections_total", reason="request_timeout")
    sock = connect(guarded)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")  # never finished
    started = time.monotonic()
    status, body = status_and_body(read_all(sock))
    waited = time.monotonic() - started
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert READ_TIMEOUT_S * 0.8 < waited < READ_TIMEOUT_S + 5
    assert guarded.metric("made_rejections_total", reason="request_timeout") == before + 1


def test_a_head_trickled_byte_by_byte_is_still_timed_out(guarded):
    """The limit is on the whole head, not on the pause between bytes (slowloris)."""
    sock = connect(guarded)
    started = time.monotonic()
    request = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Padding: " + b"a" * 200
    answer = b""
    for byte in request:
        try:
            sock.sendall(bytes([byte]))
        except OSError:  # closed under us: the answer is waiting
            break
        time.sleep(0.02)
        if time.monotonic() - started > READ_TIMEOUT_S + 5:
            break
    answer = read_all(sock)
    assert status_and_body(answer)[0] == 408
    assert time.monotonic() - started < READ_TIMEOUT_S + 5


def test_a_connection_that_sends_nothing_is_closed(guarded):
    sock = connect(guarded)
    started = time.monotonic()
    assert read_all(sock) == b""
    assert time.monotonic() - started < READ_TIMEOUT_S + 5


def read_response(sock: socket.socket) -> tuple[int, dict]:
    """One response of a keep-alive connection (its head, then Content-Length bytes of body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head_part, _, body = data.partition(b"\r\n\r\n")
    lines = head_part.lower().split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head_part.split()[1]), json.loads(body)


def test_a_later_head_on_a_kept_alive_connection_gets_its_own_full_time(guarded):
    """A connection has one head timer, armed at its first deadline, that re-arms itself for a later one.
    A head that starts just before the first deadline and ends after it is not timed out early."""
    sock = connect(guarded)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")  # the timer of the opening is armed
    assert read_response(sock)[0] == 200
    time.sleep(READ_TIMEOUT_S * 0.7)
    sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # due READ_TIMEOUT_S from now, past the first timer
    time.sleep(READ_TIMEOUT_S * 0.6)  # the first timer has fired by now
    sock.sendall(b"Host: test\r\n\r\n")
    assert read_response(sock)[0] == 200


def test_a_slow_head_after_a_served_request_gets_408(guarded):
    """After a request, the next head on the connection is timed out from its own first byte."""
    sock = connect(guarded)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
    assert read_response(sock)[0] == 200
    time.sleep(READ_TIMEOUT_S * 1.2)  # the timer of the opening fires and lapses: no head is due
    sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # never finished
    started = time.monotonic()
    status, body = status_and_body(read_all(sock))
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert READ_TIMEOUT_S * 0.8 < time.monotonic() - started < READ_TIMEOUT_S + 5


def test_a_head_over_the_limit_gets_431_and_is_closed(guarded):
    before = guarded.metric("made_rejections_total", reason="header_too_large")
    sock = connect(guarded)
    sock.sendall(
        b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * (4 * MAX_HEADER_BYTES) + b"\r\n\r\n"
    )
    status, body = status_and_body(read_all(sock))
    assert status == 431 and body["error"]["code"] == "header_too_large"
    assert guarded.metric("made_rejections_total", reason="header_too_large") == before + 1


def test_a_head_under_the_limit_with_its_body_in_the_same_read_is_served(guarded):
    """Only the head counts against max_header_bytes: a body many times that size, sent in one write with
    its head, is read as usual."""
    body = json.dumps({"inputs": [[0, 1] * 4] * 2000}).encode()
    assert len(body) > 4 * MAX_HEADER_BYTES
    sock = connect(guarded)
    sock.sendall(head(length=len(body)) + body)
    answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_a_stalled_upload_gets_408_and_the_connection_is_closed(guarded):
    before = guarded.metric("made_rejections_total", reason="request_timeout")
    sock = connect(guarded)
    sock.sendall(head() + b'{"inputs": [[0,')  # 15 of 100 bytes, then nothing
    started = time.monotonic()
    status, body = status_and_body(read_all(sock))
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert time.monotonic() - started < READ_TIMEOUT_S + 5
    assert guarded.metric("made_rejections_total", reason="request_timeout") == before + 1


def test_clients_that_abandon_their_uploads_are_counted_as_disconnects_not_server_errors(guarded):
    errors_before = guarded.metric("made_errors_total")
    disconnects_before = guarded.metric("made_rejections_total", reason="client_disconnected")
    abandoned = 20
    for _ in range(abandoned):
        sock = connect(guarded)
        sock.sendall(head() + b'{"inputs": [[0,')
        time.sleep(0.02)  # the route is reading the body
        sock.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        counted = guarded.metric("made_rejections_total", reason="client_disconnected") - disconnects_before
        if counted == abandoned:
            break
        time.sleep(0.1)
    assert counted == abandoned
    assert guarded.metric("made_errors_total") == errors_before
    assert guarded.metric("made_http_request_duration_seconds_count", status="500") == 0
    assert guarded.metric("made_http_request_duration_seconds_count", status="499") >= abandoned
    assert "Traceback" not in guarded.log_path.read_text()


def test_many_stalled_clients_do_not_keep_anyone_else_waiting(guarded):
    stalled = [connect(guarded) for _ in range(50)]
    for i, sock in enumerate(stalled):
        sock.sendall(head() if i % 2 else b"POST /v1/models/tiny/log-prob HTTP/1.1\r\n")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(
                lambda _: guarded.client.post(LOG_PROB, json={"inputs": [[0, 1] * 4]}).status_code, range(40)
            )
        )
    assert answers == [200] * 40
    started = time.monotonic()
    for sock in stalled:
        answer = read_all(sock)
        assert status_and_body(answer)[0] == 408
    assert time.monotonic() - started < READ_TIMEOUT_S + 5


def test_a_stalled_upload_does_not_hold_up_exit_on_sigterm(repository):
    env = {"MADE_READ_TIMEOUT_S": str(READ_TIMEOUT_S), "MADE_SHUTDOWN_GRACE_S": "20"}
    with running(repository, env=env) as server:
        sock = connect(server)
        sock.sendall(head() + b'{"inputs"')
        time.sleep(0.2)
        started = time.monotonic()
        assert server.stop() == 0
        # the upload is timed out, then the drain completes: well inside the 20 s grace period
        assert time.monotonic() - started < READ_TIMEOUT_S + 8
        sock.close()
