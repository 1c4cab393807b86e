"""Running an app on a socket: in the foreground (``daonet serve``), in a background thread, or in a child process.

One launcher for the demo, the tests and the benchmarks. :class:`ChildServer` builds the app *inside* a
fresh interpreter from an importable factory (``"module:function"`` plus JSON keyword arguments), so a
server shares no GIL with the caller's clients; :class:`ServerProcess` is the product app from a
:class:`~daonet.server.config.ServerConfig`. The child binds the socket itself (port 0: a free port with
no race), reports ``READY {json}`` on stdout once the app is built, and stops gracefully on SIGTERM.

Library use (:class:`BackgroundServer`, :class:`ChildServer`) keeps uvicorn quiet: it installs no log
handlers (``log_config=None``), so its lines, the access log included, go through :mod:`logging` to whatever
the caller configured, and nothing lands on the caller's stdout. Only :func:`serve` (the command) prints.
Every launcher redacts keys and query strings from the access log (:mod:`daonet.server.url_keys`).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .config import ServerConfig

__all__ = ["bind", "serve", "BackgroundServer", "ChildServer", "ServerProcess", "product_app"]

LIBRARY_LOGGING = {"log_config": None, "access_log": True}  # uvicorn through logging, no handlers of its own


def serve(config: ServerConfig) -> None:
    """Run the server in the foreground (what ``daonet serve`` does), with uvicorn's console logging."""
    import uvicorn

    from .app import create_app
    from .limits import uvicorn_config
    from .url_keys import redact_access_log

    app = create_app(config)
    redact_access_log()
    uvicorn.Server(uvicorn_config(
        app, config.uvicorn_options(), host=config.host, port=config.port, log_level=config.log_level,
        ssl_certfile=str(config.ssl_certfile) if config.ssl_certfile else None,
        ssl_keyfile=str(config.ssl_keyfile) if config.ssl_keyfile else None)).run()


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket. ``proto=IPPROTO_TCP`` matters: asyncio only sets TCP_NODELAY on sockets
    whose proto says TCP, and without it Nagle + delayed ACK add ~40 ms to every response."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _url(host: str, port: int, tls: bool) -> str:
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{host}:{port}"


class BackgroundServer:
    """uvicorn in a background thread on a (by default free) port: for tests and notebooks.

    ``uvicorn_options`` are extra :class:`uvicorn.Config` settings (e.g. from :meth:`ServerConfig.uvicorn_options`).
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0,
                 ssl_certfile: str | Path | None = None, ssl_keyfile: str | Path | None = None,
                 log_level: str = "info", uvicorn_options: dict[str, Any] | None = None) -> None:
        import uvicorn

        from .limits import uvicorn_config
        from .url_keys import redact_access_log

        redact_access_log()
        self.sock = bind(host, port)
        self.port = self.sock.getsockname()[1]
        self.host = host
        self.tls = ssl_certfile is not None
        options = {"log_level": log_level, **LIBRARY_LOGGING, "timeout_graceful_shutdown": 5, "lifespan": "on",
                   **(uvicorn_options or {})}
        config = uvicorn_config(app, options, host=host, port=self.port,
                                ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
                                ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name=f"daonet-server-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return _url(self.host, self.port, self.tls)

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(f"the server on {self.url} exited during startup; see its log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start within {timeout:.0f} s")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful: stop accepting, finish in-flight requests, run the shutdown (batchers close)."""
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ChildServer:
    """An app built by ``factory(**kwargs)`` and served by uvicorn in a child process on loopback.

    :meth:`launch` starts the child (several can build their apps in parallel), :meth:`wait_ready` waits
    for its ``READY`` line and then for ``ready_path`` to answer 200; :meth:`start` does both. ``info``
    holds ``url``, ``port``, ``pid`` and whatever the app put in ``app.state.launch_report``.
    """

    def __init__(self, factory: str, kwargs: dict[str, Any] | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, ready_path: str = "/v1/ready", torch_threads: int | None = None,
                 uvicorn_options: dict[str, Any] | None = None, ssl_certfile: str | Path | None = None,
                 ssl_keyfile: str | Path | None = None, log_level: str = "warning",
                 startup_timeout: float = 120.0, name: str = "server") -> None:
        self.spec = {"factory": factory, "kwargs": kwargs or {}, "host": host, "port": port,
                     "torch_threads": torch_threads, "log_level": log_level,
                     "ssl_certfile": str(ssl_certfile) if ssl_certfile else None,
                     "ssl_keyfile": str(ssl_keyfile) if ssl_keyfile else None,
                     "uvicorn_options": uvicorn_options or {}}
        self.ready_path = ready_path
        self.startup_timeout = startup_timeout
        self.name = name
        self.proc: subprocess.Popen[str] | None = None
        self.info: dict[str, Any] = {}
        self.url = ""
        self.port = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def launch(self) -> ChildServer:
        self.proc = subprocess.Popen([sys.executable, "-m", "daonet.server.launch", json.dumps(self.spec)],
                                     stdout=subprocess.PIPE, text=True)
        return self

    def wait_ready(self) -> ChildServer:
        import httpx

        assert self.proc is not None, "launch() first"
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"the {self.name} process exited during startup; see its error above")
        report = json.loads(line[len("READY "):])
        self.port = int(report["port"])
        self.url = _url(str(self.spec["host"]), self.port, self.spec["ssl_certfile"] is not None)
        self.info = {**report, "url": self.url, "pid": self.proc.pid}
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                if httpx.get(f"{self.url}{self.ready_path}", timeout=2, verify=False).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the {self.name} process on {self.url} did not become ready")
            time.sleep(0.05)

    def start(self) -> ChildServer:
        return self.launch().wait_ready()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (uvicorn's graceful shutdown), then SIGKILL if it does not exit in ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ChildServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _config_spec(config: ServerConfig) -> dict[str, Any]:
    spec = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(config).items()}
    spec["bundles"] = [str(b) for b in config.bundles]
    spec["public_keys"] = [k.decode("ascii") if isinstance(k, bytes) else str(k) for k in config.public_keys]
    return spec


def product_app(**spec: Any) -> Any:
    """The product app from a :class:`ServerConfig` given as JSON-able fields (the child side of ServerProcess)."""
    from .app import create_app

    config = ServerConfig(**{**spec, "bundles": [Path(b) for b in spec["bundles"]],
                             "public_keys": [k.encode("ascii") if k.startswith("-----BEGIN") else Path(k)
                                             for k in spec.get("public_keys", [])]}).validate()
    return create_app(config)


class ServerProcess(ChildServer):
    """The product server (``daonet serve``) in a child process on a free loopback port: what the demo uses,
    so its latency and throughput are the server's, not a thread's share of one interpreter."""

    def __init__(self, config: ServerConfig, startup_timeout: float = 120.0) -> None:
        config.validate()
        self.config = config
        super().__init__("daonet.server.launch:product_app", _config_spec(config), host=config.host,
                         port=config.port, torch_threads=config.torch_threads, log_level=config.log_level,
                         ssl_certfile=config.ssl_certfile, ssl_keyfile=config.ssl_keyfile,
                         uvicorn_options=config.uvicorn_options(), startup_timeout=startup_timeout,
                         name="daonet server")

    def start(self) -> ServerProcess:
        super().start()
        return self


def _child_main(spec: dict[str, Any]) -> None:
    import logging

    import uvicorn

    from .limits import uvicorn_config
    from .url_keys import redact_access_log

    handler = logging.StreamHandler()  # stderr (stdout carries READY): warnings and errors only
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    redact_access_log()
    if spec.get("torch_threads"):
        import torch

        torch.set_num_threads(int(spec["torch_threads"]))
    module, _, func = spec["factory"].partition(":")
    app = getattr(importlib.import_module(module), func)(**spec["kwargs"])
    report = dict(getattr(app.state, "launch_report", {}) or {}) if hasattr(app, "state") else {}
    sock = bind(spec["host"], int(spec["port"]))
    print("READY " + json.dumps({**report, "port": sock.getsockname()[1], "pid": os.getpid()}), flush=True)
    options = {"log_level": spec["log_level"], **LIBRARY_LOGGING, "lifespan": "on",
               "timeout_graceful_shutdown": 10, **spec["uvicorn_options"]}
    uvicorn.Server(uvicorn_config(app, options, ssl_certfile=spec["ssl_certfile"],
                                  ssl_keyfile=spec["ssl_keyfile"])).run(sockets=[sock])


if __name__ == "__main__":
    _child_main(json.loads(sys.argv[1]))
