"""Connection-level protection against cheap denial of service (framework independent below the app).

uvicorn alone keeps a connection that never sends a request open forever, lets a client send its
headers one byte at a time, and accepts connections until the process runs out of file descriptors.
:func:`guarded_protocol` wraps uvicorn's HTTP protocol class with:

- a **header timeout**: a connection must deliver a complete request head within ``header_timeout_s``
  of opening (or of the first byte of its next request), else it gets 408 and is closed. Trickling bytes
  does not extend it;
- a **fair connection budget**: at most ``max_connections`` in all; one address may hold
  ``max_connections_per_client`` on an empty server, a share that shrinks as the server fills, and the
  last tenth of the budget only admits addresses holding no connection, so a few addresses (each under
  its cap) cannot fill the server for everyone else;
- an **answer for refused connections**: one over a cap is kept outside uvicorn just long enough to read
  its request line and answer ``503`` with ``Retry-After`` (a bounded number at once; beyond that, and
  when no line comes within ``REFUSAL_WAIT_S``, it is dropped).

The body timeout lives in the app (:mod:`daonet.server.body`, which also closes every connection whose
request body was left unread); the keep-alive
timeout is uvicorn's own. :class:`FailedAuthLimiter` rate-limits wrong API keys per client address.
"""

from __future__ import annotations

import asyncio
import math
import resource
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["ConnectionLimits", "guarded_protocol", "uvicorn_config", "FailedAuthLimiter", "raise_fd_limit", "STRIKE",
           "strike"]

_TIMEOUT_408 = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
REFUSAL_RETRY_AFTER_S = 2
_REFUSAL_BODY = (b'{"error":"too_many_connections","detail":"this server holds as many connections as it shares '
                 b'with your address now (or is full): close idle connections and retry in '
                 + str(REFUSAL_RETRY_AFTER_S).encode() + b' s"}')
_REFUSAL_503 = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
                b"retry-after: " + str(REFUSAL_RETRY_AFTER_S).encode() + b"\r\ncontent-length: "
                + str(len(_REFUSAL_BODY)).encode() + b"\r\n\r\n" + _REFUSAL_BODY)
REFUSAL_WAIT_S = 2.0  # how long a refused connection may take to send its request line before it is dropped
REFUSAL_LINGER_S = 1.0  # after the 503: read and discard, so closing does not reset the answer away
MIN_SHARE = 4  # connections an address may always grow to while the server is not in its reserve
# strikes: answers that end a request early (wrong key, unread body, timeouts). An address with more than
# STRIKE_BURST of them, net of STRIKES_FORGIVEN_PER_S, is throttled: PENALTY_CONNECTIONS_PER_S new
# connections a second, the rest dropped at accept (no parsing, no answer: the cheapest refusal there is)
STRIKE_BURST = 20
STRIKES_FORGIVEN_PER_S = 5.0
PENALTY_CONNECTIONS_PER_S = 5.0
STRIKE = "daonet.strike"  # ASGI scope key: a callable the app calls when it answers a request with a strike


@dataclass(frozen=True)
class ConnectionLimits:
    """0 switches a limit off.

    ``max_connections_per_client`` is the most one address may hold on an empty server; its share shrinks in
    proportion to the free capacity (never below ``MIN_SHARE``), and the last ``reserved_fraction`` of
    ``max_connections`` only admits addresses that hold no connection, so a few addresses cannot fill it.
    ``max_refusing`` bounds the refused connections waiting for their 503 (beyond it they are dropped).
    """

    header_timeout_s: float = 10.0
    max_connections: int = 1000
    max_connections_per_client: int = 128
    reserved_fraction: float = 0.1
    max_refusing: int = 256


class _Guard:
    """Shared by every connection of one server: counts connections per client address."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.per_client: dict[str, int] = {}
        self.total = 0
        self.refused = 0
        self.refusing = 0
        self.throttled_count = 0
        self.strikes: OrderedDict[str, tuple[float, float, float]] = OrderedDict()  # tokens, updated, admitted
        self.reserved = int(limits.max_connections * limits.reserved_fraction) if limits.max_connections else 0

    def strike(self, host: str) -> None:
        """Record one early-ended request from ``host`` (see ``STRIKE_BURST``)."""
        now = time.monotonic()
        tokens, last, admitted = self.strikes.pop(host, (float(STRIKE_BURST), now, 0.0))
        tokens = max(-STRIKE_BURST, min(STRIKE_BURST, tokens + (now - last) * STRIKES_FORGIVEN_PER_S) - 1.0)
        self.strikes[host] = (tokens, now, admitted)
        while len(self.strikes) > 10_000:
            self.strikes.popitem(last=False)

    def throttled(self, host: str) -> bool:
        """True when ``host`` is over its strikes and has had its penalty connection this interval."""
        entry = self.strikes.get(host)
        if entry is None:
            return False
        now = time.monotonic()
        tokens, last, admitted = entry
        if tokens + (now - last) * STRIKES_FORGIVEN_PER_S >= 0:
            return False
        if now - admitted >= 1.0 / PENALTY_CONNECTIONS_PER_S:
            self.strikes[host] = (tokens, last, now)
            return False
        self.throttled_count += 1
        return True

    def share(self) -> int:
        """Connections one address may hold now: its cap on an empty server, shrinking as the server fills."""
        lim = self.limits
        cap = lim.max_connections_per_client
        if not lim.max_connections:
            return cap
        return max(MIN_SHARE, cap * (lim.max_connections - self.total) // lim.max_connections)

    def admit(self, host: str) -> bool:
        lim = self.limits
        n = self.per_client.get(host, 0)
        refuse = bool(lim.max_connections) and self.total >= lim.max_connections
        if n and lim.max_connections_per_client and not refuse:  # addresses already connected: the reserve
            refuse = (bool(lim.max_connections) and self.total >= lim.max_connections - self.reserved) or \
                n >= min(lim.max_connections_per_client, self.share())  # and the shrinking share
        if refuse:
            self.refused += 1
            return False
        self.per_client[host] = n + 1
        self.total += 1
        return True

    def release(self, host: str) -> None:
        n = self.per_client.get(host, 0) - 1
        if n > 0:
            self.per_client[host] = n
        else:
            self.per_client.pop(host, None)
        self.total -= 1


class _Refusal:
    """A connection over a cap, outside uvicorn: waits for the request line, answers 503 + Retry-After, then
    closes after a short linger (reading and discarding), or drops the connection if no line comes in time."""

    def __init__(self, guard: _Guard, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.guard, self.transport, self.seen = guard, transport, b""
        guard.refusing += 1
        self.answered = False
        self.timer: asyncio.TimerHandle | None = loop.call_later(REFUSAL_WAIT_S, self.drop)
        self.loop = loop

    def data(self, data: bytes) -> None:
        if self.answered:
            return  # lingering: discard
        self.seen = (self.seen + data)[-4096:]
        if b"\n" in self.seen:
            self.answered = True
            self.transport.write(_REFUSAL_503)
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self._retime(REFUSAL_LINGER_S)

    def _retime(self, seconds: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(seconds, self.drop)

    def drop(self) -> None:
        self.timer = None
        self.transport.abort()

    def lost(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.guard.refusing -= 1


class _GuardedMixin:
    """Mixed in front of uvicorn's H11Protocol/HttpToolsProtocol (both keep ``cycle``, ``transport``, ``loop``)."""

    _guard: _Guard
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any

    def connection_made(self, transport: asyncio.Transport) -> None:
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_cycle: Any = None
        self._refusal: _Refusal | None = None
        peer = transport.get_extra_info("peername")
        self._peer: str | None = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        if self._guard.limits.max_connections_per_client and self._guard.throttled(self._peer):
            self._peer = None
            transport.abort()
            return
        if not self._guard.admit(self._peer):
            self._peer = None
            if self._guard.refusing >= self._guard.limits.max_refusing:
                transport.abort()  # too many refusals pending already: no answer, no state to undo
            else:
                self._refusal = _Refusal(self._guard, transport, asyncio.get_event_loop())
            return
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        timeout = self._guard.limits.header_timeout_s
        if timeout and self._head_timer is None:
            self._head_cycle = self.cycle
            self._head_timer = self.loop.call_later(timeout, self._head_timeout)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _strike(self) -> None:
        if self._peer is not None and self._guard.limits.max_connections_per_client:
            self._guard.strike(self._peer)

    def _head_timeout(self) -> None:
        self._head_timer = None
        self._strike()
        if not self.transport.is_closing():
            self.transport.write(_TIMEOUT_408)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if getattr(self, "_peer", None) is None:
            if getattr(self, "_refusal", None) is not None:
                self._refusal.data(data)  # type: ignore[union-attr]
            return
        waiting = self.cycle is None or self.cycle.response_complete  # a new request's head is due
        super().data_received(data)  # type: ignore[misc]
        if self.cycle is not None and self.cycle is not self._head_cycle:
            self._disarm_head_timer()  # the head arrived
            self.cycle.scope[STRIKE] = self._strike  # before the app's task first runs
        elif waiting:
            self._arm_head_timer()  # first bytes of a head: the clock runs from here, trickling does not reset it

    def eof_received(self) -> bool | None:
        if getattr(self, "_peer", None) is None:
            return None  # a refused connection: let the transport close
        return super().eof_received()  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        if getattr(self, "_peer", None) is None:
            if getattr(self, "_refusal", None) is not None:
                self._refusal.lost()  # type: ignore[union-attr]
                self._refusal = None
            return
        self._disarm_head_timer()
        self._guard.release(str(self._peer))
        self._peer = None
        super().connection_lost(exc)  # type: ignore[misc]


def strike(scope: dict[str, Any]) -> None:
    """Count a strike against the connection of ``scope`` (a no-op outside the guarded protocol)."""
    callback = scope.get(STRIKE)
    if callback is not None:
        callback()


def guarded_protocol(limits: ConnectionLimits, base: type | None = None) -> type:
    """uvicorn's HTTP protocol class (httptools when installed, else h11) with the limits applied."""
    if base is None:
        try:
            from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as protocol
        except ImportError:  # pragma: no cover - httptools is optional in uvicorn
            from uvicorn.protocols.http.h11_impl import H11Protocol as protocol  # type: ignore[assignment]
        base = protocol
    return type(f"Guarded{base.__name__}", (_GuardedMixin, base), {"_guard": _Guard(limits)})


def raise_fd_limit(needed: int) -> int:
    """Raise this process's soft file-descriptor limit towards ``needed`` (within the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        return want
    return soft


def uvicorn_config(app: Any, options: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """A :class:`uvicorn.Config` from JSON-able ``options`` (see :meth:`ServerConfig.uvicorn_options`).

    ``connection_limits`` becomes the guarded protocol class; ``nofile`` sets the soft descriptor limit
    (the benchmark uses it to emulate a default 1024-descriptor system).
    """
    import uvicorn

    options = dict(options or {})
    limits = options.pop("connection_limits", None)
    nofile = options.pop("nofile", None)
    if nofile:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (int(nofile), hard))
    if limits is not None:
        lim = ConnectionLimits(**limits)
        if lim.max_connections:
            raise_fd_limit(lim.max_connections + lim.max_refusing + 256)  # + the app's files, the listening socket
        options["http"] = guarded_protocol(lim)
    return uvicorn.Config(app, **{**kwargs, **options})


def limits_dict(limits: ConnectionLimits) -> dict[str, Any]:
    return asdict(limits)


class FailedAuthLimiter:
    """Per client address: at most ``per_minute`` wrong API keys, as a token bucket (bursts up to that many).

    Bounded memory: the least recently seen addresses are forgotten past ``max_clients``. A correct key is
    never refused by the limiter (verification is cheap), so a valid client behind the same address keeps
    working while a guesser is throttled.
    """

    def __init__(self, per_minute: int, max_clients: int = 10_000) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def failure(self, client: str) -> float:
        """Record one failed authentication; returns 0 when still allowed, else the seconds to wait."""
        if not self.enabled:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.pop(client, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = max(1.0, math.ceil((1.0 - tokens) / self.rate))
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        return wait
