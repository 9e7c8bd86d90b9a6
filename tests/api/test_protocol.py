"""protocol.HeadCoalescingTransport: a response head leaves with its body in one write, and is never kept
from the client (the real server's answers are tested end to end in the other API tests)."""

from __future__ import annotations

import asyncio

from service.api.protocol import HeadCoalescingTransport

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Recorder:
    """What the socket was given, write by write."""

    def __init__(self):
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str):
        return f"extra {name}"


def run(scenario) -> Recorder:
    async def main():
        socket = Recorder()
        await scenario(HeadCoalescingTransport(socket, asyncio.get_running_loop()), socket)
        return socket

    return asyncio.run(main())


def test_a_head_and_its_body_leave_in_one_write():
    async def scenario(transport, socket):
        transport.write(HEAD)
        assert socket.writes == []  # held for its body
        transport.write(b"{}")
        assert socket.writes == [HEAD + b"{}"]
        transport.write(b"more")  # anything after the head's body goes as it comes
        assert socket.writes == [HEAD + b"{}", b"more"]

    run(scenario)


def test_a_head_whose_body_does_not_come_at_once_goes_by_the_end_of_the_loop_pass():
    async def scenario(transport, socket):
        transport.write(HEAD)
        await asyncio.sleep(0)
        assert socket.writes == [HEAD]
        transport.write(b"{}")
        assert socket.writes == [HEAD, b"{}"]

    run(scenario)


def test_a_held_head_goes_on_flush_and_before_the_connection_closes():
    async def flushed(transport, socket):
        transport.write(HEAD)
        transport.flush()  # the response completed without a body (HEAD, 204)
        assert socket.writes == [HEAD]

    async def closed(transport, socket):
        transport.write(HEAD + b"{}")
        transport.close()
        assert socket.writes == [HEAD + b"{}"] and socket.closed

    run(flushed)
    run(closed)


def test_an_interim_response_and_bytes_that_are_no_head_are_never_held():
    async def scenario(transport, socket):
        transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # the client waits for it before its body
        transport.write(b"\x81\x05hello")  # e.g. a websocket frame
        assert socket.writes == [b"HTTP/1.1 100 Continue\r\n\r\n", b"\x81\x05hello"]

    run(scenario)


def test_an_aborted_connection_drops_a_held_head_and_a_closed_one_is_not_written():
    async def aborted(transport, socket):
        transport.write(HEAD)
        transport.abort()
        await asyncio.sleep(0)
        assert socket.writes == [] and socket.aborted

    async def closed_under_it(transport, socket):
        transport.write(HEAD)
        socket.closed = True  # the peer went away before the loop's pass ended
        await asyncio.sleep(0)
        assert socket.writes == []

    run(aborted)
    run(closed_under_it)


def test_everything_else_is_the_transports_own():
    async def scenario(transport, socket):
        assert transport.get_extra_info("peername") == "extra peername"
        assert not transport.is_closing()

    run(scenario)
