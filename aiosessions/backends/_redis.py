"""The Redis backend: one store shared by processes on several hosts (redis-py's asyncio client).

Imported lazily (``open_store("redis://...")``, ``aiosessions.backends.RedisBackend``), so
``import aiosessions`` never imports redis-py. The layout (docs/format.md, "Redis"):

- ``{P}:format``: the store's marker, ``{"format": "aiosessions.redis", "version": 2,
  "buckets": B}``, written when the store is created (a version-1 marker is moved forward);
- per bucket ``b`` (a key's bucket is CRC-32 of its UTF-8 bytes modulo B), all in the hash
  slot of ``{P/b}``: ``{P/b}:s:<key>`` the entry (the same JSON bytes as ``meta.json``, or
  ``@`` and its split JSON when large members are stored apart as ``{P/b}:b:<digest>:<key>``),
  ``{P/b}:k`` the keys, ``{P/b}:r`` the recency index, ``{P/b}:v`` the version tokens,
  ``{P/b}:p`` the blobs each split entry names, ``{P/b}:x:<token>`` batch receipts (see
  ``_redis_lua``).

A session's keys share one slot with its bucket's indexes, so one script writes entries
and indexes atomically (a listing is never wrong, even if a writer dies half-way) and a
batch is one script per bucket, all in one pipeline: one round trip on one server, one per
node (in parallel) on a cluster. One bucket (the default on a single server) keeps
``newest()`` and ``count()`` one command; a cluster store defaults to 16 buckets so its
load spreads over the nodes.

Compare-and-swap is by version token: every write stores a fresh token beside the entry,
and the backend remembers the token of the bytes it last read or wrote of each key, so an
``update()`` sends the token it expects (a few bytes), not the entry it expects (which can
be 100 KB). Without a remembered token it sends the expected bytes.

Large members stored apart (format version 2, as in the directory store: ``_parts`` decides
what is split): an update of a session whose entry carries 120 KB of rarely changing members
sends the server the kilobyte that changed and the digests of the rest, not the 120 KB, and a
read of a changed entry fetches only the blobs this process does not hold.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import sys
import time
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec
import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from .._defaults import BASE_TTL
from .._errors import CorruptSessionError, StoreFormatError, StoreIOError
from .._parts import ENTRY_MIN, Last, Pieces, join_members, references, split_members
from .._recency import recency_of_encoded
from .._targets import is_redis_url
from . import _redis_lua as lua
from ._base import BatchResult, Write
from ._loop_thread import LoopThread, running_trio

__all__ = ["RedisBackend", "decode_member", "recency_code"]

T = TypeVar("T")

FORMAT_NAME: Final = "aiosessions.redis"
FORMAT_VERSION: Final = 2
#: The first byte of an entry stored split (no JSON text starts with it).
SPLIT: Final = b"@"
DEFAULT_PREFIX: Final = "aiosessions"
#: Buckets of a new store: one on a single server (newest() is one command), 16 on a cluster.
SERVER_BUCKETS: Final = 1
CLUSTER_BUCKETS: Final = 16
#: How long a batch receipt outlives its batch if nobody deletes it (a writer that died).
RECEIPT_TTL: Final = 24 * 3600
#: Most writes, and most bytes, one script call carries; a batch is split into several
#: calls of one pipeline beyond that, so no single script blocks the server for long.
SCRIPT_WRITES: Final = 128
SCRIPT_BYTES: Final = 1 << 20
#: Seconds of splitting entries on the event loop between two of its turns (see _split_entries).
SPLIT_SLICE: Final = 0.002
#: Keys per listing command.
CHUNK: Final = 1000

#: Options of ``open_store("redis://...?prefix=...")`` that are ours, not redis-py's.
URL_OPTIONS: Final = ("prefix", "buckets", "replicas", "replica_timeout", "cluster")

_PREFIX_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:")
_NETWORK_ERRORS = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)
#: Seconds a client made from a URL waits for a reply (``?socket_timeout=`` changes it).
REPLY_TIMEOUT: Final = 10.0
_TWO_64 = 1 << 64


# -- the recency code: byte order = newest first, ties by key, no updatedAt last --------------


def recency_code(updated_at: int | None) -> bytes:
    """A code whose byte order is descending ``updated_at`` (None after every integer).

    Fixed width for every 64-bit value, so a member ``<code><key>`` sorts by recency and
    then by key; any other integer keeps its exact place too (length-prefixed digits).
    """
    if updated_at is None:
        return b"~"
    w = -updated_at  # ascending w = descending updated_at
    if -_TWO_64 < w < _TWO_64:
        return b"1%017x" % (w + _TWO_64)
    digits = b"%x" % abs(w)
    if len(digits) > 0xFFFF:
        raise ValueError("updatedAt has more than 262,140 bits")
    if w > 0:  # a hugely negative updated_at: after every 64-bit value
        return b"2%04x" % len(digits) + digits
    # a hugely positive updated_at: before every 64-bit value; longer (larger) first
    flipped = digits.translate(_FLIP)
    return b"0%04x" % (0xFFFF - len(digits)) + flipped


_FLIP = bytes.maketrans(b"0123456789abcdef", b"fedcba9876543210")


def decode_member(member: bytes) -> tuple[str, int | None]:
    """``(key, updated_at)`` of a member of the recency index."""
    kind = member[:1]
    if kind == b"~":
        return member[1:].decode(), None
    if kind == b"1":
        return member[18:].decode(), _TWO_64 - int(member[1:18], 16)
    length = int(member[1:5], 16)
    if kind == b"2":
        return member[5 + length :].decode(), -int(member[5 : 5 + length], 16)
    length = 0xFFFF - length
    return member[5 + length :].decode(), int(member[5 : 5 + length].translate(_FLIP), 16)


def _recency(data: bytes) -> int | None:
    # The listings' rule, the same on every backend (aiosessions/_recency.py): an integer within
    # +-2**53, else None; a value that is not a JSON object is listed last and `get` reports it.
    # Found without parsing the whole entry, which costs more than the write for 120 KB entries.
    return recency_of_encoded(data)


# -- targets ------------------------------------------------------------------------------


def _check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not prefix or len(prefix) > 200:
        raise ValueError(
            f"the Redis key prefix must be a non-empty str of at most 200 characters: {prefix!r}"
        )
    bad = sorted(set(prefix) - _PREFIX_CHARS)
    if bad:
        raise ValueError(
            f"the Redis key prefix {prefix!r} may only hold letters, digits and _-.: (not {''.join(bad)!r})"
        )
    return prefix


def _split_url(url: str) -> tuple[str, dict[str, str]]:
    """The URL for redis-py without our options, and our options."""
    parts = urlsplit(url)
    ours: dict[str, str] = {}
    theirs: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        (ours.__setitem__(name, value) if name in URL_OPTIONS else theirs.append((name, value)))
    return urlunsplit(parts._replace(query=urlencode(theirs))), ours


def _flag(name: str, text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false in the Redis URL, not {text!r}")


def _describe_server(client: Any) -> str:
    """The server as a URL without credentials, for messages."""
    if isinstance(client, RedisCluster):
        nodes = client.get_nodes() or client.startup_nodes
        shown = ",".join(sorted(f"{node.host}:{node.port}" for node in nodes)[:3])
        return f"redis cluster {shown}"
    kwargs = client.connection_pool.connection_kwargs
    db = kwargs.get("db", 0)
    path = kwargs.get("path")
    if path:
        return f"unix://{path}?db={db}"
    scheme = "rediss" if "ssl" in client.connection_pool.connection_class.__name__.lower() else "redis"
    return f"{scheme}://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{db}"


# -- the backend --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Held:
    """What this process last read or wrote of a key: the whole entry, the version token it
    was stored under and when that was learnt, and when it is stored split, its parts."""

    data: bytes
    token: bytes
    when: float
    #: ``(member, digest)`` of each member stored apart (empty: stored whole); on the server
    #: while ``token`` is the stored version.
    parts: tuple[tuple[str, str], ...] = ()
    #: The top-level members of ``data`` as slices of it (views: they keep nothing else
    #: alive), when split: the bytes of its parts, and what ``update_members()`` starts from.
    members: Mapping[str, msgspec.Raw] | None = None

    def blobs(self) -> dict[str, bytes]:
        """The bytes of each part by digest (copies, made when asked: ~1 µs per 100 KB)."""
        if self.members is None:
            return {}
        return {digest: bytes(memoryview(self.members[name])) for name, digest in self.parts}

    def hints(self) -> dict[str, Last]:
        """What ``_parts.split`` needs to skip hashing a member that did not change."""
        blobs, slices = self.blobs(), self.members or {}
        return {name: (digest, blobs[digest], slices[name]) for name, digest in self.parts}


#: How an entry is stored: the value (``@`` and its split JSON, or the entry itself), what
#: splitting it found (None: whole), and its blobs by digest.
_Form = tuple[bytes, Pieces | None, dict[str, bytes]]


@dataclass(frozen=True, slots=True)
class _Sent:
    """One write of a script call: the write, its version token, and when its entry is
    stored split, its parts and its members (slices of ``write.data``)."""

    write: Write
    token: bytes
    parts: tuple[tuple[str, str], ...]
    members: Mapping[str, msgspec.Raw] | None


@dataclass(slots=True)
class _Doubt:
    """A write sent in a batch whose reply never came: it may or may not have landed."""

    receipt: bytes
    position: int  # its index in the batch (its status in the receipt)
    write: Write
    token: bytes  # the version token it carried


@dataclass(slots=True)
class _Call:
    """One script call of a batch: writes of one bucket (see ``_redis_lua.WRITE``)."""

    bucket: int
    receipt: bytes
    keys: list[bytes]  # receipt, indexes, parts hash, receipts to delete, then the entries
    argv: list[Any]
    writes: list[_Sent] = field(default_factory=list)


class RedisBackend:
    """Sessions in Redis, under a key prefix; several processes and hosts share them.

    Build it from a ``redis.asyncio.Redis``, a ``redis.asyncio.RedisCluster`` or a
    ``redis.asyncio.ConnectionPool`` (the backend does not close what you hand it), or
    with :meth:`from_url`; pass it to :func:`aiosessions.open_store`.

    :param prefix: the store's name in the database; stores with different prefixes
        share a database without touching each other's keys.
    :param buckets: for a new store, how many hash slots its keys spread over (default:
        1 on a single server, 16 on a cluster); an existing store keeps its own.
    :param replicas: with ``durable`` writes (``fsync=True``, the default), wait until this
        many replicas acknowledged each batch (``WAIT``), or report the batch unsynced.
    :param replica_timeout: seconds ``WAIT`` waits for them.
    :param cache_bytes: bytes of entries whose version token is remembered, so that an
        ``update()`` of them sends a token instead of the whole expected entry.
    :param create: make the store (its marker) at :meth:`open` when there is none; with
        False, a missing store is :class:`~aiosessions.StoreFormatError`.
    :param owns_client: close the client with the store (:meth:`from_url` sets it).
    """

    mode: Final = "redis"
    batch_size: Final = 512

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = DEFAULT_PREFIX,
        buckets: int | None = None,
        replicas: int = 0,
        replica_timeout: float = 1.0,
        cache_bytes: int = 16 * 1024 * 1024,
        create: bool = True,
        owns_client: bool = False,
    ) -> None:
        if isinstance(client, aioredis.ConnectionPool):
            client = aioredis.Redis(connection_pool=client)
        if not isinstance(client, (aioredis.Redis, RedisCluster)):
            raise TypeError(
                "RedisBackend needs a redis.asyncio.Redis, RedisCluster or ConnectionPool, "
                f"not {type(client).__name__}"
            )
        if _decodes(client):
            raise ValueError(
                "the Redis client decodes responses (decode_responses=True): aiosessions stores "
                "bytes; pass a client made with decode_responses=False"
            )
        if buckets is not None and not 1 <= buckets <= 1024:
            raise ValueError(f"buckets must be between 1 and 1024, not {buckets!r}")
        if replicas < 0 or replica_timeout < 0:
            raise ValueError("replicas and replica_timeout must not be negative")
        self._client: Any = client
        self._owns_client = owns_client
        self.prefix = _check_prefix(prefix)
        self._prefix_bytes = prefix.encode()
        self._wanted_buckets = buckets
        self._replicas = replicas
        self._replica_timeout = replica_timeout
        self._cache_limit = cache_bytes
        self._create = create
        self._cluster = isinstance(client, RedisCluster)
        self._detect_cluster = False  # from_url: look at the server on open
        self._url: str | None = None
        self._server = _describe_server(client)
        self._tags: list[bytes] = []
        self._opened = False
        self._closed = False
        self._shas: dict[str, str] = {}
        self._writer = secrets.token_hex(6).encode()
        self._tokens = itertools.count(1)
        #: What was last read or written of each key: compare-and-swap by token, the base of
        #: an update() within BASE_TTL (read_base), the blobs a write need not send again.
        self._versions: OrderedDict[str, _Held] = OrderedDict()
        self._versions_bytes = 0
        #: Writes whose outcome is unknown, by key, and what their resolution found.
        self._doubts: dict[str, _Doubt] = {}
        self._resolved: dict[str, tuple[bool, _Doubt]] = {}
        #: Keys written over their own earlier attempt that had landed unbeknownst to us.
        self._reapplied_risk: set[str] = set()
        #: Receipts of acknowledged batches, per bucket, deleted by the bucket's next batch.
        self._acknowledged: dict[int, list[bytes]] = {}
        self._counters: dict[str, int] = {"round_trips": 0, "in_doubt": 0, "in_doubt_reapplied": 0}
        #: Under trio: the asyncio loop (in a thread of its own) the client runs on.
        self._bridge: LoopThread | None = None
        #: Seconds each call waits for the server's reply, bounded here (see `_io`); None: the
        #: client's own socket_timeout (a client you built, or one given socket_timeout) rules.
        self._reply_timeout: float | None = None
        #: Calls to the server in flight (their task, their deadline), the watchdog that cancels
        #: those past it, and the tasks it cancelled (see `_io`).
        self._inflight: dict[asyncio.Task[Any], float] = {}
        self._watchdog: asyncio.TimerHandle | None = None
        self._expired: set[asyncio.Task[Any]] = set()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str | None = None,
        buckets: int | None = None,
        replicas: int | None = None,
        replica_timeout: float | None = None,
        cluster: bool | None = None,
        cache_bytes: int = 16 * 1024 * 1024,
        create: bool = True,
        **client_options: Any,
    ) -> RedisBackend:
        """A backend on its own client for ``url`` (closed with the store).

        ``redis://[user:password@]host:port/db?prefix=NAME``, ``rediss://`` (TLS) and
        ``unix:///path/redis.sock?db=N&prefix=NAME``; the options ``prefix``, ``buckets``,
        ``replicas``, ``replica_timeout`` and ``cluster`` may be given in the query (the
        arguments win), every other query option is redis-py's. A server in cluster mode
        is detected on open (``cluster=false`` skips that; ``cluster=true`` insists).
        """
        if not is_redis_url(url):
            raise ValueError(f"not a redis://, rediss:// or unix:// URL: {url!r}")
        redis_url, ours = _split_url(url)
        try:
            chosen_prefix = prefix if prefix is not None else ours.get("prefix", DEFAULT_PREFIX)
            chosen_buckets = buckets if buckets is not None else _int_option(ours, "buckets")
            chosen_replicas = replicas if replicas is not None else (_int_option(ours, "replicas") or 0)
            timeout = replica_timeout
            if timeout is None:
                timeout = float(ours["replica_timeout"]) if "replica_timeout" in ours else 1.0
        except ValueError as exc:
            raise ValueError(f"{exc} (in {_hide_password(url)})") from None
        if cluster is None and "cluster" in ours:
            cluster = _flag("cluster", ours["cluster"])
        options, own_timeout = _client_defaults(redis_url, client_options)
        kind: Any = RedisCluster if cluster else aioredis.Redis
        client = kind.from_url(redis_url, **options)
        backend = cls(
            client,
            prefix=chosen_prefix,
            buckets=chosen_buckets,
            replicas=chosen_replicas,
            replica_timeout=timeout,
            cache_bytes=cache_bytes,
            create=create,
            owns_client=True,
        )
        backend._url = redis_url
        backend._client_options = options
        backend._detect_cluster = cluster is None
        backend._reply_timeout = REPLY_TIMEOUT if own_timeout else None
        return backend

    _client_options: dict[str, Any]

    # -- the protocol ---------------------------------------------------------------------

    def location(self, key: str | None = None) -> str:
        if key is None or not self._tags:
            return f"{self._server} prefix {self.prefix!r}"
        return f"{self._server} key {self._entry(self._bucket(key), key).decode(errors='replace')!r}"

    def counters(self) -> Mapping[str, int]:
        """``round_trips`` to the server, writes found ``in_doubt`` (a reply lost), and
        ``in_doubt_reapplied``: those whose update functions may have been applied twice."""
        return dict(self._counters)

    async def open(self) -> None:
        """Connect, load the scripts, and read (or create) the store's marker.

        Under trio, the client runs on an asyncio loop in a thread of its own (see
        ``_loop_thread``); every call crosses to it and back.
        """
        if self._opened:
            raise RuntimeError(f"the Redis store {self.location()} is already open")
        self._opened = True
        if running_trio():
            if self._bridge is None:
                self._bridge = LoopThread("aiosessions-redis")
        else:
            _require_asyncio()
        await self._call(self._open())

    async def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Await ``coroutine`` where the client lives: here on asyncio, on the loop thread under trio."""
        if self._bridge is None:
            return await coroutine
        return await self._bridge.run(coroutine)

    async def _open(self) -> None:
        try:
            if self._detect_cluster:
                await self._become_cluster_if_needed()
            await self._load_scripts()
            await self._open_marker()
        except redis_errors.RedisError as exc:
            raise self._io_error(exc, f"opening the store {self.location()}") from exc
        except OSError as exc:
            raise self._io_error(exc, f"opening the store {self.location()}") from exc

    async def _become_cluster_if_needed(self) -> None:
        info = await self._io(self._client.info("cluster"))
        self._count()
        if not info.get("cluster_enabled"):
            return
        assert self._url is not None
        await self._client.aclose()
        url = urlunsplit(urlsplit(self._url)._replace(path=""))
        self._client = RedisCluster.from_url(url, **self._client_options)
        self._cluster = True
        await self._client.initialize()
        self._server = _describe_server(self._client)

    async def _load_scripts(self) -> None:
        for name, text in (("read", lua.READ), ("write", lua.WRITE), ("resolve", lua.RESOLVE)):
            self._shas[name] = await self._io(self._client.script_load(text))
            self._count()

    async def _open_marker(self) -> None:
        marker = b"{" + self._prefix_bytes + b"}:format"
        buckets = self._wanted_buckets or (CLUSTER_BUCKETS if self._cluster else SERVER_BUCKETS)
        wanted = msgspec.json.encode({"format": FORMAT_NAME, "version": FORMAT_VERSION, "buckets": buckets})
        if self._create:
            await self._io(self._client.set(marker, wanted, nx=True))
            self._count()
        raw = await self._io(self._client.get(marker))
        self._count()
        where = f"{self._server} key {marker.decode()!r}"
        if raw is None:
            raise StoreFormatError(f"no session store with the prefix {self.prefix!r} at {self._server}")
        try:
            found = msgspec.json.decode(raw or b"")
            name, version, stored = found["format"], found["version"], found["buckets"]
        except (msgspec.DecodeError, KeyError, TypeError) as exc:
            raise StoreFormatError(f"{where} is not an aiosessions store marker: {raw!r}") from exc
        if name != FORMAT_NAME:
            raise StoreFormatError(f"{where} marks a store of format {name!r}, not {FORMAT_NAME!r}")
        if version == 1 and isinstance(stored, int):
            # Version 1 stored every entry whole, which version 2 reads as it is: only the
            # marker moves, so that a version-1 release refuses the split entries to come.
            forward = msgspec.json.encode(
                {"format": FORMAT_NAME, "version": FORMAT_VERSION, "buckets": stored}
            )
            raw = await self._io(self._client.eval(lua.UPGRADE, 1, marker, raw, forward))
            self._count()
            found = msgspec.json.decode(raw or b"null")
            version = found.get("version") if isinstance(found, dict) else None
        if version != FORMAT_VERSION:
            raise StoreFormatError(
                f"{where} is a store of version {version!r}; this aiosessions reads version "
                f"{FORMAT_VERSION} (upgrade aiosessions)"
            )
        if not isinstance(stored, int) or not 1 <= stored <= 1024:
            raise StoreFormatError(f"{where} holds an invalid bucket count {stored!r}")
        if self._wanted_buckets is not None and stored != self._wanted_buckets:
            raise StoreFormatError(
                f"{where}: the store exists with {stored} bucket(s), not {self._wanted_buckets}; "
                "leave buckets unset to open it"
            )
        self._tags = [b"{" + self._prefix_bytes + b"/%d}" % bucket for bucket in range(stored)]

    @property
    def buckets(self) -> int:
        """How many hash slots the store's keys spread over (known once open)."""
        return len(self._tags)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._call(self._aclose())
        finally:
            if self._bridge is not None:
                self._bridge.stop()

    async def _aclose(self) -> None:
        try:
            stale = [receipt for receipts in self._acknowledged.values() for receipt in receipts]
            if stale and self._tags:
                # Best effort: each would expire anyway. One command per bucket (one slot).
                pipe = self._client.pipeline(transaction=False)
                for receipts in self._acknowledged.values():
                    pipe.delete(*receipts)
                await self._io(pipe.execute(raise_on_error=False))
                self._count()
        except (redis_errors.RedisError, OSError):
            pass
        finally:
            self._acknowledged.clear()
            # What became of writes whose reply was lost matters only to their next attempt,
            # which a closed store never makes.
            self._doubts.clear()
            self._resolved.clear()
            self._reapplied_risk.clear()
            if self._watchdog is not None:
                self._watchdog.cancel()
                self._watchdog = None
            try:
                if self._owns_client:
                    await self._client.aclose()
                elif self._bridge is not None:
                    # Under trio a client you handed over made its connections on our loop
                    # thread, which stops now: close them (the client can connect again).
                    if isinstance(self._client, RedisCluster):
                        await self._client.aclose()
                    else:
                        await self._client.connection_pool.disconnect()
            except (redis_errors.RedisError, OSError):
                pass

    def upkeep_due(self) -> bool:
        return False

    async def maintain(self) -> None:
        """Nothing to sweep: receipts left by writers that died expire by themselves."""

    # -- reads ----------------------------------------------------------------------------

    async def read(self, key: str) -> bytes | None:
        return await self._call(self._read(key))

    async def _read(self, key: str) -> bytes | None:
        names, args, held = self._read_call(key)
        try:
            reply = await self._evalsha("read", names, args)
        except (redis_errors.RedisError, OSError) as exc:
            raise self._io_error(exc, "reading", key) from exc
        return self._take_read(key, reply, held)

    def _read_call(self, key: str) -> tuple[tuple[bytes, ...], tuple[bytes, ...], _Held | None]:
        """The keys and arguments of the read script, and what is held of ``key``: named (its
        version token, its blobs), not sent again, and what the reply stands on even if the
        cache drops it or a write of this process replaces it before the reply comes."""
        bucket = self._bucket(key)
        tag = self._tag(bucket)
        held = self._versions.get(key)
        token = b"" if held is None else held.token
        digests = b"" if held is None else " ".join(digest for _, digest in held.parts).encode()
        names = (self._entry(bucket, key), tag + b":v", tag + b":p")
        return names, (key.encode(), token, digests), held

    def _take_read(self, key: str, reply: Any, held: _Held | None) -> bytes | None:
        """The entry a read script answered, given what was ``held`` when it was sent."""
        if reply is None:
            return None
        if isinstance(reply, list):  # stored split: the entry and the blobs not held
            token, value, *pairs = reply
            return self._assemble(key, bytes(value), bytes(token), pairs, held)
        token, space, data = bytes(reply).partition(b" ")
        if not space:
            # Unchanged: the stored version is the token sent, that of the bytes held then.
            assert held is not None and held.token == token, "the server names a version not sent"
            return held.data
        if token:
            self._remember(key, data, token)
        return data

    def _assemble(
        self, key: str, value: bytes, token: bytes, pairs: Sequence[Any], held: _Held | None
    ) -> bytes:
        """The whole entry of a value stored split: its blobs from ``pairs`` (digest, bytes,
        ...) as the server sent them, else from what was ``held`` when the read was sent;
        remembered under ``token`` (when known)."""
        blobs = {} if held is None else held.blobs()
        for at in range(0, len(pairs), 2):
            digest = bytes(pairs[at]).decode()
            if pairs[at + 1] is None:
                raise CorruptSessionError(
                    f"session {key!r}: the blob {digest} its entry names is missing from "
                    f"{self._server} (evicted? a Redis store needs maxmemory-policy noeviction)",
                    where=self.location(key),
                    key=key,
                )
            blobs[digest] = bytes(pairs[at + 1])
        meta = value[len(SPLIT) :]
        try:
            parts = references(meta) or []
            whole, members = join_members(meta, blobs)
        except (msgspec.DecodeError, KeyError, ValueError) as exc:
            raise CorruptSessionError(
                f"session {key!r}: its split entry at {self.location(key)} cannot be put together: {exc}",
                where=self.location(key),
                key=key,
            ) from exc
        if token:
            named = tuple((name, digest) for name, _, digest in parts)
            self._remember(key, whole, token, named, members)
        return whole

    async def read_base(self, key: str) -> bytes | None:
        """The bytes an ``update()`` of ``key`` starts from: what this process read or wrote
        of it in the last BASE_TTL seconds, else a :meth:`read`.

        They may be stale (another host wrote since): the write's compare-and-swap in the server
        still checks them, and a conflict makes the queue apply the update function again to
        the bytes found, so a stale base costs a retry, never an update. Saves the round trip
        of a bot's message loop, which reads a session (``get``) and then updates it.
        """
        return await self._call(self._read_base(key))

    async def _read_base(self, key: str) -> bytes | None:
        known = self._known(key)
        return known if known is not None else await self._read(key)

    def _known(self, key: str) -> bytes | None:
        held = self._versions.get(key)
        if held is None or time.monotonic() - held.when > BASE_TTL:
            return None
        return held.data

    def members_of(self, key: str, data: bytes) -> Mapping[str, msgspec.Raw] | None:
        """The top-level members of ``data`` as slices, when it is the entry of ``key`` last
        read or written and it is stored split (``update_members()`` starts from them)."""
        held = self._versions.get(key)
        if held is None or held.members is None or (held.data is not data and held.data != data):
            return None
        return held.members

    async def read_many(self, keys: Sequence[str]) -> list[bytes | BaseException | None]:
        if not keys:
            return []
        return await self._call(self._read_many(keys))

    async def _read_many(self, keys: Sequence[str]) -> list[bytes | BaseException | None]:
        by_bucket: dict[int, list[int]] = {}
        for index, key in enumerate(keys):
            by_bucket.setdefault(self._bucket(key), []).append(index)
        pipe = self._client.pipeline(transaction=False)
        for bucket, indexes in by_bucket.items():
            pipe.execute_command("MGET", *[self._entry(bucket, keys[index]) for index in indexes])
        found: list[bytes | BaseException | None] = [None] * len(keys)
        try:
            replies = await self._io(pipe.execute(raise_on_error=False))
        except (redis_errors.RedisError, OSError) as exc:
            return [self._io_error(exc, "reading", key) for key in keys]
        finally:
            self._count()
        split: list[int] = []
        for (_, indexes), reply in zip(by_bucket.items(), replies, strict=True):
            for position, index in enumerate(indexes):
                if isinstance(reply, Exception):
                    found[index] = self._io_error(reply, "reading", keys[index])
                elif reply[position] is not None and reply[position][:1] == SPLIT:
                    split.append(index)
                else:
                    found[index] = reply[position]
        if split:
            # Entries stored split: read again with their blobs, in one more round trip.
            pipe = self._client.pipeline(transaction=False)
            held: list[_Held | None] = []
            for index in split:
                names, args, known = self._read_call(keys[index])
                held.append(known)
                pipe.execute_command("EVALSHA", self._shas["read"], len(names), *names, *args)
            try:
                replies = await self._io(pipe.execute(raise_on_error=False))
            except (redis_errors.RedisError, OSError) as exc:
                replies = [exc] * len(split)
            finally:
                self._count()
            for index, reply, known in zip(split, replies, held, strict=True):
                key = keys[index]
                try:
                    if isinstance(reply, redis_errors.NoScriptError):
                        found[index] = await self._read(key)
                    elif isinstance(reply, Exception):
                        found[index] = self._io_error(reply, "reading", key)
                    else:
                        found[index] = self._take_read(key, reply, known)
                except (CorruptSessionError, StoreIOError) as exc:
                    found[index] = exc
        return found

    async def exists(self, key: str) -> bool:
        return await self._call(self._exists(key))

    async def _exists(self, key: str) -> bool:
        try:
            found = await self._io(self._client.exists(self._entry(self._bucket(key), key)))
        except (redis_errors.RedisError, OSError) as exc:
            raise self._io_error(exc, "reading", key) from exc
        finally:
            self._count()
        return bool(found)

    async def key_chunks(self, prefix: str = "") -> AsyncIterator[list[str]]:
        """The keys starting with ``prefix``, from each bucket's key index in byte order."""
        low, high = _lex_bounds(prefix)
        for bucket in range(len(self._tags)):
            index = self._tag(bucket) + b":k"
            start = low
            while True:
                members = await self._call(self._page(index, start, high))
                if members:
                    yield [member.decode() for member in members]
                if len(members) < CHUNK:
                    break
                start = b"(" + members[-1]

    async def _page(self, index: bytes, start: bytes, high: bytes) -> list[bytes]:
        try:
            members: list[bytes] = await self._io(self._client.zrangebylex(index, start, high, 0, CHUNK))
        except (redis_errors.RedisError, OSError) as exc:
            raise self._io_error(exc, "listing keys") from exc
        finally:
            self._count()
        return members

    async def newest(
        self, limit: int, *, after: tuple[str, int | None] | None = None
    ) -> list[tuple[str, int | None]]:
        """The ``limit`` sessions of highest ``updatedAt`` (ties by key; none last), after ``after``."""
        if limit <= 0:
            return []
        return await self._call(self._newest(limit, after))

    async def _newest(self, limit: int, after: tuple[str, int | None] | None) -> list[tuple[str, int | None]]:
        start = b"-" if after is None else b"(" + recency_code(after[1]) + after[0].encode()
        pipe = self._client.pipeline(transaction=False)
        for bucket in range(len(self._tags)):
            pipe.zrangebylex(self._tag(bucket) + b":r", start, b"+", 0, limit)
        try:
            replies = await self._io(pipe.execute())
        except (redis_errors.RedisError, OSError) as exc:
            raise self._io_error(exc, "listing the newest sessions") from exc
        finally:
            self._count()
        members = replies[0] if len(replies) == 1 else sorted(itertools.chain.from_iterable(replies))
        return [decode_member(member) for member in members[:limit]]

    async def count(self) -> int:
        """How many sessions the store holds (one ZCARD per bucket, one round trip)."""
        return await self._call(self._count_sessions())

    async def _count_sessions(self) -> int:
        pipe = self._client.pipeline(transaction=False)
        for bucket in range(len(self._tags)):
            pipe.zcard(self._tag(bucket) + b":k")
        try:
            replies = await self._io(pipe.execute())
        except (redis_errors.RedisError, OSError) as exc:
            raise self._io_error(exc, "counting sessions") from exc
        finally:
            self._count()
        return sum(replies)

    # -- writes ---------------------------------------------------------------------------

    async def write_batch(self, writes: Sequence[Write], *, durable: bool) -> BatchResult:
        return await self._call(self._write_batch(writes, durable))

    async def _write_batch(self, writes: Sequence[Write], durable: bool) -> BatchResult:
        result = BatchResult()
        missing = await self._write_once(writes, durable, result, every_blob=False)
        if missing:
            # A blob they name, believed on the server, was dropped by another writer's
            # write in between: these wrote nothing; sent again with every blob they name.
            await self._write_once(missing, durable, result, every_blob=True)
        return result

    async def _write_once(
        self, writes: Sequence[Write], durable: bool, result: BatchResult, *, every_blob: bool
    ) -> list[Write]:
        """Send ``writes`` once, into ``result``; return those that must be sent again with
        every blob they name."""
        landed = len(result.landed)
        if self._doubts:
            try:
                await self._resolve_doubts()
            except (redis_errors.RedisError, OSError) as exc:
                for write in writes:
                    error = self._io_error(exc, "writing", write.key, doubt=write.key in self._doubts)
                    (result.in_doubt if write.key in self._doubts else result.failed)[write.key] = error
                return []
        forms = await self._split_entries(writes)
        calls = self._plan(writes, result, every_blob, forms)
        if not calls:
            return []
        try:
            replies = await self._send(calls, durable)
        except (redis_errors.RedisError, OSError) as exc:
            # Sent, perhaps run, reply lost: the queue sends these writes again unchanged,
            # and their receipts tell then whether they landed.
            self._doubt(calls)
            for call in calls:
                for sent in call.writes:
                    key = sent.write.key
                    result.in_doubt[key] = self._io_error(exc, "writing", key, doubt=True)
            return []
        acked = replies.pop() if durable and self._replicas else None
        missing: list[Write] = []
        for call, reply in zip(calls, replies, strict=True):
            missing.extend(self._settle(call, reply, result))
        if acked is not None and acked < self._replicas:
            error = StoreIOError(
                None,
                f"only {acked} of {self._replicas} replica(s) of {self._server} acknowledged the "
                f"batch within {self._replica_timeout:g}s; it is written again",
                where=self._server,
            )
            for key in result.landed[landed:]:
                result.unsynced[key] = error
            del result.landed[landed:]
        return missing

    async def _split_entries(self, writes: Sequence[Write]) -> dict[str, _Form]:
        """The stored form of each large entry of ``writes``, by key, made on the event loop
        (its split is ~35 µs for 121 KB, whose members are compared, not hashed, when they
        did not change): with a turn of the loop every SPLIT_SLICE seconds, so that a batch
        of hundreds of large entries does not hold the loop for tens of milliseconds."""
        forms: dict[str, _Form] = {}
        started = time.perf_counter()
        for write in writes:
            if write.data is not None and len(write.data) >= ENTRY_MIN:
                forms[write.key] = self._stored_form(
                    write.key, write.data, write.members, self._versions.get(write.key)
                )
                if time.perf_counter() - started > SPLIT_SLICE:
                    await asyncio.sleep(0)
                    started = time.perf_counter()
        return forms

    def _plan(
        self,
        writes: Sequence[Write],
        result: BatchResult,
        every_blob: bool = False,
        forms: Mapping[str, _Form] | None = None,
    ) -> list[_Call]:
        """The script calls of a batch: its writes by bucket, cut at SCRIPT_WRITES/BYTES of
        what is sent (``forms``: entries split already, by key)."""
        by_bucket: dict[int, list[Write]] = {}
        for write in writes:
            resolved = self._resolved.pop(write.key, None)
            if resolved is not None:
                landed, doubt = resolved
                if landed and _same(write, doubt.write):
                    result.landed.append(write.key)  # it had landed: nothing left to write
                    self._remember_written(write.key, write.data, doubt.token)  # its parts unknown
                    continue
                if landed and not write.blind:
                    # Our earlier attempt is the stored state now: compare with what it wrote.
                    if doubt.write.data is None:
                        write = Write(write.key, write.data, None, blind=False)
                    else:
                        self._remember(write.key, doubt.write.data, doubt.token)
                        write = Write(write.key, write.data, doubt.write.data, blind=False)
                    self._reapplied_risk.add(write.key)
            by_bucket.setdefault(self._bucket(write.key), []).append(write)
        calls: list[_Call] = []
        for bucket, bucket_writes in by_bucket.items():
            call: _Call | None = None
            size = 0
            for write in bucket_writes:
                if call is None or len(call.writes) >= SCRIPT_WRITES or size >= SCRIPT_BYTES:
                    deletes = self._acknowledged.pop(bucket, []) if call is None else []
                    call = self._new_call(bucket, deletes=deletes)
                    calls.append(call)
                    size = 0
                form = None if forms is None else forms.get(write.key)
                size += self._add(call, write, every_blob, form)
        for call in calls:
            call.argv[2] = len(call.writes)
        return calls

    def _new_call(self, bucket: int, *, deletes: list[bytes]) -> _Call:
        tag = self._tag(bucket)
        receipt = tag + b":x:" + self._token()
        keys = [receipt, tag + b":k", tag + b":r", tag + b":v", tag + b":p", *deletes]
        return _Call(bucket, receipt, keys, [RECEIPT_TTL, len(deletes), 0])

    def _add(self, call: _Call, write: Write, every_blob: bool, form: _Form | None = None) -> int:
        """Add ``write`` to ``call`` (``form``: its entry's stored form, if made already);
        return how many bytes it sends."""
        token = self._token()
        held = self._versions.get(write.key)
        parts: tuple[tuple[str, str], ...] = ()
        blobs: dict[str, bytes] = {}
        members = None
        if write.data is None:
            code = value = b""
            action = b"D"
        else:
            code = recency_code(_recency(write.data))
            action = b"S"
            if form is None:
                form = self._stored_form(write.key, write.data, write.members, held)
            value, pieces, blobs = form
            if pieces is not None:
                parts, members = pieces.named, pieces.members
        if write.blind:
            guard, expected = b"B", b""
        elif write.expected is None:
            guard, expected = b"A", b""
        elif held is not None and (held.data is write.expected or held.data == write.expected):
            guard, expected = b"T", held.token
        else:
            guard, expected = b"V", self._stored_form(write.key, write.expected, None, held)[0]
        # The blobs the server holds for the version held are not sent again; if that is no
        # longer the stored version, the script answers 'M' and they are (every_blob).
        on_server = set() if held is None or every_blob else {digest for _, digest in held.parts}
        sent = [(digest.encode(), blob) for digest, blob in blobs.items() if digest not in on_server]
        call.keys.append(self._entry(call.bucket, write.key))
        call.argv.extend((action, guard, write.key.encode(), token, expected, value, code))
        call.argv.extend((" ".join(digest for _, digest in parts).encode(), len(sent)))
        for pair in sent:
            call.argv.extend(pair)
        call.writes.append(_Sent(write, token, parts, members))
        return 64 + len(write.key) + len(value) + len(expected) + sum(len(blob) for _, blob in sent)

    def _stored_form(
        self, key: str, data: bytes, slices: Mapping[str, msgspec.Raw] | None, held: _Held | None
    ) -> _Form:
        """The value ``data`` is stored as (``@`` and its split JSON, or itself when whole),
        what splitting it found, and its blobs by digest. A large member equal to one held
        for the key is not hashed again (``_parts.split``)."""
        meta, blobs, pieces = split_members(data, None if held is None else held.hints(), slices)
        if pieces is None:
            return data, None, {}
        return SPLIT + meta, pieces, blobs

    async def _send(self, calls: list[_Call], durable: bool) -> list[Any]:
        """Run every call of a batch (and WAIT) in one pipeline; reload scripts once if needed."""
        for attempt in (1, 2):
            pipe = self._client.pipeline(transaction=False)
            for call in calls:
                pipe.execute_command("EVALSHA", self._shas["write"], len(call.keys), *call.keys, *call.argv)
            if durable and self._replicas:
                pipe.execute_command("WAIT", self._replicas, int(self._replica_timeout * 1000))
            replies: list[Any] = await self._io(pipe.execute(raise_on_error=False))
            self._count()
            missing = any(isinstance(reply, redis_errors.NoScriptError) for reply in replies)
            if not missing or attempt == 2:
                break
            await self._load_scripts()  # the server restarted without its script cache
        for reply in replies:
            if isinstance(reply, (redis_errors.ConnectionError, redis_errors.TimeoutError)):
                raise reply
        return replies

    def _settle(self, call: _Call, reply: Any, result: BatchResult) -> list[Write]:
        """Record what became of each write of ``call``; return those to send again with
        every blob they name (status 'M')."""
        if isinstance(reply, Exception):
            error = reply
            for sent in call.writes:
                result.failed[sent.write.key] = self._io_error(error, "writing", sent.write.key)
            return []
        statuses: bytes = reply[0]
        if statuses == b"aborted":  # cannot happen to a fresh receipt; never mark it landed
            for sent in call.writes:
                key = sent.write.key
                result.failed[key] = StoreIOError(
                    None, f"the batch writing {key!r} was aborted", key=key, where=self._server
                )
            return []
        self._acknowledged.setdefault(call.bucket, []).append(call.receipt)
        again: list[Write] = []
        at = 1
        for sent, status in zip(call.writes, statuses.decode(), strict=True):
            write = sent.write
            if status == "L":
                result.landed.append(write.key)
                if write.data is None:
                    self._forget(write.key)
                else:
                    members = None if sent.members is None else MappingProxyType(sent.members)
                    self._remember(write.key, write.data, sent.token, sent.parts, members)
                if write.key in self._reapplied_risk:
                    self._reapplied_risk.discard(write.key)
            elif status == "M":
                self._forget(write.key)
                again.append(write)
            elif status == "E":
                message = reply[at]
                at += 3
                text = message.decode(errors="replace") if isinstance(message, bytes) else str(message)
                result.failed[write.key] = self._io_error(
                    redis_errors.ResponseError(text), "writing", write.key
                )
            else:
                current, version, pairs = reply[at], reply[at + 1], reply[at + 2]
                at += 3
                if write.key in self._reapplied_risk:
                    # Our earlier attempt landed and someone wrote over it before we could
                    # tell: its functions are re-applied on top (counted; see durability.md).
                    self._reapplied_risk.discard(write.key)
                    self._counters["in_doubt_reapplied"] += 1
                self._forget(write.key)
                if current is not None and current[:1] == SPLIT:
                    try:
                        current = self._assemble(write.key, current, version or b"", pairs, None)
                    except CorruptSessionError as exc:
                        result.failed[write.key] = exc
                        continue
                elif current is not None and version:
                    self._remember(write.key, current, version)
                result.conflicts[write.key] = current
        return again

    def _doubt(self, calls: list[_Call]) -> None:
        """A batch's reply never came: each of its writes may or may not have landed."""
        for call in calls:
            for position, sent in enumerate(call.writes):
                self._doubts[sent.write.key] = _Doubt(call.receipt, position, sent.write, sent.token)
                self._counters["in_doubt"] += 1
                self._forget(sent.write.key)

    async def _resolve_doubts(self) -> None:
        """Ask the receipts of batches whose reply never came what became of them.

        A receipt that is missing is set to ``aborted``, so that batch can never run later
        (a command still on its way to the server): its writes are known not to have landed.
        """
        receipts = sorted({doubt.receipt for doubt in self._doubts.values()})
        pipe = self._client.pipeline(transaction=False)
        for receipt in receipts:
            pipe.execute_command("EVALSHA", self._shas["resolve"], 1, receipt, RECEIPT_TTL)
        replies = await self._io(pipe.execute(raise_on_error=False))
        self._count()
        if any(isinstance(reply, redis_errors.NoScriptError) for reply in replies):
            await self._load_scripts()
            return await self._resolve_doubts()
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        outcome = dict(zip(receipts, replies, strict=True))
        for key, doubt in self._doubts.items():
            statuses: bytes = outcome[doubt.receipt]
            landed = statuses != b"aborted" and statuses[doubt.position : doubt.position + 1] == b"L"
            self._resolved[key] = (landed, doubt)
        self._doubts.clear()
        return None

    # -- helpers --------------------------------------------------------------------------

    async def _evalsha(self, name: str, keys: Sequence[bytes], args: Sequence[bytes]) -> Any:
        """Run one read script."""
        try:
            return await self._script(name, keys, args)
        except redis_errors.NoScriptError:
            # The server lost its script cache (a restart, SCRIPT FLUSH): load, run again.
            await self._load_scripts()
            return await self._script(name, keys, args)

    async def _script(self, name: str, keys: Sequence[bytes], args: Sequence[bytes]) -> Any:
        try:
            return await self._io(
                self._client.execute_command("EVALSHA", self._shas[name], len(keys), *keys, *args)
            )
        finally:
            self._count()  # every attempt is a round trip, the refused one too

    async def _io(self, call: Awaitable[T]) -> T:
        """Await one call to the server, for at most the reply timeout of a client we made.

        A call still waiting at its deadline is cancelled by the watchdog (``_watch``; redis-py
        then drops its connection) and fails as a redis-py ``TimeoutError``: a read raises
        StoreIOError, a batch is in doubt. The cancellation is the one ``asyncio.timeout``
        makes, without its timer per call (a tenth of a read's client CPU here): one watchdog
        looks at the calls in flight a few times per timeout, so a call fails within 1.25x it.
        """
        limit = self._reply_timeout
        if limit is None:
            return await call
        # Always true here (from_url sets a limit on 3.11+ only, else leaves socket_timeout to
        # redis-py), but mypy checks for 3.10, which has no Task.cancelling() or uncancel().
        if sys.version_info >= (3, 11):
            task = asyncio.current_task()
            if task is None:
                return await call
            cancelling = task.cancelling()
            self._inflight[task] = time.monotonic() + limit
            if self._watchdog is None:
                self._watchdog = asyncio.get_running_loop().call_later(limit / 4, self._watch)
            try:
                return await call
            except asyncio.CancelledError:
                # Ours, and no other cancellation pending (as asyncio.timeout decides).
                if task in self._expired and task.uncancel() <= cancelling:
                    raise redis_errors.TimeoutError(f"no reply within {limit:g} s") from None
                raise
            finally:
                del self._inflight[task]
                self._expired.discard(task)
        return await call

    def _watch(self) -> None:
        """Cancel the calls past their deadline; look again while any is in flight."""
        self._watchdog = None
        if not self._inflight or self._reply_timeout is None:
            return
        now = time.monotonic()
        for task, deadline in self._inflight.items():
            if deadline <= now and task not in self._expired:
                self._expired.add(task)
                task.cancel()
        self._watchdog = asyncio.get_running_loop().call_later(self._reply_timeout / 4, self._watch)

    def _token(self) -> bytes:
        return self._writer + b".%x" % next(self._tokens)

    def _bucket(self, key: str) -> int:
        count = len(self._tags)
        return 0 if count == 1 else zlib.crc32(key.encode()) % count

    def _tag(self, bucket: int) -> bytes:
        return self._tags[bucket]

    def _entry(self, bucket: int, key: str) -> bytes:
        return self._tags[bucket] + b":s:" + key.encode()

    def _count(self, n: int = 1) -> None:
        self._counters["round_trips"] += n

    def _remember(
        self,
        key: str,
        data: bytes,
        token: bytes,
        parts: tuple[tuple[str, str], ...] = (),
        members: Mapping[str, msgspec.Raw] | None = None,
    ) -> None:
        self._forget(key)
        if len(data) > self._cache_limit // 4:
            return
        self._versions[key] = _Held(data, token, time.monotonic(), parts, members)
        self._versions_bytes += len(data)
        while self._versions_bytes > self._cache_limit:
            _, dropped = self._versions.popitem(last=False)
            self._versions_bytes -= len(dropped.data)

    def _remember_written(self, key: str, data: bytes | None, token: bytes) -> None:
        if data is None:
            self._forget(key)
        else:
            self._remember(key, data, token)

    def _forget(self, key: str) -> None:
        old = self._versions.pop(key, None)
        if old is not None:
            self._versions_bytes -= len(old.data)

    def _io_error(
        self, exc: BaseException, action: str, key: str | None = None, *, doubt: bool = False
    ) -> StoreIOError:
        if isinstance(exc, StoreIOError):
            return exc
        what = f"{action} failed" + (f" for session {key!r}" if key is not None else "")
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        message = f"{what}: Redis server {self._server}: {reason}"
        if doubt:
            message += " (in doubt: whether it reached the server is asked on the next attempt)"
        error = StoreIOError(None, message, key=key, where=self._server)
        error.__cause__ = exc
        return error

    def __repr__(self) -> str:
        return f"<RedisBackend {self.location()}>"


def _require_asyncio() -> None:
    """Refuse an event loop that is neither asyncio nor trio, saying why."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "the Redis backend runs on asyncio, or on trio through an asyncio loop in a thread "
            "of its own; this event loop is neither"
        ) from None


def _same(a: Write, b: Write) -> bool:
    return a.blind == b.blind and a.data == b.data and a.expected == b.expected


def _lex_bounds(prefix: str) -> tuple[bytes, bytes]:
    if not prefix:
        return b"-", b"+"
    raw = prefix.encode()
    # No UTF-8 text holds the byte 0xff, so every key starting with `raw` sorts below this.
    return b"[" + raw, b"(" + raw + b"\xff"


def _decodes(client: Any) -> bool:
    if isinstance(client, RedisCluster):
        return bool(client.get_encoder().decode_responses)
    return bool(client.connection_pool.connection_kwargs.get("decode_responses", False))


def _int_option(options: Mapping[str, str], name: str) -> int | None:
    if name not in options:
        return None
    try:
        return int(options[name])
    except ValueError:
        raise ValueError(f"{name} must be an integer, not {options[name]!r}") from None


def _client_defaults(url: str, client_options: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """Options for a client we make, and whether the backend bounds each reply itself.

    A dead server fails calls within seconds: redis-py retries (safe: reads, and batches
    whose receipt makes a second run a no-op), connects within 3 s, and a reply is waited
    for at most REPLY_TIMEOUT. redis-py's ``socket_timeout`` enforces that on sending with
    ``asyncio.wait_for``, which before Python 3.12 makes a task per command (a quarter of a
    read's client CPU here); so unless ``socket_timeout`` is asked for, on 3.11 and later the
    backend bounds each call itself (see ``RedisBackend._io``).
    """
    given = {name for name, _ in parse_qsl(urlsplit(url).query)} | set(client_options)
    options: dict[str, Any] = {
        "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 3),
    }
    if "socket_connect_timeout" not in given:
        options["socket_connect_timeout"] = 3.0
    own_timeout = "socket_timeout" not in given and sys.version_info >= (3, 11)
    if "socket_timeout" not in given:
        # None: redis-py's own default (5 s since redis-py 6) would bring wait_for back.
        options["socket_timeout"] = None if own_timeout else REPLY_TIMEOUT
    options.update(client_options)
    return options, own_timeout


def _hide_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
