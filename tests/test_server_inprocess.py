"""The device ``Client`` against the real app in-process (an httpx transport, no socket), answering exactly as
the same app does on loopback: the same predictions, the same refusals."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import AsyncExitStack

import httpx
import numpy as np
import pytest

from daonet.device import Client, DeviceModel
from daonet.device.client import ServerError
from daonet.server.config import ServerConfig, generate_api_key, hash_api_key

KEY = generate_api_key()


class InProcessTransport(httpx.BaseTransport):
    """A synchronous httpx transport into an ASGI app running (with its lifespan) on a private event loop."""

    def __init__(self, app) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="in-process-app", daemon=True)
        self.thread.start()
        self.asgi = httpx.ASGITransport(app=app)
        self.stack = AsyncExitStack()
        self._call(self.stack.enter_async_context(app.router.lifespan_context(app)))

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        async def forward() -> httpx.Response:
            inner = httpx.Request(request.method, request.url, headers=request.headers, content=request.read())
            response = await self.asgi.handle_async_request(inner)
            return httpx.Response(response.status_code, headers=response.headers, content=await response.aread())

        return self._call(forward())

    def close(self) -> None:
        """Called by every httpx client that used it: the app outlives them (see :meth:`shutdown`)."""

    def shutdown(self) -> None:
        if self.loop.is_running():
            self._call(self.stack.aclose())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


@pytest.fixture(scope="module")
def in_process(serve_digits_bundle) -> Iterator[InProcessTransport]:
    from daonet.server.app import create_app

    transport = InProcessTransport(create_app(ServerConfig(bundles=[serve_digits_bundle.server],
                                                           api_key_hashes=[hash_api_key(KEY)])))
    yield transport
    transport.shutdown()


@pytest.fixture(scope="module")
def loopback(start_server, serve_digits_bundle) -> str:
    return start_server(ServerConfig(bundles=[serve_digits_bundle.server], api_key_hashes=[hash_api_key(KEY)])).url


def test_in_process_and_loopback_give_the_same_predictions(in_process, loopback, serve_digits_bundle,
                                                           serve_digits_run):
    device = DeviceModel.load(serve_digits_bundle.device)
    x = serve_digits_run.dataset.x_test[:8]
    masks = [np.random.default_rng(i).random(device.n_outputs) < 0.5 for i in range(len(x))]
    with Client("http://daonet.in-process", device, api_key=KEY, transport=in_process) as local, \
            Client(loopback, device, api_key=KEY) as remote:
        for xi, mask in zip(x, masks, strict=True):
            a, b = local.predict(xi, mask=mask), remote.predict(xi, mask=mask)
            assert a.payload.data == b.payload.data
            assert a.label == b.label and np.array_equal(a.probabilities, b.probabilities)


def test_in_process_refusals_are_the_servers(in_process, serve_digits_bundle):
    with Client("http://daonet.in-process", serve_digits_bundle.device, api_key="wrong", transport=in_process) as c:
        with pytest.raises(ServerError) as err:
            c.check_server()
    assert err.value.status == 401 and err.value.error == "unauthorized"
