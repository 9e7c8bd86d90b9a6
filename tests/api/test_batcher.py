"""The batcher's rules, with fake compute functions so each rule is isolated and exact."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from service.api.batcher import Batcher
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
        return [(y,) for y in (2 * x).split(rows)], 7


def make(compute, **options):
    settings = dict(max_batch_rows=64, max_delay_s=0.05, max_queue_requests=100) | options
    return Batcher("m", "op", compute, ThreadPoolExecutor(1), **settings)


def rows(start: int, n: int) -> torch.Tensor:
    return torch.arange(start, start + n, dtype=torch.float32).reshape(n, 1)


def run(coro):
    return asyncio.run(coro)


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
    for i, (result, versions) in enumerate(results):
        assert versions == [7] and torch.equal(result[0], 2 * rows(100 * i, 3))
    assert len(compute.batches) < 10 and sum(map(sum, compute.batches)) == 30  # merged, nothing lost


def test_big_requests_are_split_never_refused_and_come_back_in_order():
    compute = Recorder()
    (result,), _ = run(submit_once(compute, 100, max_batch_rows=16))
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
        batcher = make(compute, max_queue_requests=3, max_delay_s=0.0)
        batcher.start()
        deadline = asyncio.get_running_loop().time() + 5
        first = asyncio.ensure_future(batcher.submit((rows(0, 1),), deadline))
        await asyncio.sleep(0.05)  # taken by the loop: computing, not waiting
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
        batcher = make(compute, max_delay_s=0.0)
        batcher.start()
        loop = asyncio.get_running_loop()
        blocker = asyncio.ensure_future(batcher.submit((rows(0, 1),), loop.time() + 5))
        await asyncio.sleep(0.05)
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


def test_out_of_memory_is_retried_in_halves():
    compute = Recorder(oom_above=10)
    (result,), _ = run(submit_once(compute, 40))
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
        return await asyncio.gather(*(batcher.submit((rows(10 * i, 5),), deadline) for i in range(4)),
                                    return_exceptions=True)

    results = run(main())
    assert isinstance(results[1], ComputeFailed)  # rows 10..14 hold the poison 13
    for i in (0, 2, 3):
        assert torch.equal(results[i][0][0], 2 * rows(10 * i, 5))


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

    (result,), _ = run(main())
    assert torch.equal(result, 2 * rows(5, 2))


def test_batchers_of_one_model_and_operation_share_one_queue_bound():
    from service.api.batcher import QueueBudget

    compute = Recorder()
    compute.gate.clear()

    async def main():
        budget = QueueBudget(2)
        a = Batcher("m", "op", compute, ThreadPoolExecutor(1), max_batch_rows=64, max_delay_s=0.0,
                    max_queue_requests=2, budget=budget)
        b = Batcher("m", "op", compute, ThreadPoolExecutor(1), max_batch_rows=64, max_delay_s=0.0,
                    max_queue_requests=2, budget=budget)
        a.start()
        b.start()
        deadline = asyncio.get_running_loop().time() + 5
        running = [asyncio.ensure_future(a.submit((rows(0, 1),), deadline)),
                   asyncio.ensure_future(b.submit((rows(1, 1),), deadline))]
        await asyncio.sleep(0.05)  # both taken: computing (blocked), not waiting
        waiting = [asyncio.ensure_future(a.submit((rows(2, 1),), deadline)),
                   asyncio.ensure_future(b.submit((rows(3, 1),), deadline))]
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


def test_split_requests_report_each_part_version_and_the_engine_retries_a_mixed_answer():
    from service.api.engine import Engine

    calls = []

    def versioned(payloads):  # version 1 for the first model call, then 2: a swap between parts
        calls.append(len(payloads))
        x = torch.cat([p[0] for p in payloads])
        return [(y,) for y in (2 * x).split([int(p[0].shape[0]) for p in payloads])], 1 if len(calls) == 1 else 2

    async def main():
        batcher = make(versioned, max_batch_rows=4, max_delay_s=0.0)
        batcher.start()
        deadline = asyncio.get_running_loop().time() + 5
        (result,), version = await Engine.submit_consistent(batcher, (rows(0, 8),), deadline)
        await batcher.close()
        return result, version

    result, version = run(main())
    assert version == 2 and torch.equal(result, 2 * rows(0, 8))
    assert len(calls) >= 3  # the first answer mixed versions 1 and 2, so it was computed again
