"""Dynamic micro-batching: concurrent requests for one model share one forward pass.

Framework independent (asyncio only), so the FastAPI app, a Ray Serve deployment or any other
async host can use it. The forward pass runs in a dedicated worker thread, so the event loop keeps
accepting and parsing requests while torch computes; whatever arrived meanwhile forms the next
batch. Policy, per batch:

1. wait for a first item;
2. take everything already queued (up to ``max_batch_size``);
3. if the batch is not full and other requests were recently in flight, wait up to ``max_wait_ms``
   for more. A lone sequential client never pays this wait: batching only helps when requests overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import numpy as np

if TYPE_CHECKING:
    from .metrics import ServerMetrics
    from .model import ServerModel

T = TypeVar("T")
R = TypeVar("R")
T_contra = TypeVar("T_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)

__all__ = ["Batcher", "BatcherFactory", "MicroBatcher", "BatcherClosedError"]


class Batcher(Protocol[T_contra, R_co]):
    """What the HTTP app needs from a batcher: :class:`MicroBatcher` here, ``@serve.batch`` under Ray Serve."""

    def start(self) -> None: ...

    async def aclose(self) -> None: ...

    @property
    def running(self) -> bool: ...

    async def submit(self, value: T_contra) -> R_co: ...


class BatcherFactory(Protocol):
    """``factory(config, model, metrics) -> Batcher``: one batcher per served model."""

    def __call__(self, config: Any, model: ServerModel, metrics: ServerMetrics) -> Batcher[Any, Any]: ...


class BatcherClosedError(RuntimeError):
    """Raised for items submitted to (or still queued in) a closed batcher."""


@dataclass
class _Item(Generic[T, R]):
    value: T
    future: asyncio.Future[R]


class MicroBatcher(Generic[T, R]):
    """Gather items submitted concurrently into batches for ``fn(list[T]) -> Sequence[R]``.

    ``fn`` must return one result per item, in order; it runs in a single worker thread, one batch
    at a time (the forward pass already uses torch's intra-op threads). If ``fn`` raises, every item
    of that batch gets the exception and the batcher keeps serving.
    """

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R] | np.ndarray],
        *,
        max_batch_size: int = 64,
        max_wait_ms: float = 2.0,
        on_batch: Callable[[int, float], None] | None = None,
        name: str = "batcher",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if not max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.fn = fn
        self.max_batch_size = int(max_batch_size)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.on_batch = on_batch  # (batch size, seconds in fn): for metrics
        self.name = name
        self._queue: asyncio.Queue[_Item[T, R]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._inflight = 0
        self._concurrency = 0.0  # moving average of other requests in flight at submission
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        """Bind to the running event loop (lazily by :meth:`submit`; again after :meth:`aclose`, e.g. when
        an app's lifespan runs a second time)."""
        self._closed = False
        if self._task is None:
            self._queue = asyncio.Queue()
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"daonet-{self.name}")
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"daonet-{self.name}")

    async def aclose(self) -> None:
        """Stop the collector; items still queued fail with :class:`BatcherClosedError`."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._queue is not None:
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if not item.future.done():
                    item.future.set_exception(BatcherClosedError(f"{self.name} is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._task = self._queue = self._executor = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # -- submitting -----------------------------------------------------------------------------------
    async def submit(self, value: T) -> R:
        """Queue one item and wait for its result (from a batch shared with concurrent callers)."""
        if self._closed:
            raise BatcherClosedError(f"{self.name} is closed")
        self.start()
        assert self._queue is not None
        self._concurrency = 0.8 * self._concurrency + 0.2 * self._inflight
        self._inflight += 1
        try:
            future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
            self._queue.put_nowait(_Item(value, future))
            return await future
        finally:
            self._inflight -= 1

    # -- the collector --------------------------------------------------------------------------------
    async def _collect(self) -> list[_Item[T, R]]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        while len(batch) < self.max_batch_size and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        if len(batch) < self.max_batch_size and self.max_wait > 0 and self._concurrency >= 0.5:
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [item for item in batch if not item.future.done()]  # a client may have gone away
            if not live:
                continue
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.fn, [item.value for item in live])
                if len(results) != len(live):
                    raise RuntimeError(f"{self.name}: batch function returned {len(results)} results "
                                       f"for {len(live)} items")
            except asyncio.CancelledError:
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(BatcherClosedError(f"{self.name} is shutting down"))
                raise
            except Exception as exc:  # the batch fails, the batcher lives on
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            if self.on_batch is not None:
                self.on_batch(len(live), time.perf_counter() - t0)
            for item, result in zip(live, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)
