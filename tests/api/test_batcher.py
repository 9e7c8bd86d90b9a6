"""The batcher's rules, with fake compute functions so each rule is isolated and exact."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import torch

from service.api.batcher import Batcher, Batchers
from service.api.errors import ComputeFailed, DeadlineExceeded, OutOfMemory, QueueFull, ShuttingDown


class Recorder:
    """compute(): doubles each row and records the batch sizes it saw; optional delay and failures."""

    def __init__(self, delay: float = 0.0, oom_above: int | None = None, poison: float | None = None):
        self.batches: list[list[int]] = []
        self.values: list[float] = []  # every row value the model computed
        self.delay, self.oom_above, self.poison = delay, oom_above, poison
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, payloads):
        self.gate.wait()
        rows = [int(p[0].shape[0]) for p in payloads]
        x = torch.cat([p[0] for p in payloads])
        if self.oom_above is not None and len(x) > self.oom_above:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        if self.poison is not None and bool((x == self.poison).any()):
            raise RuntimeError("poisoned row")
        self.batches.append(rows)
        self.values += x.flatten().tolist()
        time.sleep(self.delay)
        return [(y,) for y in (2 * x).split(rows)]


def make(compute, **options):
    settings = dict(max_batch_rows=64, max_delay_s=0.05, max_queue_requests=100) | options
    return Batcher("m", "op", compute, ThreadPoolExecutor(1), **settings)


def rows(start: int, n: int) -> torch.Tensor:
    return torch.arange(start, start + n, dtype=torch.float32).reshape(n, 1)


def run(coro):
    return asyncio.run(coro)


async def held_at_the_gate(compute: Recorder, **options) -> tuple[Batcher, asyncio.Future]:
    """A started batcher (no batching delay) whose first request, rows [0], the compute thread holds at
    `compute.gate` (cleared by the caller): whatever is submitted next waits in the queue. The first
    request's deadline (30 s) outlasts any test."""
    batcher = make(compute, max_delay_s=0.0, **options)
    batcher.start()
    loop = asyncio.get_running_loop()
    computing = asyncio.ensure_future(batcher.submit((rows(0, 1),), loop.time() + 30))
    await asyncio.sleep(0.05)  # taken by the loop: computing, not waiting
    return batcher, computing


async def submit_once(compute, n: int, **options):
    """Start a batcher, submit one request of the rows 0..n-1, close the batcher; that request's answer."""
    batcher = make(compute, **options)
    batcher.start()
    try:
        return await batcher.submit((rows(0, n),), asyncio.get_running_loop().time() + 5)
    finally:
        await batcher.close()


def test_concurrent_requests_merge_and_get_their_own_rows_back():
    compute = Recorder()

    async def main():
        batcher = make(compute)
        batcher.start()
        deadline = asyncio.get_running_loop().time() + 5
        results = await asyncio.gather(*(batcher.submit((rows(100 * i, 3),), deadline) for i in range(10)))
        await batcher.close()
        return results

    results = run(main())
    for i, result in enumerate(results):
        assert torch.equal(result[0], 2 * rows(100 * i, 3))
    assert len(compute.batches) < 10 and sum(map(sum, compute.batches)) == 30  # merged, nothing lost


def test_a_batch_waits_for_others_only_while_a_request_is_on_its_way():
    """With `others_coming` false (every request in flight is in a batcher already), a batch goes at once:
    a request that arrives afterwards gets a batch of its own, however long the delay. While one is on its
    way, the batch waits and the later request joins it."""
    on_the_way = {"value": False}

    async def main():
        compute = Recorder()
        batcher = make(compute, max_delay_s=30.0, in_flight_beyond=lambda held: on_the_way["value"])
        batcher.start()
        deadline = asyncio.get_running_loop().time() + 60
        first = asyncio.ensure_future(batcher.submit((rows(0, 2),), deadline))
        await asyncio.wait_for(asyncio.shield(first), timeout=10)  # not the 30 s delay
        second = await batcher.submit((rows(10, 1),), deadline)
        alone = list(compute.batches)
        compute.batches.clear()
        on_the_way["value"] = True
        third = asyncio.ensure_future(batcher.submit((rows(20, 2),), deadline))
        await asyncio.sleep(0.2)
        assert not third.done()  # waiting for the one on its way
        fourth = asyncio.ensure_future(batcher.submit((rows(30, 1),), deadline))
        await asyncio.sleep(0.05)
        on_the_way["value"] = False
        batcher._arrival(0)  # as an arrival would: no one else is coming now, so the loop is woken
        results = await asyncio.wait_for(asyncio.gather(third, fourth), timeout=10)
        await batcher.close()
        return first.result(), second, alone, results, compute.batches

    first, second, alone, (third, fourth), together = run(main())
    assert alone == [[2], [1]]
    assert together == [[2, 1]]
    assert torch.equal(first[0], 2 * rows(0, 2)) and torch.equal(second[0], 2 * rows(10, 1))
    assert torch.equal(third[0], 2 * rows(20, 2)) and torch.equal(fourth[0], 2 * rows(30, 1))


def test_a_collecting_batch_goes_when_it_is_full_and_not_before():
    """While others may come, arrivals that leave the batch short of max_batch_rows let it wait out its
    delay; the arrival that fills it starts it at once."""

    async def main():
        compute = Recorder()
        batcher = make(compute, max_batch_rows=4, max_delay_s=30.0, in_flight_beyond=lambda held: True)
        batcher.start()
        deadline = asyncio.get_running_loop().time() + 60
        waiting = [
            asyncio.ensure_future(batcher.submit((rows(10 * i, n),), deadline)) for i, n in [(0, 2), (1, 1)]
        ]
        await asyncio.sleep(0.2)
        assert not any(w.done() for w in waiting) and compute.batches == []
        last = asyncio.ensure_future(batcher.submit((rows(30, 1),), deadline))
        results = await asyncio.wait_for(asyncio.gather(*waiting, last), timeout=10)  # not the 30 s delay
        await batcher.close()
        return results, compute.batches

    results, batches = run(main())
    assert batches == [[2, 1, 1]]
    assert [r[0].flatten().tolist() for r in results] == [[0.0, 2.0], [20.0], [60.0]]


def test_batchers_count_the_requests_they_hold_against_those_in_flight():
    in_flight = {"value": 0}

    async def main():
        batchers = Batchers(
            ThreadPoolExecutor(1),
            max_batch_rows=64,
            max_delay_s=0.01,
            max_queue_requests=10,
            requests_in_flight=lambda: in_flight["value"],
        )
        compute = Recorder()
        compute.gate.clear()
        served = Snapshot("m", 1)
        batcher = batchers.get(served, "op", None, lambda: compute)
        in_flight["value"] = 2
        pending = asyncio.ensure_future(batcher.submit((rows(0, 1),), asyncio.get_running_loop().time() + 5))
        await asyncio.sleep(0.05)
        seen = (batchers.holding.requests, batcher.others_coming())
        in_flight["value"] = 1
        seen_after = batcher.others_coming()
        compute.gate.set()
        await pending
        left = batchers.holding.requests
        await batchers.close()
        return seen, seen_after, left

    (holding, coming), coming_after, left = run(main())
    assert holding == 1 and coming and not coming_after and left == 0


def test_big_requests_are_split_never_refused_and_come_back_in_order():
    compute = Recorder()
    (result,) = run(submit_once(compute, 100, max_batch_rows=16))
    assert torch.equal(result, 2 * rows(0, 100))
    assert max(sum(b) for b in compute.batches) <= 16


def test_no_merging_with_one_row_and_no_delay():
    compute = Recorder()

    async def main():
        batcher = make(compute, max_batch_rows=1, max_delay_s=0.0)
        batcher.start()
        deadline = asyncio.get_running_loop().time() + 5
        await asyncio.gather(*(batcher.submit((rows(i, 1),), deadline) for i in range(8)))
        await batcher.close()

    run(main())
    assert compute.batches == [[1]] * 8


def test_full_queue_refuses_at_once_with_retry_after():
    compute = Recorder()
    compute.gate.clear()  # the model is busy: nothing leaves the queue

    async def main():
        batcher, first = await held_at_the_gate(compute, max_queue_requests=3)
        deadline = asyncio.get_running_loop().time() + 5
        waiting = [asyncio.ensure_future(batcher.submit((rows(i, 1),), deadline)) for i in range(3)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull) as refused:
            await batcher.submit((rows(9, 1),), deadline)
        compute.gate.set()
        await asyncio.gather(first, *waiting)
        await batcher.close()
        return refused.value

    refused = run(main())
    assert refused.headers["Retry-After"] and refused.status == 503


def test_deadline_in_queue_gives_504_and_never_reaches_the_model():
    compute = Recorder()
    compute.gate.clear()

    async def main():
        batcher, blocker = await held_at_the_gate(compute)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(DeadlineExceeded):
            await batcher.submit((rows(500, 2),), loop.time() + 0.1)
        waited = loop.time() - started
        compute.gate.set()
        await blocker
        await batcher.close()
        return waited

    waited = run(main())
    assert waited < 1.0  # answered at its deadline, not when the queue moved
    assert compute.values == [0.0]  # only the blocker was computed; the expired rows never were


def test_queued_deadlines_expire_at_their_own_time_whatever_their_order():
    """One timer serves the deadlines of all queued one-part requests: a request arriving with an earlier
    deadline than those before it still gets its 504 at that deadline, and the others are untouched."""
    compute = Recorder()
    compute.gate.clear()

    async def main():
        batcher, computing = await held_at_the_gate(compute)
        loop = asyncio.get_running_loop()
        try:
            late = asyncio.ensure_future(batcher.submit((rows(100, 1),), loop.time() + 30))
            soon = asyncio.ensure_future(batcher.submit((rows(200, 1),), loop.time() + 0.1))
            sooner = asyncio.ensure_future(batcher.submit((rows(300, 1),), loop.time() + 0.05))
            # answered at their own deadlines, long before the others' (30 s): the timeout guards a hang
            done, _ = await asyncio.wait([soon, sooner], timeout=10)
            assert done == {soon, sooner}
            for waiter in done:
                with pytest.raises(DeadlineExceeded, match="deadline passed while it waited in the queue"):
                    waiter.result()
            assert not late.done() and not computing.done()
        finally:
            compute.gate.set()
        results = await asyncio.gather(computing, late)
        await batcher.close()
        return results

    first, late = run(main())
    assert torch.equal(first[0], 2 * rows(0, 1)) and torch.equal(late[0], 2 * rows(100, 1))
    assert compute.values == [0.0, 100.0]  # the expired rows never reached the model


def test_out_of_memory_is_retried_in_halves():
    compute = Recorder(oom_above=10)
    (result,) = run(submit_once(compute, 40))
    assert torch.equal(result, 2 * rows(0, 40))
    assert max(sum(b) for b in compute.batches) <= 10


def test_out_of_memory_on_one_row_fails_with_503():
    with pytest.raises(OutOfMemory):
        run(submit_once(Recorder(oom_above=0), 4))


def test_a_poisoned_request_fails_alone():
    compute = Recorder(poison=13.0)

    async def main():
        batcher = make(compute, max_delay_s=0.05)
        batcher.start()
        deadline = asyncio.get_running_loop().time() + 5
        return await asyncio.gather(
            *(batcher.submit((rows(10 * i, 5),), deadline) for i in range(4)), return_exceptions=True
        )

    results = run(main())
    assert isinstance(results[1], ComputeFailed)  # rows 10..14 hold the poison 13
    for i in (0, 2, 3):
        assert torch.equal(results[i][0], 2 * rows(10 * i, 5))


def test_cancelled_waiters_do_not_break_the_loop_and_closed_batchers_refuse():
    compute = Recorder(delay=0.05)

    async def main():
        batcher = make(compute, max_delay_s=0.0)
        batcher.start()
        deadline = asyncio.get_running_loop().time() + 5
        doomed = asyncio.ensure_future(batcher.submit((rows(0, 2),), deadline))
        await asyncio.sleep(0.01)
        doomed.cancel()  # its client disconnected while it computes
        survivor = await batcher.submit((rows(5, 2),), deadline)
        await batcher.close()
        with pytest.raises(ShuttingDown):
            await batcher.submit((rows(0, 1),), deadline)
        return survivor

    (result,) = run(main())
    assert torch.equal(result, 2 * rows(5, 2))


def test_batchers_of_one_model_and_operation_share_one_queue_bound():
    from service.api.batcher import QueueBudget

    compute = Recorder()
    compute.gate.clear()

    async def main():
        budget = QueueBudget(2)
        a, b = (make(compute, max_delay_s=0.0, max_queue_requests=2, budget=budget) for _ in range(2))
        a.start()
        b.start()
        deadline = asyncio.get_running_loop().time() + 5
        running = [
            asyncio.ensure_future(a.submit((rows(0, 1),), deadline)),
            asyncio.ensure_future(b.submit((rows(1, 1),), deadline)),
        ]
        await asyncio.sleep(0.05)  # both taken: computing (blocked), not waiting
        waiting = [
            asyncio.ensure_future(a.submit((rows(2, 1),), deadline)),
            asyncio.ensure_future(b.submit((rows(3, 1),), deadline)),
        ]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            await a.submit((rows(4, 1),), deadline)
        compute.gate.set()
        await asyncio.gather(*running, *waiting)
        await asyncio.gather(a.close(), b.close())

    run(main())


def test_close_with_a_timeout_refuses_what_is_still_queued():
    compute = Recorder()
    compute.gate.clear()

    async def main():
        batcher = make(compute, max_delay_s=0.0)
        batcher.start()
        deadline = asyncio.get_running_loop().time() + 5
        stuck = asyncio.ensure_future(batcher.submit((rows(0, 1),), deadline))
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(batcher.submit((rows(1, 1),), deadline))
        await asyncio.sleep(0.01)
        await batcher.close(timeout=0.1)  # returns although the model never finishes
        with pytest.raises(ShuttingDown):
            await queued
        compute.gate.set()
        stuck.cancel()

    run(main())


@dataclass(frozen=True, eq=False)
class Snapshot:
    """Stands in for a ServedModel: Batchers tell versions apart by the snapshot object itself."""

    name: str
    version: int


def bound_to(snapshot: Snapshot, oom_above: int | None = None):
    """A compute function bound to one snapshot: it answers each row with the snapshot's version, and
    records (version, rows) per batch."""
    batches = []

    def compute(payloads):
        sizes = [int(p[0].shape[0]) for p in payloads]
        if oom_above is not None and sum(sizes) > oom_above:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        batches.append((snapshot.version, sum(sizes)))
        return [(torch.full((n, 1), float(snapshot.version)),) for n in sizes]

    compute.batches = batches
    return compute


def make_batchers(**options):
    settings = dict(max_batch_rows=64, max_delay_s=0.05, max_queue_requests=100) | options
    return Batchers(ThreadPoolExecutor(1), **settings)


def test_a_batch_never_mixes_versions_and_an_old_version_drains_then_closes():
    old, new = Snapshot("m", 1), Snapshot("m", 2)
    old_compute, new_compute = bound_to(old), bound_to(new)

    async def main():
        batchers = make_batchers()
        deadline = asyncio.get_running_loop().time() + 5
        old_batcher = batchers.get(old, "op", 1, lambda: old_compute)
        queued_on_old = [asyncio.ensure_future(old_batcher.submit((rows(i, 3),), deadline)) for i in range(3)]
        await asyncio.sleep(0)  # queued, still collecting its batch
        new_batcher = batchers.get(new, "op", 1, lambda: new_compute)  # the swap: the old batcher retires
        on_new = await asyncio.gather(*(new_batcher.submit((rows(i, 3),), deadline) for i in range(3)))
        on_old = await asyncio.gather(*queued_on_old)
        again = batchers.get(new, "op", 1, lambda: bound_to(new))
        for _ in range(500):  # the retired batcher's close finishes (polled, bounded: no timing asserted)
            if batchers.all() == [new_batcher]:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(ShuttingDown):  # retired: it takes no new work
            await old_batcher.submit((rows(0, 1),), deadline)
        left = batchers.all()
        await batchers.close()
        return on_old, on_new, again is new_batcher, left == [new_batcher]

    on_old, on_new, reused, only_the_new_one_left = run(main())
    assert all(torch.equal(r[0], torch.full((3, 1), 1.0)) for r in on_old)  # validated on 1, computed by 1
    assert all(torch.equal(r[0], torch.full((3, 1), 2.0)) for r in on_new)
    assert {v for v, _ in old_compute.batches} == {1} and {v for v, _ in new_compute.batches} == {2}
    assert sum(n for _, n in old_compute.batches) == 9 and sum(n for _, n in new_compute.batches) == 9
    assert reused and only_the_new_one_left


def test_out_of_memory_halves_of_one_request_come_back_whole_from_its_version():
    snapshot = Snapshot("m", 3)
    compute = bound_to(snapshot, oom_above=5)

    async def main():
        batchers = make_batchers()
        batcher = batchers.get(snapshot, "op", 1, lambda: compute)
        try:
            return await batcher.submit((rows(0, 20),), asyncio.get_running_loop().time() + 5)
        finally:
            await batchers.close()

    (result,) = run(main())
    assert torch.equal(result, torch.full((20, 1), 3.0))
    assert sum(n for _, n in compute.batches) == 20 and max(n for _, n in compute.batches) <= 5


class Fatal(BaseException):
    """Not an Exception: what _guarded does not answer (as a KeyboardInterrupt in the compute thread)."""


def fail_on(batcher: Batcher, compute) -> list:
    """Two concurrent requests' outcomes (exceptions returned), with a deadline no test outlasts: a request
    that never got an answer would fail the test with TimeoutError rather than hang it."""

    async def main():
        batcher.start()
        deadline = asyncio.get_running_loop().time() + 30
        submits = (batcher.submit((rows(i, 1),), deadline) for i in range(2))
        try:
            return await asyncio.wait_for(asyncio.gather(*submits, return_exceptions=True), timeout=10)
        finally:
            await batcher.close(timeout=1)

    return run(main())


def test_a_compute_thread_that_dies_of_a_non_exception_fails_its_batch_and_the_batcher_goes_on():
    def compute(payloads):
        raise Fatal("interrupted")

    batcher = make(compute, max_delay_s=0.01)
    outcomes = fail_on(batcher, compute)
    assert all(isinstance(o, ComputeFailed) and "Fatal" in str(o) for o in outcomes)


def test_an_executor_that_refuses_work_fails_the_batch_at_once():
    executor = ThreadPoolExecutor(1)
    executor.shutdown()  # submit() raises RuntimeError from now on
    batcher = Batcher(
        "m", "op", Recorder(), executor, max_batch_rows=64, max_delay_s=0.01, max_queue_requests=10
    )
    outcomes = fail_on(batcher, None)
    assert all(isinstance(o, ComputeFailed) and "shutdown" in str(o) for o in outcomes)


class ManualExecutor:
    """Runs what it is given only when the test says, on the test's own thread."""

    def __init__(self):
        self.pending = []

    def submit(self, fn):
        self.pending.append(fn)

    def run_next(self):
        self.pending.pop(0)()


def test_the_next_batch_goes_from_the_finished_batchs_own_callback():
    """When a batch's outcomes reach the loop and the next batch is ready, the next is handed to the
    compute thread in that same callback, not a pass of the loop later by the batcher's task."""

    async def main():
        executor = ManualExecutor()
        batcher = Batcher(
            "m", "op", Recorder(), executor, max_batch_rows=64, max_delay_s=0.0, max_queue_requests=10
        )
        batcher.start()
        deadline = asyncio.get_running_loop().time() + 30
        first = asyncio.ensure_future(batcher.submit((rows(0, 1),), deadline))
        while not executor.pending:  # the first batch is with the "compute thread"
            await asyncio.sleep(0)
        second = asyncio.ensure_future(batcher.submit((rows(1, 1),), deadline))
        await asyncio.sleep(0)  # queued behind it
        executor.run_next()  # the first batch computes; its callback is scheduled
        await asyncio.sleep(0)  # one pass of the loop: the callback has run, the batcher's task has not
        sent_in_the_callback = len(executor.pending)
        executor.run_next()
        answers = await asyncio.gather(first, second)
        await batcher.close()
        return sent_in_the_callback, answers

    sent_in_the_callback, answers = run(main())
    assert sent_in_the_callback == 1
    assert [a[0].item() for a in answers] == [0.0, 2.0]


def test_the_loop_steps_aside_after_a_hand_over_only_while_other_requests_are_in_flight(monkeypatch):
    """Batcher._hand_off: after handing a batch to the compute thread the loop sleeps `handoff_s` (its GIL
    free for the thread) when the server handles more requests than the batch holds; never when the batch
    is all there is, nor with a hand-off of 0."""
    pauses: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:  # the hand-off's pauses are recorded, not slept; others sleep
        if sys._getframe(1).f_code.co_name == "_hand_off":
            pauses.append(seconds)
        else:
            real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)

    def pauses_for(in_flight: int, handoff_s: float, requests: int) -> list[float]:
        pauses.clear()

        async def main():
            executor = ManualExecutor()
            batchers = Batchers(
                executor,
                max_batch_rows=64,
                max_delay_s=0.0,
                max_queue_requests=10,
                requests_in_flight=lambda: in_flight,
                handoff_s=handoff_s,
            )
            batcher = batchers.get(Snapshot("m", 1), "op", None, Recorder)
            deadline = asyncio.get_running_loop().time() + 30
            pending = [
                asyncio.ensure_future(batcher.submit((rows(i, 1),), deadline)) for i in range(requests)
            ]
            while not executor.pending:
                await asyncio.sleep(0)
            executor.run_next()
            await asyncio.gather(*pending)
            await batchers.close()

        run(main())
        return list(pauses)

    assert pauses_for(in_flight=5, handoff_s=0.0005, requests=2) == [0.0005]
    assert pauses_for(in_flight=2, handoff_s=0.0005, requests=2) == []  # the batch is every request
    assert pauses_for(in_flight=1, handoff_s=0.0005, requests=1) == []
    assert pauses_for(in_flight=5, handoff_s=0.0, requests=2) == []
