"""Shared fixtures. Grouped by feature; session-scoped where they train or start something.

Serving (tests/test_server*.py, tests/test_client.py):
- ``serve_digits_run``: a tiny real model (sklearn digits, mlp, p=0.5, 3 epochs) and its data.
- ``serve_digits_bundle`` / ``serve_signal_bundle``: exported device+server bundles (an image model and a
  cnn1d model on synthetic signals, for CSV inputs and a two-model server).
- ``start_server``: factory that starts the real app under uvicorn on a free loopback port in a
  background thread; every server it started is stopped at the end of the session.
- ``server_url``: one such server with both bundles, no API key, a 16 KiB body limit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

SERVE_BODY_LIMIT = 16 * 1024


def pytest_configure(config) -> None:
    """``DAONET_TEST_SEED=N`` trains every model of the suite from another seed and ``DAONET_TEST_THREADS=N``
    with another torch thread count: what another machine does to trained numerics. The suite must pass under
    any of them (no assertion may depend on what training happened to produce); CI runs the defaults."""
    import os

    seed = int(os.environ.get("DAONET_TEST_SEED", "0"))
    threads = os.environ.get("DAONET_TEST_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    if seed:
        import dataclasses

        from daonet.train import TrainConfig

        names = [f.name for f in dataclasses.fields(TrainConfig) if f.init]
        defaults = list(TrainConfig.__init__.__defaults__ or ())
        offset = len(names) - len(defaults)  # __defaults__ covers the trailing parameters
        defaults[names.index("seed") - offset] = seed
        TrainConfig.__init__.__defaults__ = tuple(defaults)
        assert TrainConfig().seed == seed


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Tiny models train several times faster on one thread than on two busy cores (no spin contention)."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@dataclass(frozen=True)
class BundlePair:
    root: Path
    device: Path
    server: Path


@pytest.fixture(scope="session")
def serve_digits_run():
    """A real (small) trained model: digits 8x8, dense first layer of 256 outputs, dropping p=0.5."""
    from daonet.train import TrainConfig, train

    cfg = TrainConfig(dataset="digits", model="mlp", drop_rate=0.5, epochs=3,
                      model_kwargs={"hidden": 256, "hidden2": 64})
    with _one_torch_thread():
        return train(cfg, progress=False)


@pytest.fixture(scope="session")
def serve_digits_bundle(serve_digits_run, tmp_path_factory) -> BundlePair:
    from daonet.exporting import export_model

    root = tmp_path_factory.mktemp("serve-digits") / "bundle"
    dev, srv = export_model(serve_digits_run.model, root, model_id="digits-mlp",
                            classes=serve_digits_run.dataset.classes, raw_dtype="uint8")
    return BundlePair(root, dev, srv)


@pytest.fixture(scope="session")
def serve_signal_bundle(tmp_path_factory) -> BundlePair:
    """A cnn1d on a real ECG5000 subset (1 x 140): a second served model and the CSV input tests."""
    from daonet.exporting import export_model
    from daonet.train import TrainConfig, train

    cfg = TrainConfig(dataset="ecg5000", model="cnn1d", drop_rate=0.5, epochs=2, n_test=200,
                      model_kwargs={"stem": 8, "patch": 4, "width": 8})
    ds = None
    with _one_torch_thread():
        result = train(cfg, ds=ds, progress=False)
    root = tmp_path_factory.mktemp("serve-signal") / "bundle"
    dev, srv = export_model(result.model, root, model_id="ecg5000-cnn1d", classes=result.dataset.classes)
    return BundlePair(root, dev, srv)


@pytest.fixture(scope="session")
def start_server() -> Iterator[Callable[..., object]]:
    """``start_server(config, registry=None, ssl_certfile=None, ssl_keyfile=None) -> BackgroundServer``."""
    from daonet.server.app import create_app
    from daonet.server.launch import BackgroundServer

    started: list[BackgroundServer] = []

    def start(config, registry=None, ssl_certfile=None, ssl_keyfile=None) -> BackgroundServer:
        app = create_app(config, registry)
        server = BackgroundServer(app, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
                                  uvicorn_options=config.uvicorn_options()).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def server_body_limit() -> int:
    """The ``max_body_bytes`` of ``server_url``'s server."""
    return SERVE_BODY_LIMIT


@pytest.fixture(scope="session")
def server_url(start_server, serve_digits_bundle, serve_signal_bundle) -> str:
    from daonet.server.config import ServerConfig

    config = ServerConfig(bundles=[serve_digits_bundle.server, serve_signal_bundle.server],
                          max_body_bytes=SERVE_BODY_LIMIT, max_batch_size=32, max_wait_ms=2.0)
    return start_server(config).url


def _make_payload(version: str, n_outputs: int, indices, values, *, ibytes: int = 2, vbytes: int = 4,
                  nnz: int | None = None, magic: bytes = b"DAO1", wire_version: int = 1) -> bytes:
    """Hand-build wire-format bytes, including impossible ones that ``daonet.wire.encode`` refuses to make."""
    import struct

    idx = np.asarray(indices, dtype={2: "<u2", 4: "<u4"}.get(ibytes, "<u2"))  # other widths: header only
    with np.errstate(over="ignore"):  # huge floats become inf on purpose
        val = np.asarray(values, dtype={2: "<f2", 4: "<f4"}.get(vbytes, "<f4"))
    v = version.encode("ascii")
    header = struct.pack("<4sBBBBII", magic, wire_version, ibytes, vbytes, len(v), n_outputs,
                         idx.size if nnz is None else nnz)
    return header + v + idx.tobytes() + val.tobytes()


@pytest.fixture(scope="session")
def make_payload() -> Callable[..., bytes]:
    """``make_payload(version, n_outputs, indices, values, ibytes=2, vbytes=4, nnz=None, magic=b"DAO1")``."""
    return _make_payload


@pytest.fixture(scope="module")
def one_torch_thread():
    """Train on one torch thread: on a busy 2-core machine two threads are several times slower."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's real 8x8 digits."""
    from daonet.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="module")
def http(server_url: str) -> Iterator[httpx.Client]:
    """A client of the real server on loopback (shared by the server test modules)."""
    with httpx.Client(base_url=server_url, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def version(serve_digits_bundle: BundlePair) -> str:
    """The served digits model's version (what a device sends in every payload)."""
    from daonet.device import DeviceModel

    return DeviceModel.load(serve_digits_bundle.device).version
