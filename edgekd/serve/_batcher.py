"""Dynamic micro-batching: requests that arrive close together run as one model call.

Each model has one :class:`MicroBatcher`. :meth:`~MicroBatcher.submit` puts a request (its input arrays,
any number of rows) in a bounded queue and waits for its slice of the outputs. One worker task takes the
oldest request, then keeps collecting until the batch holds ``max_batch`` rows or ``max_delay_s`` has passed
since that request *arrived* (like Triton's ``max_queue_delay_microseconds``), concatenates the inputs along
the batch axis and runs the model *in a worker thread* (ONNX Runtime releases the GIL, so the event loop keeps
accepting requests meanwhile). While one batch runs the next one fills, and requests that waited out the
running batch are sent on at once.

A full queue is refused at once (:class:`QueueFullError`, HTTP 503) rather than letting latency grow
without bound. ``max_batch=1`` turns batching off.

Example:
    >>> batcher = MicroBatcher(model.run, max_batch=32, max_delay_s=0.005, max_queue=256)
    >>> await batcher.start()
    >>> outputs = await batcher.submit({"input": x})       # x: [n, C, H, W]; outputs[name]: [n, ...]
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

__all__ = ["MicroBatcher", "QueueFullError"]

Feeds = dict[str, np.ndarray]


class QueueFullError(Exception):
    """The request queue of a model is full (the server answers 503)."""


@dataclass
class _Item:
    feeds: Feeds
    rows: int
    future: asyncio.Future
    arrived: float  # time.monotonic() at submit: the delay counts from the oldest request's arrival


class MicroBatcher:
    """Collects requests into batches of up to ``max_batch`` rows and runs them one batch at a time.

    Args:
        run: the model call, ``feeds -> outputs by name`` (run in a worker thread).
        max_batch: rows per model call.
        max_delay_s: how long the first request of a batch may wait for company.
        max_queue: requests waiting (not yet running) before new ones are refused.
        on_batch: called in the event loop after each batch with ``(rows, seconds)`` (metrics).
    """

    def __init__(
        self,
        run: Callable[[Feeds], Feeds],
        *,
        max_batch: int,
        max_delay_s: float,
        max_queue: int,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.run, self.max_batch, self.max_delay_s, self.max_queue = run, max_batch, max_delay_s, max_queue
        self.on_batch = on_batch
        self._queue: collections.deque[_Item] = collections.deque()
        self._rows = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgekd-infer")

    @property
    def depth(self) -> int:
        """Requests waiting in the queue."""
        return len(self._queue)

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass  # the cancellation we asked for
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(RuntimeError("the server is shutting down"))
        self._queue.clear()
        self._executor.shutdown(wait=True)

    async def submit(self, feeds: Feeds) -> Feeds:
        """Queue one request and wait for its outputs.

        Raises:
            QueueFullError: ``max_queue`` requests are already waiting.
        """
        if self._wake is None:
            raise RuntimeError("MicroBatcher.start() was not awaited")
        if len(self._queue) >= self.max_queue:
            raise QueueFullError(f"{len(self._queue)} requests are queued (the limit)")
        rows = int(next(iter(feeds.values())).shape[0])
        item = _Item(feeds, rows, asyncio.get_running_loop().create_future(), time.monotonic())
        self._queue.append(item)
        self._rows += rows
        self._wake.set()
        return await item.future

    async def _next_batch(self) -> list[_Item]:
        assert self._wake is not None  # set by start(); internal invariant, not user input
        while not self._queue:
            self._wake.clear()
            await self._wake.wait()
        deadline = self._queue[0].arrived + self.max_delay_s  # a request that waited out a running batch goes now
        while self._rows < self.max_batch and (left := deadline - time.monotonic()) > 0:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except asyncio.TimeoutError:
                break
        batch = [self._queue.popleft()]
        rows = batch[0].rows
        while self._queue and rows + self._queue[0].rows <= self.max_batch:
            item = self._queue.popleft()
            batch.append(item)
            rows += item.rows
        self._rows -= rows
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [i for i in await self._next_batch() if not i.future.cancelled()]
            if not batch:
                continue
            names = list(batch[0].feeds)
            feeds = {
                n: np.concatenate([i.feeds[n] for i in batch]) if len(batch) > 1 else batch[0].feeds[n] for n in names
            }
            t0 = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(self._executor, self.run, feeds)
            except Exception as e:  # delivered to every waiting request (the server answers 500)
                for i in batch:
                    if not i.future.done():
                        i.future.set_exception(e)
                continue
            if self.on_batch is not None:
                self.on_batch(sum(i.rows for i in batch), time.perf_counter() - t0)
            start = 0
            for i in batch:
                if not i.future.done():
                    i.future.set_result({k: v[start : start + i.rows] for k, v in outputs.items()})
                start += i.rows
