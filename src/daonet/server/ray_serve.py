"""Scale-out on Ray Serve: the same HTTP API on many replicas and machines.

The ingress of the Ray Serve deployment is the very app :func:`daonet.server.app.create_app` builds, so
endpoints, parsing, validation, status codes, size limits, API keys and the model registry are the
single-process server's, not a copy. Only two things change under Ray:

- batching: Ray Serve's ``@serve.batch`` (per model, per replica) instead of daonet's MicroBatcher;
- the bundles travel to the replicas as bytes (read once by the driver), so workers on other machines
  need no shared file system; each replica re-verifies every weight hash when it loads them.

Ray's HTTP proxy (one per node) spreads requests over the replicas, restarts a replica whose actor dies
and scales the replica count between ``min_replicas`` and ``max_replicas`` by ongoing requests.
``/metrics`` answers from the replica that served the scrape (its own requests only); Ray's own metrics
(proxy requests, errors, latency per deployment and replica) are on each node's Ray metrics port. See
docs/ray.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from ..bundle import MANIFEST
from ..wire import SparsePayload
from .app import create_app
from .batching import BatcherClosedError
from .config import ConfigError, ServerConfig
from .metrics import ServerMetrics
from .model import ModelRegistry, ServerModel

logger = logging.getLogger("daonet.server.ray")

__all__ = ["RayOptions", "RayServeBatcher", "RayService", "DaonetDeployment", "bind_app", "build_app", "pack_bundle",
           "serve_on_ray"]

APP_NAME = "daonet"
DEPLOYMENT_NAME = "daonet"


@dataclass
class RayOptions:
    """How the app runs on Ray: where the cluster is, how many replicas, how they scale."""

    replicas: int = 1
    address: str | None = None  # None: a new local instance; "auto": this node's cluster; "ray://HOST:10001"
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float | None = None
    replica_cpus: float = 1.0  # Ray CPUs reserved per replica (fractions allowed)
    max_ongoing_requests: int = 256  # per replica; Ray's default (5) would starve @serve.batch
    num_cpus: int | None = None  # CPUs of a new local instance (None: all of this machine's)

    @property
    def autoscaling(self) -> bool:
        return any(v is not None for v in (self.min_replicas, self.max_replicas, self.target_ongoing_requests))

    def validate(self) -> RayOptions:
        """Refuse impossible settings before anything starts, with the option's CLI name."""
        if self.replicas < 1:
            raise ConfigError(f"--replicas must be at least 1, got {self.replicas}")
        if self.min_replicas is not None and self.min_replicas < 0:
            raise ConfigError(f"--min-replicas must be at least 0, got {self.min_replicas}")
        if self.max_replicas is not None and self.max_replicas < 1:
            raise ConfigError(f"--max-replicas must be at least 1, got {self.max_replicas}")
        low, high = self.min_replicas or 0, self.max_replicas or max(self.replicas, self.min_replicas or 1)
        if low > high:
            raise ConfigError(f"--min-replicas {low} is above --max-replicas {high}")
        if self.autoscaling and not low <= self.replicas <= high:
            raise ConfigError(f"--replicas {self.replicas} (the initial count when autoscaling) must lie between "
                              f"--min-replicas {low} and --max-replicas {high}")
        if self.target_ongoing_requests is not None and not self.target_ongoing_requests > 0:
            raise ConfigError(f"--target-ongoing-requests must be above 0, got {self.target_ongoing_requests}")
        if not self.replica_cpus >= 0:
            raise ConfigError(f"--replica-cpus must be >= 0, got {self.replica_cpus}")
        if self.max_ongoing_requests < 1:
            raise ConfigError(f"max_ongoing_requests must be at least 1, got {self.max_ongoing_requests}")
        if self.num_cpus is not None and self.address is not None:
            raise ConfigError("--ray-num-cpus sizes a new local instance; a cluster at --ray-address has its own")
        return self

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options``: a fixed replica count, or Ray's autoscaler."""
        opts: dict[str, Any] = {"ray_actor_options": {"num_cpus": self.replica_cpus},
                                "max_ongoing_requests": self.max_ongoing_requests}
        if not self.autoscaling:
            opts["num_replicas"] = self.replicas
            return opts
        scaling: dict[str, Any] = {"initial_replicas": self.replicas,
                                   "min_replicas": self.min_replicas if self.min_replicas is not None else 1,
                                   "max_replicas": self.max_replicas if self.max_replicas is not None
                                   else max(self.replicas, self.min_replicas or 1)}
        if self.target_ongoing_requests is not None:
            scaling["target_ongoing_requests"] = self.target_ongoing_requests
        opts["autoscaling_config"] = scaling
        return opts


# -- batching with Ray Serve --------------------------------------------------------------------------------
class RayServeBatcher:
    """The app's batcher interface (start/aclose/running/submit) on Ray Serve's ``@serve.batch``.

    One per model and replica. The forward pass runs in one worker thread so the replica's event loop keeps
    reading requests while torch computes (as the MicroBatcher does). Ray waits up to ``max_wait_ms`` for a
    full batch even when a single client is sending: that is Ray's policy, measured in bench/ray_bench.py.
    """

    def __init__(self, config: ServerConfig, model: ServerModel, metrics: ServerMetrics) -> None:
        self.model = model
        self.on_batch = metrics.batch_observer(model.model_id)
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self._batched = serve.batch(max_batch_size=config.max_batch_size,
                                    batch_wait_timeout_s=config.max_wait_ms / 1000.0)(self._forward_batch)

    async def _forward_batch(self, payloads: list[SparsePayload]) -> list[np.ndarray]:
        if self._executor is None:
            raise BatcherClosedError(f"the batcher of {self.model.model_id} is closed")
        t0 = time.perf_counter()
        probs = await asyncio.get_running_loop().run_in_executor(self._executor, self.model.predict_proba, payloads)
        self.on_batch(len(payloads), time.perf_counter() - t0)
        return list(probs)

    def start(self) -> None:
        self._closed = False
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"daonet-ray-{self.model.model_id}")

    async def aclose(self) -> None:
        self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @property
    def running(self) -> bool:
        return self._executor is not None and not self._closed

    async def submit(self, value: SparsePayload) -> np.ndarray:
        if self._closed:
            raise BatcherClosedError(f"the batcher of {self.model.model_id} is closed")
        self.start()
        return await self._batched(value)


# -- bundles as bytes -----------------------------------------------------------------------------------------
def pack_bundle(bundle_dir: str | Path) -> dict[str, bytes]:
    """A server bundle's files as ``{"server/NAME": bytes}``, plus its sibling device half when there is one
    (``daonet serve --web`` offers it to browsers). Takes the bundle root or its server/ half."""
    path = Path(bundle_dir)
    if (path / "server").is_dir() and not (path / MANIFEST).exists():
        path = path / "server"
    if not (path / MANIFEST).is_file():
        raise ConfigError(f"{bundle_dir} is not a server bundle (no {MANIFEST}); pass bundles/NAME/server")
    halves = {"server": path}
    if (path.parent / "device" / MANIFEST).is_file():
        halves["device"] = path.parent / "device"
    return {f"{half}/{f.name}": f.read_bytes() for half, d in halves.items() for f in sorted(d.iterdir())
            if f.is_file()}


def _unpack_bundle(files: dict[str, bytes], into: Path) -> Path:
    """Write :func:`pack_bundle`'s files under ``into``; returns the server half's directory."""
    for name, data in files.items():
        half, _, base = name.partition("/")
        if half not in ("server", "device") or not base or Path(base).name != base or base in (".", ".."):
            raise ConfigError(f"bundle file name {name!r} is not server/FILE or device/FILE")
        (into / half).mkdir(parents=True, exist_ok=True)
        (into / half / base).write_bytes(data)
    return into / "server"


def _replica_spec(config: ServerConfig) -> dict[str, Any]:
    """The config a replica needs, as plain data: no bundle paths (they come as bytes), no TLS (the proxy's)."""
    spec = dataclasses.asdict(config)
    spec.update(bundles=[], ssl_certfile=None, ssl_keyfile=None,
                public_keys=[k if isinstance(k, bytes) else Path(k).read_bytes() for k in config.public_keys])
    return spec


# -- the deployment -------------------------------------------------------------------------------------------
@serve.deployment(name=DEPLOYMENT_NAME, health_check_period_s=2, health_check_timeout_s=10,
                  graceful_shutdown_timeout_s=5)
@serve.ingress()
class DaonetDeployment:
    """One replica: the server bundles and the product app with Ray Serve batching."""

    def __init__(self, config_spec: dict[str, Any], bundles: list[dict[str, bytes]]) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="daonet-replica-")
        dirs = [_unpack_bundle(files, Path(self._tmp.name) / f"bundle{i}") for i, files in enumerate(bundles)]
        self.config = ServerConfig(**config_spec)
        if self.config.torch_threads:
            import torch

            torch.set_num_threads(self.config.torch_threads)
        self.registry = ModelRegistry.load(dirs, public_keys=self.config.public_keys)  # signatures checked here

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self.config, self.registry, batcher_factory=RayServeBatcher)


# -- the application ------------------------------------------------------------------------------------------
def logging_config(config: ServerConfig) -> dict[str, Any]:
    """Ray Serve's logging from daonet's log level. Access lines only at info/debug, as uvicorn does for
    ``daonet serve``: Ray writes one per request in the proxy and in the replica, which costs CPU under load."""
    level = config.log_level.upper()
    return {"log_level": "WARNING" if level in ("CRITICAL", "TRACE") else level,
            "enable_access_log": level in ("DEBUG", "INFO", "TRACE")}


def bind_app(config: ServerConfig, options: RayOptions) -> Any:
    """The Ray Serve application: the deployment with its scaling options, bundles read here as bytes."""
    config.validate()
    options.validate()
    bundles = [pack_bundle(b) for b in config.bundles]
    return DaonetDeployment.options(  # type: ignore[attr-defined]  # @serve.deployment adds options()
        **options.deployment_options(), logging_config=logging_config(config)).bind(
        _replica_spec(config), bundles)


_OPTION_FIELDS = {f.name for f in dataclasses.fields(RayOptions)} - {"address", "num_cpus"}
_CONFIG_FIELDS = {f.name for f in dataclasses.fields(ServerConfig)} - {"host", "port", "ssl_certfile", "ssl_keyfile"}


def build_app(args: dict[str, Any]) -> Any:
    """Application builder for Ray's own tools: ``serve run``/``serve deploy`` and KubeRay's ``serveConfigV2``
    (``import_path: daonet.server.ray_serve:build_app``). ``args``: ``bundles`` (paths on the node that builds
    the app), any :class:`ServerConfig` field (``api_key_hashes``, ``max_body_bytes``, ...) and any scaling
    field of :class:`RayOptions` (``replicas``, ``min_replicas``, ...). Host, port and TLS are the cluster's
    proxy settings (``http_options`` in the Serve config)."""
    unknown = set(args) - _OPTION_FIELDS - _CONFIG_FIELDS
    if unknown:
        raise ConfigError(f"unknown daonet app argument(s) {sorted(unknown)}; known: "
                          f"{sorted(_OPTION_FIELDS | _CONFIG_FIELDS)}")
    config = ServerConfig(**{k: v for k, v in args.items() if k in _CONFIG_FIELDS})
    options = RayOptions(**{k: v for k, v in args.items() if k in _OPTION_FIELDS})
    return bind_app(config, options)


# -- running it -----------------------------------------------------------------------------------------------
def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (Ray's proxy cannot take port 0 and report what it got)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class RayService:
    """Start (or join) Ray, deploy the app, wait until every replica is ready; :meth:`stop` undoes it.

    ``with RayService(config, options) as service: httpx.get(service.url + "/v1/models")``
    """

    def __init__(self, config: ServerConfig, options: RayOptions, ready_timeout: float = 180.0,
                 name: str = APP_NAME, route_prefix: str = "/") -> None:
        self.config = config.validate()
        self.options = options.validate()
        self.ready_timeout = ready_timeout
        self.name, self.route_prefix = name, route_prefix  # several apps can share one Ray cluster and proxy
        self.started_ray = False
        self.url = ""

    def start(self) -> RayService:
        import httpx
        import ray

        app = bind_app(self.config, self.options)
        if not ray.is_initialized():
            if self.options.address is None:
                ray.init(num_cpus=self.options.num_cpus, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=self.options.address, log_to_driver=False)
            self.started_ray = True
        port = self.config.port or free_port(self.config.host)
        http: dict[str, Any] = {"host": self.config.host, "port": port}
        if self.config.keep_alive_timeout_s:  # the one connection limit Ray's proxy has (see docs/ray.md)
            http["keep_alive_timeout_s"] = max(1, round(self.config.keep_alive_timeout_s))
        if self.config.tls:
            http.update(ssl_certfile=str(self.config.ssl_certfile), ssl_keyfile=str(self.config.ssl_keyfile))
        serve.start(http_options=http, logging_config=logging_config(self.config))
        serve.run(app, name=self.name, route_prefix=self.route_prefix, blocking=False)
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        self.url = f"{'https' if self.config.tls else 'http'}://{host}:{port}{self.route_prefix.rstrip('/')}"
        deadline = time.monotonic() + self.ready_timeout
        while True:  # serve.run returns when the app is RUNNING; wait for the proxy route too
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/v1/ready", timeout=5, verify=False).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the Ray Serve app on {self.url} did not become ready "
                                   f"in {self.ready_timeout:.0f} s")
            time.sleep(0.1)

    def replica_actor_names(self) -> list[str]:
        """The Ray actor names of this app's live replicas (for operations and the fault test)."""
        import ray

        prefix = f"SERVE_REPLICA::{self.name}#{DEPLOYMENT_NAME}#"
        return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                      if a["name"].startswith(prefix))

    def running_replicas(self) -> int:
        status = serve.status().applications.get(self.name)
        if status is None:
            return 0
        dep = status.deployments[DEPLOYMENT_NAME]
        return int(dep.replica_states.get("RUNNING", 0))  # type: ignore[call-overload]  # str-valued enum keys

    def stop(self) -> None:
        import ray

        with contextlib.suppress(Exception):
            serve.delete(self.name)
        if self.started_ray:
            if self.options.address is None:  # our own instance: stop Serve too; a cluster keeps its other apps
                with contextlib.suppress(Exception):
                    serve.shutdown()
            ray.shutdown()
            self.started_ray = False

    def __enter__(self) -> RayService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_on_ray(config: ServerConfig, options: RayOptions) -> None:
    """``daonet serve --ray``: deploy, print where it answers, keep the driver alive until Ctrl-C or SIGTERM,
    then delete the application (and stop Ray if this process started it)."""
    import signal

    def _stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    service = RayService(config, options)
    try:
        service.start()
        signal.signal(signal.SIGTERM, _stop)  # after Ray's start: its own handler would abort the process
        scale = (f"{options.replicas} replica(s)" if not options.autoscaling else
                 f"autoscaling {options.deployment_options()['autoscaling_config']}")
        print(f"daonet on Ray Serve: {service.url} ({scale}); Ctrl-C stops it", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping: deleting the application", flush=True)
    finally:
        service.stop()
