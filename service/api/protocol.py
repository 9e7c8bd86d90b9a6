"""The HTTP/1.1 connection: uvicorn's httptools protocol with the limits it lacks on reading a request head.

uvicorn times out idle keep-alive connections, but not a client that connects and then sends its request
line and headers slowly (or never), and httptools puts no bound on the size of a head. Either lets one
client hold a connection, and memory, for as long as it likes. Here:

- a request head must arrive completely within `read_timeout_s` of its first byte (or of the connection
  opening): otherwise 408 and the connection is closed;
- a head over `max_header_bytes` (request line and headers) gets 431 and the connection is closed.

And every response leaves in one write where uvicorn makes two (HeadCoalescingTransport).

A body that stalls is the application's to time out (middleware.RequestTracking), so it is answered with
the service's own JSON error and counted in its metrics. Both answers here come before any route exists,
so they are counted by the same metric (`made_rejections_total`, model "").
"""

from __future__ import annotations

import asyncio
import functools

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from . import metrics
from .errors import APIError, HeaderTooLarge, RequestTimeout

TIMER_SLACK_S = 0.002
REASONS = {RequestTimeout: b"Request Timeout", HeaderTooLarge: b"Request Header Fields Too Large"}


def _raw_error(error: type[APIError], message: str) -> bytes:
    """A complete HTTP/1.1 error response in the service's error shape; the connection closes after it."""
    body = orjson.dumps({"error": {"code": error.code, "message": message}})
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (error.status, REASONS[error]),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


class HeadCoalescingTransport:
    """The connection's transport, holding a response head back until the first bytes of its body are
    written, so that both leave in one write: one send() and one TCP segment where uvicorn makes two (it
    writes http.response.start and http.response.body as they come), and the client reads one segment. At
    64 clients x 1-row log-prob requests it saves a few percent of the server's and the client's CPU per
    request; requests/s moved within this machine's noise (docs/benchmarks.md, issue 15's fifth part).

    A held head goes out with the next write, when the response completes (the protocol's
    on_response_complete), before the connection closes, or at the latest at the end of the event loop's
    current pass (a head whose body is slow to come is not kept from the client). Only a final response's
    head is held: an interim 1xx (100 Continue) is what the client waits for before it sends a body."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self.transport = transport
        self.loop = loop
        self.held: bytes | None = None

    def write(self, data: bytes) -> None:
        if self.held is not None:
            data, self.held = self.held + data, None
        elif data.startswith(b"HTTP/1.1 ") and not data.startswith(b"HTTP/1.1 1"):
            self.held = data
            self.loop.call_soon(self.flush)
            return
        self.transport.write(data)

    def flush(self) -> None:
        if self.held is not None:
            data, self.held = self.held, None
            if not self.transport.is_closing():
                self.transport.write(data)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self.held = None
        self.transport.abort()

    def is_closing(self) -> bool:  # asked on every response: not through __getattr__
        return self.transport.is_closing()

    def __getattr__(self, name: str):  # everything else is the transport's own
        return getattr(self.transport, name)


class GuardedHttpProtocol(HttpToolsProtocol):
    def __init__(self, *args, read_timeout_s: float, max_header_bytes: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.read_timeout_s = read_timeout_s
        self.max_header_bytes = max_header_bytes
        # One timer per connection, not per request: a request sets head_deadline (a float) and the timer,
        # when it fires, acts on the deadline as it is then, re-arming itself for a later one. Deadlines only
        # move later (loop time + the same timeout), so an armed timer is never too late. Under load this
        # saves a timer's creation and cancellation on every request.
        self.head_deadline: float | None = None  # loop time by which the head now arriving must be complete
        self.head_timer: asyncio.TimerHandle | None = None
        self.head_bytes = 0  # bytes of the request head read so far (while one is arriving)
        self.head_tail = b""  # the last bytes of the head so far: its end may straddle two reads

    def _awaiting_head(self) -> bool:
        """No request, or the last one answered: whatever arrives now is the start of the next head."""
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        if self.head_deadline is None:
            self.head_deadline = self.loop.time() + self.read_timeout_s
            if self.head_timer is None:
                self.head_timer = self.loop.call_at(self.head_deadline, self._check_head)

    def _disarm(self) -> None:
        self.head_deadline = None  # the timer, if armed, finds no head to time out and lapses
        self.head_bytes = 0
        self.head_tail = b""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.transport = HeadCoalescingTransport(transport, self.loop)
        self._arm()  # a connection that opens and sends nothing is closed too

    def on_response_complete(self) -> None:
        self.transport.flush()
        super().on_response_complete()

    def connection_lost(self, exc) -> None:
        self.transport.held = None
        self._disarm()
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._awaiting_head():
            # the keep-alive timer stops once bytes arrive; from here the head has read_timeout_s
            self._arm()
            # only the head's bytes count: a body may follow it in the same read
            window = self.head_tail + data
            end = window.find(b"\r\n\r\n")
            self.head_bytes += len(data) if end < 0 else max(0, end + 4 - len(self.head_tail))
            self.head_tail = window[-3:]
            if self.head_bytes > self.max_header_bytes:
                self._refuse(HeaderTooLarge, f"request head over {self.max_header_bytes} bytes")
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        # Bytes of a pipelined next request may follow in the same chunk; they start their own count when
        # this request has been answered (httptools hands them over only then).
        self._disarm()
        super().on_headers_complete()

    def _check_head(self) -> None:
        self.head_timer = None
        if self.head_deadline is None or self.transport.is_closing() or not self._awaiting_head():
            return
        # the event loop's timers have a resolution of about a millisecond: a timer may fire just early
        if self.loop.time() < self.head_deadline - TIMER_SLACK_S:
            self.head_timer = self.loop.call_at(self.head_deadline, self._check_head)
            return
        if self.head_bytes:
            self._refuse(RequestTimeout, f"request head not received within {self.read_timeout_s} s")
        else:
            self.transport.close()  # nothing was asked: nothing to answer

    def _refuse(self, error: type[APIError], message: str) -> None:
        self._disarm()
        metrics.REJECTIONS.labels(model="", reason=error.code).inc()
        self.transport.write(_raw_error(error, message))
        self.transport.close()


def protocol_factory(read_timeout_s: float, max_header_bytes: int):
    """The `http=` of uvicorn's Config (a partial of a module-level class: it pickles to worker processes)."""
    return functools.partial(
        GuardedHttpProtocol, read_timeout_s=read_timeout_s, max_header_bytes=max_header_bytes
    )
