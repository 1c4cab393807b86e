"""The micro-batcher on its own: arguments, result count, cancelled callers, restart after close, arrays."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from daonet.server.batching import BatcherClosedError, MicroBatcher


@pytest.mark.parametrize("kwargs", [{"max_batch_size": 0}, {"max_wait_ms": -1.0}, {"max_wait_ms": float("nan")}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match="max_"):
        MicroBatcher(lambda items: items, **kwargs)


def test_a_function_with_the_wrong_number_of_results_fails_that_batch_only():
    calls: list[list[int]] = []

    def fn(items: list[int]) -> list[int]:
        calls.append(list(items))
        return items[:-1] if 0 in items else items

    async def main():
        b = MicroBatcher(fn, max_batch_size=8, max_wait_ms=0)
        try:
            bad = await asyncio.gather(b.submit(0), b.submit(1), return_exceptions=True)
            assert all(isinstance(r, RuntimeError) and "returned 1 results for 2 items" in str(r) for r in bad)
            assert await b.submit(5) == 5  # still serving
        finally:
            await b.aclose()

    asyncio.run(main())
    assert calls == [[0, 1], [5]]


def test_numpy_results_are_split_per_item():
    def forward(items: list[np.ndarray]) -> np.ndarray:
        return np.stack(items) * 10.0

    async def main():
        b: MicroBatcher[np.ndarray, np.ndarray] = MicroBatcher(forward, max_batch_size=3, max_wait_ms=0)
        try:
            return await asyncio.gather(*(b.submit(np.full(2, i, np.float32)) for i in range(4)))
        finally:
            await b.aclose()

    out = asyncio.run(main())
    assert [r.tolist() for r in out] == [[0.0, 0.0], [10.0, 10.0], [20.0, 20.0], [30.0, 30.0]]


def test_a_caller_that_went_away_is_not_computed():
    release = threading.Event()
    calls: list[list[str]] = []

    def fn(items: list[str]) -> list[str]:
        calls.append(list(items))
        if items == ["first"]:
            release.wait(10)  # hold the worker so the next items queue up behind it
        return [s.upper() for s in items]

    async def main():
        b = MicroBatcher(fn, max_batch_size=8, max_wait_ms=0)
        try:
            first = asyncio.create_task(b.submit("first"))
            while not calls:  # the first batch is in the worker
                await asyncio.sleep(0.001)
            gone = asyncio.create_task(b.submit("gone"))
            kept = asyncio.create_task(b.submit("kept"))
            await asyncio.sleep(0)  # both are queued
            gone.cancel()
            release.set()
            assert await first == "FIRST" and await kept == "KEPT"
            with pytest.raises(asyncio.CancelledError):
                await gone
        finally:
            release.set()
            await b.aclose()

    asyncio.run(main())
    assert calls == [["first"], ["kept"]]


def test_closed_batcher_refuses_then_restarts_in_a_new_loop():
    def fn(items: list[int]) -> list[int]:
        return [i + 1 for i in items]

    b = MicroBatcher(fn, max_batch_size=4, max_wait_ms=0, name="lifespan")

    async def once(value: int) -> int:
        b.start()  # what an app's lifespan does on startup
        assert b.running
        try:
            return await b.submit(value)
        finally:
            await b.aclose()
            assert not b.running

    assert asyncio.run(once(1)) == 2
    assert asyncio.run(once(2)) == 3  # a second lifespan, a new event loop

    async def after_close():
        with pytest.raises(BatcherClosedError, match="lifespan is closed"):
            await b.submit(3)

    asyncio.run(after_close())
