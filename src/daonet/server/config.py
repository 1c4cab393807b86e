"""Server configuration and API-key hashes (keys are stored hashed, never in plaintext).

API keys are random secrets, not passwords: ``daonet hash-key`` generates 256-bit keys and the server
stores ``sha256$<hex>``. A salt or a slow hash adds nothing against guessing a 256-bit random key, and
it would hand every client a CPU lever: with the former PBKDF2 hashes each *wrong* key cost ~50 ms of
server CPU. ``pbkdf2_sha256$...`` hashes are therefore refused with a message that says how to replace
them (``allow_slow_key_hashes`` keeps them for the benchmark that measures that lever, nothing else).
Chosen keys (``daonet hash-key --stdin``) must be at least 22 characters (128 bits if random).

Comparison is constant-time (:func:`hmac.compare_digest`) and checks every configured hash.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DaonetError

PBKDF2_ITERATIONS = 200_000
_CACHE_SIZE = 1024

__all__ = ["ServerConfig", "ConfigError", "ApiKeyVerifier", "hash_api_key", "generate_api_key"]


class ConfigError(DaonetError, ValueError):
    """A server setting is invalid."""


def generate_api_key() -> str:
    """A random 256-bit key, URL-safe (give it to a client, keep only its hash on the server)."""
    return "dao_" + secrets.token_urlsafe(32)


MIN_KEY_CHARS = 22  # 128 bits of a URL-safe random key


def hash_api_key(key: str, scheme: str = "sha256", iterations: int = PBKDF2_ITERATIONS) -> str:
    """Hash a key for the server config: ``sha256`` (``pbkdf2`` only for the benchmark's old-settings server)."""
    if not key:
        raise ConfigError("an API key cannot be empty")
    if scheme == "sha256" and len(key) < MIN_KEY_CHARS:
        raise ConfigError(f"an API key must be at least {MIN_KEY_CHARS} characters of random text (128 bits); "
                          "let `daonet hash-key` generate one")
    raw = key.encode("utf-8")
    if scheme == "sha256":
        return "sha256$" + hashlib.sha256(raw).hexdigest()
    if scheme == "pbkdf2":
        salt = secrets.token_bytes(16)
        digest = hashlib.pbkdf2_hmac("sha256", raw, salt, iterations)
        return f"pbkdf2_sha256${iterations}${salt.hex()}${digest.hex()}"
    raise ConfigError(f"unknown hash scheme {scheme!r}; use 'sha256' or 'pbkdf2'")


@dataclass(frozen=True)
class _Hash:
    scheme: str
    digest: bytes
    salt: bytes = b""
    iterations: int = 0


def _parse_hash(text: str) -> _Hash:
    parts = text.strip().split("$")
    try:
        if parts[0] == "sha256" and len(parts) == 2:
            digest = bytes.fromhex(parts[1])
            if len(digest) == 32:
                return _Hash("sha256", digest)
        elif parts[0] == "pbkdf2_sha256" and len(parts) == 4:
            iterations, salt, digest = int(parts[1]), bytes.fromhex(parts[2]), bytes.fromhex(parts[3])
            if iterations >= 1 and salt and len(digest) == 32:
                return _Hash("pbkdf2", digest, salt, iterations)
    except ValueError:
        pass
    shown = text[:12] + "..." if len(text) > 12 else text
    raise ConfigError(
        f"API key hash {shown!r} is not valid; expected 'sha256$<64 hex>' (make one with `daonet hash-key`); "
        "pass the hash, never the key itself"
    )


PBKDF2_REFUSED = (
    "API key hash 'pbkdf2_sha256$...' is no longer accepted: a slow hash made every wrong key cost ~50 ms of "
    "server CPU, a denial-of-service lever, and adds nothing for random keys. Generate a new key with "
    "`daonet hash-key`, give the key to your clients and serve with its 'sha256$...' hash"
)


class ApiKeyVerifier:
    """Checks a presented key against the configured hashes in constant time."""

    def __init__(self, hashes: list[str] | tuple[str, ...], allow_slow: bool = False) -> None:
        self._hashes = [_parse_hash(h) for h in hashes]
        if not allow_slow and any(h.scheme == "pbkdf2" for h in self._hashes):
            raise ConfigError(PBKDF2_REFUSED)
        self._verified: OrderedDict[bytes, None] = OrderedDict()  # sha256 of pbkdf2 keys that matched
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self._hashes)

    @property
    def slow(self) -> bool:
        """True with a PBKDF2 hash (benchmark only): verification then runs off the event loop."""
        return any(h.scheme == "pbkdf2" for h in self._hashes)

    def verify(self, key: str | None) -> bool:
        """True when ``key`` matches any configured hash. Does not stop at the first match."""
        if not key:
            return False
        raw = key.encode("utf-8", "surrogateescape")
        quick = hashlib.sha256(raw).digest()
        ok = False
        with self._lock:
            cached = quick in self._verified
        for h in self._hashes:
            if h.scheme == "sha256":
                ok |= hmac.compare_digest(quick, h.digest)
            elif not cached:
                ok |= hmac.compare_digest(hashlib.pbkdf2_hmac("sha256", raw, h.salt, h.iterations), h.digest)
        if cached:
            return True
        if ok and any(h.scheme == "pbkdf2" for h in self._hashes):
            with self._lock:
                self._verified[quick] = None
                while len(self._verified) > _CACHE_SIZE:
                    self._verified.popitem(last=False)
        return ok


@dataclass
class ServerConfig:
    """Everything ``daonet serve`` needs; :meth:`validate` says what is wrong in one sentence."""

    bundles: list[Path] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int | None = None  # None: what the served models' largest payload needs (JSON form)
    max_batch_size: int = 64
    max_wait_ms: float = 2.0
    api_key_hashes: list[str] = field(default_factory=list)
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    torch_threads: int | None = None
    log_level: str = "info"
    web: bool = False  # also serve the web page at / and the device bundles read-only (daonet.web)
    # denial-of-service limits (0 switches one off; see daonet.server.limits and docs/guide/serve.md)
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    keep_alive_timeout_s: float = 5.0
    max_connections: int = 1000
    max_connections_per_client: int = 128
    auth_failures_per_minute: int = 30
    allow_slow_key_hashes: bool = False  # benchmark only: accept the former PBKDF2 hashes
    docs: bool = False  # /docs (Swagger UI loads its scripts from a public CDN in the reader's browser)
    protect_metrics: bool = False  # /metrics needs the API key too
    public_keys: list[Path | bytes] = field(default_factory=list)  # serve only bundles signed by one (.pub / PEM)
    # addresses (or networks, or "*") of reverse proxies whose X-Forwarded-For/-Proto are believed; none by default
    forwarded_allow_ips: list[str] = field(default_factory=list)

    def validate(self, require_bundles: bool = True) -> ServerConfig:
        """Check every field now, so a bad setting fails at startup, not at the first request."""
        self.bundles = [Path(b) for b in self.bundles]
        if require_bundles and not self.bundles:
            raise ConfigError("no bundle to serve; pass at least one server bundle directory (bundles/NAME/server)")
        if not 0 <= int(self.port) <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        if self.max_body_bytes is not None and self.max_body_bytes < 64:
            raise ConfigError(f"max_body_bytes must be at least 64, got {self.max_body_bytes}")
        if self.max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be at least 1, got {self.max_batch_size}")
        if not 0 <= self.max_wait_ms <= 1000:
            raise ConfigError(f"max_wait_ms must be in [0, 1000], got {self.max_wait_ms}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ConfigError(f"torch_threads must be at least 1, got {self.torch_threads}")
        self.public_keys = [k if isinstance(k, bytes) else Path(k) for k in self.public_keys]
        for key in self.public_keys:
            if isinstance(key, Path) and not key.is_file():
                raise ConfigError(f"public key {key} does not exist (make a key pair with `daonet keygen`)")
            from ..signing import load_public_key

            try:
                load_public_key(key)  # a garbage file fails here, in daonet's words, not at bundle loading
            except DaonetError as exc:
                raise ConfigError(str(exc)) from None
        ApiKeyVerifier(self.api_key_hashes, self.allow_slow_key_hashes)  # ConfigError on a malformed hash
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_timeout_s", "max_connections",
                     "max_connections_per_client", "auth_failures_per_minute"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 <= value < 1e9):
                raise ConfigError(f"{name} must be a number >= 0 (0 switches it off), got {value!r}")
        self.forwarded_allow_ips = [str(a).strip() for a in self.forwarded_allow_ips if str(a).strip()]
        for address in self.forwarded_allow_ips:
            if address != "*":
                try:
                    ipaddress.ip_network(address, strict=False)
                except ValueError:
                    raise ConfigError(f"forwarded_allow_ips: {address[:64]!r} is not an IP address or network; "
                                      "list your reverse proxies' addresses (e.g. 10.0.0.5 or 10.0.0.0/24), or '*'"
                                      ) from None
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ConfigError("TLS needs both a certificate file and its key file (--ssl-certfile and --ssl-keyfile)")
        for name in ("ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None:
                path = Path(path)
                setattr(self, name, path)
                if not path.is_file():
                    raise ConfigError(f"{name.replace('_', '-')} {path} does not exist")
        return self

    def uvicorn_options(self) -> dict[str, Any]:
        """The uvicorn settings this config implies (shared by ``daonet serve`` and every launcher)."""
        from .limits import ConnectionLimits, limits_dict

        limits = ConnectionLimits(header_timeout_s=self.header_timeout_s, max_connections=self.max_connections,
                                  max_connections_per_client=self.max_connections_per_client)
        proxies = {"proxy_headers": True, "forwarded_allow_ips": ",".join(self.forwarded_allow_ips)} \
            if self.forwarded_allow_ips else {"proxy_headers": False}  # uvicorn would trust loopback by default
        return {"timeout_graceful_shutdown": 10, "timeout_keep_alive": self.keep_alive_timeout_s,
                "connection_limits": limits_dict(limits), **proxies}

    @property
    def tls(self) -> bool:
        return self.ssl_certfile is not None

    @staticmethod
    def read_hash_file(path: str | Path) -> list[str]:
        """One hash per line; blank lines and ``#`` comments ignored."""
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read the API key hash file {path}: {exc.strerror}") from exc
        return [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]
