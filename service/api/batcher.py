"""Dynamic batching: concurrent requests for one model and operation become one tensor batch.

A queue of parts and one background loop, as in Ray Serve's batching: the loop waits for its first part,
gives others up to `max_delay_s` to join or until `max_batch_rows` rows are waiting, takes what fits, runs
the model off the event loop (in the compute executor) and hands each part its slice of the result. The
delay is only waited while another request may still come (`others_coming`): when every request the
server is handling is in a batcher already, the batch runs at once. An arrival wakes the loop only when it
changes what the loop waits for (a first part, a full batch, no one else coming); otherwise the delay's
timer does. When a batch's result comes back and the next batch would go at once, it goes from that
result's callback, before the finished batch's requests are answered.

- A request with more rows than `max_batch_rows` is split into parts; its result is joined back in order.
- The queue is bounded in *requests* (a QueueBudget shared by the batchers of one model and operation,
  which differ only in options such as the ensemble size); a full queue refuses at once (QueueFull), so
  one large request never counts against itself.
- Each request has a deadline. A request whose deadline passes while it is still queued fails with
  DeadlineExceeded and never reaches the model; one already computing finishes.
- A failing batch fails only whom it must: on out-of-memory the batch is retried in halves (down to one
  row); on any other error each request of a shared batch is retried alone, so a poisoned request cannot
  fail its batch-mates.
- A waiter that went away (client disconnect, deadline) leaves a done future; results are never set on it.
- A batcher computes with one model version, the one its compute function is bound to. `Batchers` keeps
  one per model version, operation and options, so a batch never mixes versions and every part of a
  request is computed by the version the request was validated against.
Payloads are tuples of tensors, results tuples of tensors or numpy arrays; the first dimension is the row.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import math
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import metrics
from .errors import APIError, ComputeFailed, DeadlineExceeded, OutOfMemory, QueueFull, ShuttingDown

if TYPE_CHECKING:
    from .registry import ServedModel

log = logging.getLogger("made.batcher")
EXPIRED_IN_QUEUE = "the request's deadline passed while it waited in the queue"

Tensors = tuple[torch.Tensor, ...]
Arrays = tuple[torch.Tensor | np.ndarray, ...]
# compute(payloads) -> one result per payload, or the APIError that payload gets (its batch-mates go on)
Compute = Callable[[Sequence[Tensors]], list[Arrays]]


def rows_of(payload: Tensors) -> int:
    return int(payload[0].shape[0])


def slice_rows(payload: Tensors, start: int, stop: int) -> Tensors:
    return tuple(t[start:stop] for t in payload)


def join_rows(parts: Sequence[Arrays]) -> Arrays:
    if len(parts) == 1:
        return parts[0]
    joined = zip(*parts, strict=True)
    return tuple(np.concatenate(ts) if isinstance(ts[0], np.ndarray) else torch.cat(ts) for ts in joined)


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def _wake(wakeup: asyncio.Future) -> None:
    if not wakeup.done():
        wakeup.set_result(None)


class Holding:
    """How many requests are inside the batchers of the server (queued or computing), shared by them all."""

    def __init__(self):
        self.requests = 0


class QueueBudget:
    """How many requests may wait, across the batchers of one model and operation; how many do is the
    made_queue_depth series `depth` (None: exported nowhere)."""

    def __init__(self, limit: int, depth=None):
        self.limit = limit
        self.waiting = metrics.LiveCount(depth)


class _Request:
    __slots__ = ("parts_waiting", "enqueued", "deadline", "in_queue", "one_part")

    def __init__(self, parts_waiting: int, enqueued: float, deadline: float, one_part: bool = False):
        self.parts_waiting = parts_waiting
        self.enqueued = enqueued
        self.deadline = deadline
        self.in_queue = True
        self.one_part = one_part  # its deadline is the batcher's expiry timer's to enforce


class _Part:
    __slots__ = ("payload", "rows", "request", "future", "taken")

    def __init__(self, payload: Tensors, rows: int, request: _Request, future: asyncio.Future):
        self.payload, self.rows, self.request, self.future = payload, rows, request, future
        self.taken = False


class Batcher:
    def __init__(
        self,
        model: str,
        operation: str,
        compute: Compute,
        executor: Executor,
        *,
        max_batch_rows: int,
        max_delay_s: float,
        max_queue_requests: int,
        budget: QueueBudget | None = None,
        holding: Holding | None = None,
        in_flight_beyond: Callable[[int], bool] | None = None,
        handoff_s: float = 0.0,
    ):
        self.model, self.operation = model, operation
        self.holding = holding or Holding()
        # Whether the server handles more requests than a given number (None: not known). Against the
        # requests the batchers hold it says whether others may still come (others_coming); against a
        # batch's, whether the loop steps aside after handing it over (_hand_off, `handoff_s`).
        self.in_flight_beyond, self.handoff_s = in_flight_beyond, handoff_s
        self.compute = compute
        self.executor = executor
        self.max_batch_rows = max_batch_rows
        self.max_delay_s = max_delay_s
        self.budget = budget or QueueBudget(max_queue_requests, metrics.QUEUE_DEPTH.labels(model, operation))
        self._queue: collections.deque[_Part] = collections.deque()
        self._rows_queued = 0  # rows of the parts in the queue (a part cancelled there counts until taken)
        # The loop sleeps on `_wakeup` (and, while collecting a batch, a timer): an arrival wakes it only when
        # that changes what it waits for, since waking it costs the event loop more than queueing does.
        self._wakeup: asyncio.Future | None = None
        self._collecting = False
        self._busy = False
        self._closed = False
        self._loop_task: asyncio.Task | None = None
        # One timer for the deadlines of every queued one-part request, at the earliest of them: a timer per
        # request (asyncio.wait's timeout) cost more of the event loop than the rest of queueing it.
        self._expiry: asyncio.TimerHandle | None = None
        self._expiry_at = math.inf
        # this batcher's series, bound once: labels() on every request costs more than the update itself;
        # what its requests asked for and waited is observed once per batch taken (metrics.observe_all)
        self._rows_asked: list[int] = []
        labels = {"model": model, "operation": operation}
        self._request_rows = metrics.REQUEST_ROWS.labels(**labels)
        self._queue_wait = metrics.QUEUE_WAIT.labels(**labels)
        self._batch_rows = metrics.BATCH_ROWS.labels(**labels)
        self._compute_seconds = metrics.COMPUTE.labels(**labels)

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(
                self._run(), name=f"batcher-{self.model}"
            )

    @property
    def idle(self) -> bool:
        return not self._queue and not self._busy

    async def close(self, timeout: float | None = None) -> None:
        """Refuse new work, let the queue drain (for at most `timeout` seconds), then stop the loop;
        whatever is still queued then is refused rather than left hanging."""
        self._closed = True
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.idle and (deadline is None or time.monotonic() < deadline):
            await asyncio.sleep(0.01)
        while self._queue:
            part = self._queue.popleft()
            self._rows_queued -= part.rows
            if not part.future.done():
                part.future.set_exception(ShuttingDown("the server stopped before this request was computed"))
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry, self._expiry_at = None, math.inf
        self._observe([])
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)

    # ---- the request side --------------------------------------------------------------------------
    async def submit(self, payload: Tensors, deadline: float) -> Arrays:
        """The result for `payload`; `deadline` is on loop.time()."""
        if self._closed:
            raise ShuttingDown("the server is shutting down and takes no new work")
        if self.budget.waiting.value >= self.budget.limit:
            raise QueueFull(
                f"the queue for {self.model}/{self.operation} is full "
                f"({self.budget.limit} requests waiting); retry shortly",
                headers={"Retry-After": "1"},
                limit=self.budget.limit,
            )
        loop = asyncio.get_running_loop()
        n = rows_of(payload)
        self._rows_asked.append(n)
        if n <= self.max_batch_rows:
            return await self._submit_part(loop, payload, n, deadline)
        bounds = [(s, min(s + self.max_batch_rows, n)) for s in range(0, n, self.max_batch_rows)]
        request = _Request(parts_waiting=len(bounds), enqueued=loop.time(), deadline=deadline)
        parts = [_Part(slice_rows(payload, a, b), b - a, request, loop.create_future()) for a, b in bounds]
        self._join(parts, n)
        futures = [p.future for p in parts]
        try:
            _, pending = await asyncio.wait(futures, timeout=max(0.0, deadline - loop.time()))
            if pending and any(not p.taken for p in parts):
                raise DeadlineExceeded(EXPIRED_IN_QUEUE)
            if pending:  # every part is computing already: let them finish
                await asyncio.wait(pending)
            results = [f.result() for f in futures]  # raises the first part's error
        finally:
            for p in parts:  # a deadline or a cancelled waiter: whatever is still queued is dropped
                if not p.future.done():
                    p.future.cancel()
            self._done(request)
        return join_rows(results)

    async def _submit_part(
        self, loop: asyncio.AbstractEventLoop, payload: Tensors, n: int, deadline: float
    ) -> Arrays:
        """A request of one part: its future is awaited as it is, and its deadline is the batcher's expiry
        timer's to enforce while it is queued (once taken, it is computed whatever the deadline)."""
        request = _Request(parts_waiting=1, enqueued=loop.time(), deadline=deadline, one_part=True)
        part = _Part(payload, n, request, loop.create_future())
        self._join([part], n)
        if deadline < self._expiry_at:
            self._expire_at(loop, deadline)
        try:
            return await part.future  # a cancelled waiter cancels the future: the batch skips it
        finally:
            self._done(request)

    def _join(self, parts: list[_Part], rows: int) -> None:
        """One request's parts (`rows` rows in all) join the queue, counted against its bound."""
        self.budget.waiting.add(1)
        self.holding.requests += 1
        self._queue.extend(parts)
        self._arrival(rows)

    def _done(self, request: _Request) -> None:
        """The request's waiter is leaving: answered, failed or cancelled."""
        self._leave_queue(request)
        self.holding.requests -= 1

    def _arrival(self, rows: int) -> None:
        """Rows joined the queue: wake the loop if it waits for a first part, or if it collects a batch that
        is now full or that no one else is on the way to join (otherwise its timer wakes it)."""
        self._rows_queued += rows
        wakeup = self._wakeup
        if wakeup is None or wakeup.done():
            return
        if self._collecting and not self._batch_ready():
            return
        wakeup.set_result(None)

    def _batch_ready(self) -> bool:
        """The batch being collected should go before its delay runs out: it is full, or no request is on
        its way to join it (every one in flight is in a batcher), so waiting would only lose time."""
        return self._rows_queued >= self.max_batch_rows or not self.others_coming()

    def others_coming(self) -> bool:
        """Whether a request not yet in a batcher may still join: the server handles requests beyond those
        the batchers hold (not known: assume so, and always give the delay)."""
        return self.in_flight_beyond is None or self.in_flight_beyond(self.holding.requests)

    def _collect_until(self) -> float:
        """loop.time() at which the batch being collected goes, ready or not: its first part's delay."""
        return self._queue[0].request.enqueued + self.max_delay_s

    def _goes_now(self, now: float) -> bool:
        """The queued batch goes at `now` (the queue holds a part): it is ready, or its delay is over."""
        return self._batch_ready() or now >= self._collect_until()

    async def _sleep(self, loop: asyncio.AbstractEventLoop, until: float | None) -> None:
        """Until `_arrival` wakes the loop, or until `until` (loop.time()), if given."""
        self._wakeup = wakeup = loop.create_future()
        timer = None if until is None else loop.call_at(until, _wake, wakeup)
        try:
            await wakeup
        finally:
            self._wakeup = None
            if timer is not None:
                timer.cancel()

    def _expire_at(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry, self._expiry_at = loop.call_at(when, self._expire, loop), when

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """504 for every one-part request whose deadline has passed while queued; then the timer waits for
        the earliest deadline still queued (multi-part requests time out in `submit`)."""
        self._expiry, self._expiry_at = None, math.inf
        now, earliest = loop.time(), math.inf
        for part in self._queue:
            if part.future.done() or not part.request.one_part:  # (taken parts have left the queue)
                continue
            if part.request.deadline <= now:
                part.future.set_exception(DeadlineExceeded(EXPIRED_IN_QUEUE))
            else:
                earliest = min(earliest, part.request.deadline)
        if earliest < math.inf:
            self._expire_at(loop, earliest)

    def _leave_queue(self, request: _Request) -> None:
        if request.in_queue:
            request.in_queue = False
            self.budget.waiting.add(-1)

    # ---- the loop side -----------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                await self._sleep(loop, None)
            # Give others until the first part's delay runs out to join, unless the batch is ready already.
            self._collecting = True
            try:
                while not self._closed and not self._goes_now(loop.time()):
                    await self._sleep(loop, self._collect_until())
            finally:
                self._collecting = False
            batch = self._take(loop.time())
            if not batch:
                continue
            self._busy = True
            try:
                await self._execute(batch)
            finally:
                self._busy = False

    def _take(self, now: float) -> list[_Part]:
        batch: list[_Part] = []
        waited: list[float] = []  # by each request that leaves the queue with this batch
        rows = 0
        while self._queue and (not batch or rows + self._queue[0].rows <= self.max_batch_rows):
            part = self._queue.popleft()
            self._rows_queued -= part.rows
            if part.future.done():  # cancelled: its waiter is gone
                continue
            if now > part.request.deadline:
                part.future.set_exception(DeadlineExceeded("the request's deadline passed in the queue"))
                continue
            part.taken = True
            batch.append(part)
            rows += part.rows
            part.request.parts_waiting -= 1
            if part.request.parts_waiting == 0 and part.request.in_queue:
                waited.append(now - part.request.enqueued)
                self._leave_queue(part.request)
        self._observe(waited)
        return batch

    def _observe(self, waited: list[float]) -> None:
        metrics.observe_all(self._queue_wait, waited)
        asked, self._rows_asked = self._rows_asked, []
        metrics.observe_all(self._request_rows, asked)

    async def _execute(self, batch: list[_Part]) -> None:
        """Compute the batch, and the batches `_deliver` sends after it straight from the compute thread's
        callback, until one finishes with none ready to follow it."""
        pending = self._submit(batch)
        while (following := await pending) is not None:
            pending = following

    def _submit(self, batch: list[_Part]) -> asyncio.Future:
        """Hand the batch to the compute thread. Its own callback into the loop (`_deliver`) answers the
        batch's requests: through an awaited executor future they would wake a pass of the event loop later,
        after the batcher's loop. The future returned is set by `_deliver`: to the next batch's, if it sent
        one, else None."""
        loop = asyncio.get_running_loop()
        self._batch_rows.observe(sum(p.rows for p in batch))
        delivered = loop.create_future()
        started = time.perf_counter()
        payloads = [p.payload for p in batch]

        def compute() -> None:  # in the compute thread
            try:
                outcomes = self._guarded(payloads)
            except BaseException as exc:  # _guarded answers every Exception: this is a worse failure
                outcomes = [ComputeFailed(f"model computation failed: {exc!r}")] * len(batch)
            loop.call_soon_threadsafe(self._deliver, batch, outcomes, started, delivered)

        try:
            self.executor.submit(compute)
        except Exception as exc:  # the executor itself failed (shut down): nobody may hang
            failed = [ComputeFailed(f"model computation failed: {exc}")] * len(batch)
            self._deliver(batch, failed, started, delivered, send_next=False)
        else:
            self._hand_off(len(batch))
        return delivered

    def _hand_off(self, parts: int) -> None:
        """The compute thread needs the GIL to start the batch, and again after each torch call. While the
        server handles requests beyond the batch's, the loop holds the GIL for them: under 64 clients x
        1-row log-prob on 2 cores the thread got it a median 4 ms after the hand-over. So the loop steps
        aside for `handoff_s` then. With no other request in flight it is idle already, and does not wait."""
        if self.handoff_s and self.in_flight_beyond is not None and self.in_flight_beyond(parts):
            time.sleep(self.handoff_s)

    def _deliver(
        self,
        batch: list[_Part],
        outcomes: list,
        started: float,
        delivered: asyncio.Future,
        send_next: bool = True,
    ) -> None:
        """The batch's outcomes, in the loop. First the next batch goes, if it would go now in `_run` (ready,
        or its first request's delay over): the compute thread does not wait for a pass of the loop, nor
        for these requests' answers. (`delivered` is done already if the batcher's loop was cancelled.)"""
        self._compute_seconds.observe(time.perf_counter() - started)
        if not delivered.done():
            following = None
            if send_next and self._queue and not self._closed:
                now = delivered.get_loop().time()
                if self._goes_now(now):
                    following_batch = self._take(now)
                    following = self._submit(following_batch) if following_batch else None
            delivered.set_result(following)
        for part, outcome in zip(batch, outcomes, strict=True):
            if part.future.done():  # the client went away while its batch was computing
                continue
            if isinstance(outcome, BaseException):
                part.future.set_exception(outcome)
            else:
                part.future.set_result(outcome)

    # ---- runs in the compute executor ----------------------------------------------------------------
    def _guarded(self, payloads: list[Tensors]) -> list[Arrays | APIError]:
        """One outcome per payload: its result, or the error that payload must get."""
        try:
            results = self.compute(payloads)
            if len(results) != len(payloads):
                raise RuntimeError(f"compute returned {len(results)} results for {len(payloads)} requests")
            return list(results)
        except APIError as exc:  # e.g. the model became unavailable: the same answer for everyone
            return [exc] * len(payloads)
        except Exception as exc:
            if is_out_of_memory(exc):
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                return self._retry_in_halves(payloads, exc)
            if len(payloads) > 1:  # find out whose rows fail: each request alone
                log.warning(
                    "batch failed; retrying its requests one by one",
                    extra={"model": self.model, "operation": self.operation, "error": str(exc)},
                )
                return [outcome for p in payloads for outcome in self._guarded([p])]
            log.exception(
                "model computation failed", extra={"model": self.model, "operation": self.operation}
            )
            return [ComputeFailed(f"model computation failed: {exc}")]

    def _retry_in_halves(self, payloads: list[Tensors], exc: Exception) -> list:
        if len(payloads) > 1:
            middle = len(payloads) // 2
            return self._guarded(payloads[:middle]) + self._guarded(payloads[middle:])
        payload = payloads[0]
        n = rows_of(payload)
        if n <= 1:
            return [
                OutOfMemory(
                    f"the device is out of memory even for one row: {exc}", headers={"Retry-After": "5"}
                )
            ]
        middle = n // 2
        halves = [
            self._guarded([slice_rows(payload, 0, middle)])[0],
            self._guarded([slice_rows(payload, middle, n)])[0],
        ]
        for half in halves:
            if isinstance(half, BaseException):
                return [half]
        return [join_rows(halves)]


class Batchers:
    """Every batcher of the server: one per model version (a ServedModel snapshot), operation and options
    such as the ensemble size, so a batch never mixes versions or options. The batchers of one model and
    operation share one queue bound. When a model's new version gets its first batcher, the batchers of
    the versions before it stop taking work and close once their queues are drained."""

    def __init__(
        self,
        executor: Executor,
        *,
        max_batch_rows: int,
        max_delay_s: float,
        max_queue_requests: int,
        requests_in_flight: Callable[[], int] | None = None,
        handoff_s: float = 0.0,
    ):
        """`requests_in_flight`: how many requests the server is handling. While every one of them is in a
        batcher already, no batch waits for others to join (None: every batch waits its delay).
        `handoff_s`: Batcher._hand_off."""
        self.executor = executor
        self.handoff_s = handoff_s
        self.in_flight_beyond = None if requests_in_flight is None else lambda n: requests_in_flight() > n
        self.holding = Holding()
        self.max_batch_rows, self.max_delay_s = max_batch_rows, max_delay_s
        self.max_queue_requests = max_queue_requests
        # (name, operation, options) -> (the snapshot it computes with, its batcher)
        self._current: dict[tuple, tuple[ServedModel, Batcher]] = {}
        self._budgets: dict[tuple[str, str], QueueBudget] = {}
        self._retiring: set[Batcher] = set()
        self._closing: set[asyncio.Task] = set()

    def get(
        self, served: ServedModel, operation: str, options: Hashable, make_compute: Callable[[], Compute]
    ) -> Batcher:
        """The batcher of this snapshot, operation and options; made, with the compute function
        `make_compute()` returns (it must compute with `served`), if there is none yet. Runs on the event
        loop; the caller submits to it before it next awaits, so a batcher is never retired between this
        call and the request joining its queue."""
        key = (served.name, operation, options)
        found = self._current.get(key)
        if found is not None and found[0] is served:
            return found[1]
        self._retire_other_versions(served)
        budget = self._budgets.get((served.name, operation))
        if budget is None:
            depth = metrics.QUEUE_DEPTH.labels(model=served.name, operation=operation)
            budget = self._budgets[served.name, operation] = QueueBudget(self.max_queue_requests, depth)
        batcher = Batcher(
            served.name,
            operation,
            make_compute(),
            self.executor,
            max_batch_rows=self.max_batch_rows,
            max_delay_s=self.max_delay_s,
            max_queue_requests=self.max_queue_requests,
            budget=budget,
            holding=self.holding,
            in_flight_beyond=self.in_flight_beyond,
            handoff_s=self.handoff_s,
        )
        batcher.start()
        self._current[key] = (served, batcher)
        return batcher

    def _retire_other_versions(self, served: ServedModel) -> None:
        for key, (snapshot, batcher) in list(self._current.items()):
            if key[0] == served.name and snapshot is not served:
                del self._current[key]
                self._retiring.add(batcher)
                task = asyncio.get_running_loop().create_task(batcher.close(), name=f"retire-{served.name}")
                self._closing.add(task)
                task.add_done_callback(functools.partial(self._retired, batcher))

    def _retired(self, batcher: Batcher, task: asyncio.Task) -> None:
        self._retiring.discard(batcher)
        self._closing.discard(task)

    def all(self) -> list[Batcher]:
        return [batcher for _, batcher in self._current.values()] + list(self._retiring)

    @property
    def idle(self) -> bool:
        return all(b.idle for b in self.all())

    async def close(self, timeout: float | None = None) -> None:
        await asyncio.gather(*(b.close(timeout=timeout) for b in self.all()))
        await asyncio.gather(*self._closing, return_exceptions=True)
