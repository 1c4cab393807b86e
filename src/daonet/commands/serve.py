"""``daonet serve``: the HTTP server for server bundles."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import DaonetError
from .common import console, fail


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    bundle_dir: Annotated[list[Path], typer.Argument(help="server bundle directories (bundles/NAME/server); "
                                                          "several serve several models")],
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
    api_key_hash: Annotated[list[str] | None, typer.Option(
        help="require an API key: its hash from `daonet hash-key` (repeatable)", envvar="DAONET_API_KEY_HASH")] = None,
    api_key_hash_file: Annotated[Path | None, typer.Option(help="file with one API key hash per line")] = None,
    ssl_certfile: Annotated[Path | None, typer.Option(help="TLS certificate (PEM)")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="TLS private key (PEM)")] = None,
    max_batch_size: Annotated[int, typer.Option(min=1, help="most requests per forward pass")] = 64,
    max_wait_ms: Annotated[float, typer.Option(min=0, help="longest wait to fill a batch (only under load)")] = 2.0,
    max_body_bytes: Annotated[int | None, typer.Option(
        min=64, help="larger request bodies get 413 (default: what the served models' largest payload needs)")] = None,
    torch_threads: Annotated[int | None, typer.Option(min=1, help="torch intra-op threads (default: torch's)")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
    web: Annotated[bool, typer.Option("--web", help="also serve the web page at / (the first layer runs in the "
                                                    "browser) and the device bundles at /device-bundles/")] = False,
    ray: Annotated[bool, typer.Option("--ray", help="run on Ray Serve: same API on replicas (docs/ray.md); "
                                      "needs daonet\\[ray]", rich_help_panel="Ray Serve")] = False,
    replicas: Annotated[int, typer.Option(min=1, help="replicas (initial count when autoscaling)",
                                          rich_help_panel="Ray Serve")] = 1,
    ray_address: Annotated[str | None, typer.Option(help="join this Ray cluster ('auto', 'ray://HOST:10001'); "
                                                    "default: a new local instance", rich_help_panel="Ray Serve")
                           ] = None,
    min_replicas: Annotated[int | None, typer.Option(min=0, help="autoscaling: fewest replicas",
                                                     rich_help_panel="Ray Serve")] = None,
    max_replicas: Annotated[int | None, typer.Option(min=1, help="autoscaling: most replicas",
                                                     rich_help_panel="Ray Serve")] = None,
    target_ongoing_requests: Annotated[float | None, typer.Option(
        help="autoscaling: requests in flight per replica to aim for", rich_help_panel="Ray Serve")] = None,
    replica_cpus: Annotated[float, typer.Option(min=0, help="Ray CPUs reserved per replica",
                                                rich_help_panel="Ray Serve")] = 1.0,
    header_timeout: Annotated[float, typer.Option(
        min=0, help="seconds to receive a request's headers (0: off)")] = 10.0,
    body_timeout: Annotated[float, typer.Option(min=0, help="seconds to receive a request's body (0: off)")] = 10.0,
    keep_alive_timeout: Annotated[float, typer.Option(
        min=0, help="seconds an idle keep-alive connection stays open")] = 5.0,
    max_connections: Annotated[int, typer.Option(min=0, help="open connections at most (0: no cap)")] = 1000,
    max_connections_per_client: Annotated[int, typer.Option(
        min=0, help="open connections per client address (0: no cap; behind a reverse proxy set 0)")] = 128,
    auth_failures_per_minute: Annotated[int, typer.Option(
        min=0, help="wrong API keys per client address per minute before 429 (0: no limit)")] = 30,
    docs: Annotated[bool, typer.Option("--docs", help="serve Swagger UI at /docs (it loads its scripts from a "
                                                      "public CDN in the reader's browser); /openapi.json is "
                                                      "always served")] = False,
    public_key: Annotated[list[Path] | None, typer.Option(
        help="serve only bundles signed by this Ed25519 key (OUT.pub from `daonet keygen`; repeatable)")] = None,
    protect_metrics: Annotated[bool, typer.Option("--protect-metrics", help="require the API key for /metrics "
                                                                            "too")] = False,
    forwarded_allow_ips: Annotated[str, typer.Option(
        help="comma-separated addresses or networks of reverse proxies whose X-Forwarded-For/-Proto are believed "
             "('*': any); default none, so a client cannot pick the address its limits and logs see")] = "",
) -> None:
    """Serve server bundles over HTTP: predictions from sparse dropped activations, never raw inputs."""
    from ..server.config import ServerConfig
    from ..server.launch import serve as run_server

    hashes = list(api_key_hash or [])
    try:
        if api_key_hash_file is not None:
            hashes += ServerConfig.read_hash_file(api_key_hash_file)
        config = ServerConfig(bundles=list(bundle_dir), host=host, port=port, max_body_bytes=max_body_bytes,
                              max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, api_key_hashes=hashes,
                              ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, torch_threads=torch_threads,
                              log_level=log_level, web=web, header_timeout_s=header_timeout,
                              body_timeout_s=body_timeout, keep_alive_timeout_s=keep_alive_timeout,
                              max_connections=max_connections,
                              max_connections_per_client=max_connections_per_client,
                              auth_failures_per_minute=auth_failures_per_minute, docs=docs,
                              protect_metrics=protect_metrics, public_keys=list(public_key or []),
                              forwarded_allow_ips=forwarded_allow_ips.split(",")).validate()
    except DaonetError as exc:
        fail(str(exc))
    if not _is_loopback(host):
        if not config.tls:
            console.print("[yellow]warning:[/] listening beyond loopback without TLS: payloads and API keys travel "
                          "in clear text (pass --ssl-certfile/--ssl-keyfile)")
        if not hashes:
            console.print("[yellow]warning:[/] no API key required (pass --api-key-hash from `daonet hash-key`)")
    ray_only = {"--replicas": replicas != 1, "--ray-address": ray_address is not None,
                "--min-replicas": min_replicas is not None, "--max-replicas": max_replicas is not None,
                "--target-ongoing-requests": target_ongoing_requests is not None, "--replica-cpus": replica_cpus != 1.0}
    if not ray and any(ray_only.values()):
        fail(f"{', '.join(k for k, v in ray_only.items() if v)} only apply with --ray")
    if ray:
        _serve_on_ray(config, replicas, ray_address, min_replicas, max_replicas, target_ongoing_requests,
                      replica_cpus)
        return
    run_server(config)


def _serve_on_ray(config: Any, replicas: int, address: str | None, min_replicas: int | None,
                  max_replicas: int | None, target: float | None, replica_cpus: float) -> None:
    try:
        from ..server.ray_serve import RayOptions, serve_on_ray
    except ImportError as exc:
        fail(f"--ray needs Ray Serve: pip install 'daonet[ray]' ({exc})")
    try:
        options = RayOptions(replicas=replicas, address=address, min_replicas=min_replicas, max_replicas=max_replicas,
                             target_ongoing_requests=target, replica_cpus=replica_cpus).validate()
    except DaonetError as exc:
        fail(str(exc))
    serve_on_ray(config, options)
