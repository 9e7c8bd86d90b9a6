"""The body read's timeout (middleware._read_timeout): a pause over the limit is a 408, and no timer is set
while uvicorn's request cycle already holds the whole body."""

from __future__ import annotations

import asyncio

import pytest

from service.api.errors import RequestTimeout
from service.api.middleware import _read_timeout

LIMIT_S = 0.05
PAUSE_S = 0.3  # well over the limit


class Cycle:
    """What the middleware reads of uvicorn's RequestResponseCycle: more_body, and receive as its method."""

    def __init__(self, more_body: bool):
        self.more_body = more_body

    async def receive(self):
        await asyncio.sleep(PAUSE_S)
        return {"type": "http.request", "body": b"{}", "more_body": False}


def test_a_body_that_pauses_over_the_limit_is_timed_out():
    receive = _read_timeout(Cycle(more_body=True).receive, LIMIT_S)
    with pytest.raises(RequestTimeout, match="paused for more than"):
        asyncio.run(receive())


def test_no_timer_while_the_cycle_holds_the_whole_body():
    # the pause stands for waiting on a disconnect once the body is in: it must not be cut short
    receive = _read_timeout(Cycle(more_body=False).receive, LIMIT_S)
    assert asyncio.run(receive())["body"] == b"{}"


def test_a_receive_of_another_server_is_always_timed():
    async def receive():  # a plain function: no cycle to ask
        await asyncio.sleep(PAUSE_S)
        return {"type": "http.request", "body": b"", "more_body": False}

    with pytest.raises(RequestTimeout):
        asyncio.run(_read_timeout(receive, LIMIT_S)())


def test_no_timer_once_the_cycle_holds_the_rest_of_a_body_that_was_still_coming():
    cycle = Cycle(more_body=True)
    receive = _read_timeout(cycle.receive, LIMIT_S)
    assert receive != cycle.receive  # still coming: timed
    cycle.more_body = False  # the rest arrived before the app read it
    assert asyncio.run(receive())["body"] == b"{}"
