"""``SessionStore``: the public API over a backend and its write-behind queue."""

from __future__ import annotations

import importlib
import inspect
import os
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from types import TracebackType
from typing import Any, Generic, TypedDict, TypeVar, Union, overload

import anyio
import anyio.abc
import anyio.lowlevel

from ._defaults import (
    DEFAULT_CACHE_BYTES,
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_MAX_ENTRY_BYTES,
    DEFAULT_MAX_PENDING_BYTES,
    DEFAULT_MAX_PENDING_KEYS,
    DEFAULT_TMP_MAX_AGE,
)
from ._entry import DECODE_ERRORS, Codec, SessionEntry, codec_for, recency_of
from ._errors import CorruptSessionError, StoreClosedError
from ._fs import FileSystem
from ._keys import validate_key
from ._layout import StorePaths
from ._locks import KeyLocks
from ._writebehind import StoreStatistics, WriteBehind
from .backends import Backend
from .backends._files import file_backend

__all__ = ["SessionStore", "open_store"]

T = TypeVar("T")

#: URL schemes opened by the Redis backend (``pip install "aiosessions[redis]"``).
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class SessionStore(Generic[T]):
    """Sessions by key: read, set, update and delete them from async code.

    Made by :func:`open_store`; see there for the options. Reads see this
    process's changes at once and another process's flushed changes on the next
    read. Changes are queued and written in batches by a background flusher.
    """

    def __init__(
        self,
        backend: Backend,
        codec: Codec[T],
        *,
        flush_interval: float,
        fsync: bool,
        max_pending_keys: int,
        max_pending_bytes: int,
    ) -> None:
        self._backend = backend
        self._codec = codec
        self._locks = KeyLocks()
        self._queue = WriteBehind(
            backend,
            self._rebase,
            flush_interval=flush_interval,
            durable=fsync,
            max_pending_keys=max_pending_keys,
            max_pending_bytes=max_pending_bytes,
            batch_size=backend.batch_size or max_pending_keys,
        )
        self._closed = False
        self._opened = False
        self._background: anyio.CancelScope | None = None
        self._background_done = anyio.Event()

    # -- properties ------------------------------------------------------------------

    @property
    def mode(self) -> str:
        """The backend's kind: ``"directory"`` (one folder per session), ``"json"`` (the legacy file) ..."""
        return self._backend.mode

    @property
    def path(self) -> str:
        """Where the sessions live: the ``<stem>.d`` folder, the legacy JSON file, a server."""
        return self._backend.location()

    @property
    def backend(self) -> Backend:
        """The backend holding the entries."""
        return self._backend

    @property
    def entry_type(self) -> type[T]:
        """The type entries decode to (``SessionEntry``, your Struct, or ``dict``)."""
        return self._codec.entry_type

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has begun."""
        return self._closed

    # -- reads -----------------------------------------------------------------------

    async def get(self, key: str) -> T | None:
        """Return the entry of ``key``, or None if there is none.

        :raises InvalidKeyError: ``key`` is not a valid key.
        :raises CorruptSessionError: the stored entry does not decode (this key only).
        :raises StoreIOError: the disk failed.
        """
        data = await self._stored(key)
        return None if data is None else self._decode(key, data)

    async def updated_at(self, key: str) -> int | None:
        """Return the ``updatedAt`` (epoch ms) of ``key``; None if absent or not an integer.

        Decodes only that member of the one entry.
        """
        data = await self._stored(key)
        if data is None:
            return None
        try:
            return recency_of(data)
        except DECODE_ERRORS as exc:
            raise self._corrupt(key, exc) from exc

    async def contains(self, key: str) -> bool:
        """Whether ``key`` has an entry (without decoding it)."""
        pending = await self._begin_read(key)
        if pending is not None:
            return pending[0] is not None
        return await self._backend.exists(key)

    async def _begin_read(self, key: str) -> tuple[bytes | None] | None:
        """The start of every read: a checkpoint, the checks, and the key's pending state.

        A checkpoint even when the answer is in memory (trio's rule for every async
        call): a task reading cached entries in a loop must still let others run.
        """
        await anyio.lowlevel.checkpoint()
        self._check_open()
        validate_key(key)
        return self._queue.pending(key)

    async def _stored(self, key: str) -> bytes | None:
        """The bytes of ``key`` as this process sees them: pending, else on disk."""
        pending = await self._begin_read(key)
        return pending[0] if pending is not None else await self._backend.read(key)

    async def keys(self) -> AsyncIterator[str]:
        """Every key, in no particular order, listed from disk a chunk at a time.

        Entries are not read. Changes made while iterating may or may not be seen.
        """
        self._check_open()
        pending = self._queue.pending_keys()
        async for chunk in self._backend.key_chunks():
            for key in chunk:
                exists = pending.pop(key, None)
                if exists is None:
                    # Not pending when we began; it may have become a pending delete since.
                    now = self._queue.pending(key)
                    if now is None or now[0] is not None:
                        yield key
                elif exists:
                    yield key
        for key, exists in pending.items():
            if exists:
                yield key

    async def items(self, *, skip_corrupt: bool = False) -> AsyncIterator[tuple[str, T]]:
        """Every ``(key, entry)``, reading entries a chunk at a time (one thread hop per chunk).

        :param skip_corrupt: leave out entries that do not decode instead of raising
            :class:`CorruptSessionError`.
        """
        chunk: list[str] = []
        async for key in self.keys():
            chunk.append(key)
            if len(chunk) >= 256:
                async for item in self._read_chunk(chunk, skip_corrupt):
                    yield item
                chunk = []
        async for item in self._read_chunk(chunk, skip_corrupt):
            yield item

    async def _read_chunk(self, keys: list[str], skip_corrupt: bool) -> AsyncIterator[tuple[str, T]]:
        if not keys:
            return
        clean = [key for key in keys if self._queue.pending(key) is None]
        stored = dict(zip(clean, await self._backend.read_many(clean), strict=True)) if clean else {}
        for key in keys:
            pending = self._queue.pending(key)
            data = pending[0] if pending is not None else stored.get(key)
            if isinstance(data, BaseException):
                if skip_corrupt and isinstance(data, CorruptSessionError):
                    continue
                raise data
            if data is None:
                continue
            try:
                yield key, self._decode(key, data)
            except CorruptSessionError:
                if not skip_corrupt:
                    raise

    # -- writes ----------------------------------------------------------------------

    async def set(self, key: str, entry: T, *, durable: bool = False) -> None:
        """Make ``entry`` the entry of ``key`` (last writer wins).

        Returns once the change is visible to this process and queued; with
        ``durable=True`` (or ``flush_interval=0``), once it is on disk.

        :raises TypeError: ``entry`` is not of the store's entry type.
        :raises StoreIOError: with ``durable``, the write failed (it stays queued).
        """
        self._check_open()
        validate_key(key)
        data = self._codec.encode(entry)
        async with self._locks.hold(key):
            await self._queue.wait_for_room(key)
            self._check_open()
            seq = self._queue.put(key, data)
        await self._settle(key, seq, durable)

    async def update(
        self, key: str, fn: Callable[[T | None], T | None], *, durable: bool = False
    ) -> T | None:
        """Apply ``fn`` to the entry of ``key`` (None if absent) and store its result.

        ``fn`` returns the new entry, or None to delete it. It runs with the key
        locked, so concurrent updates in this process never interleave. If
        another process changes the key before this change is written, ``fn`` is
        applied again to that process's value before writing (so no update is
        lost); keep ``fn`` free of side effects. Returns ``fn``'s result.
        """
        self._check_open()
        validate_key(key)
        async with self._locks.hold(key):
            while True:
                await self._queue.wait_for_room(key)
                self._check_open()
                pending = self._queue.pending(key)
                if pending is not None:
                    stored, base = pending[0], None
                    break
                # The stored bytes are the compare-and-swap base of this change.
                stored = base = await self._backend.read(key)
                self._check_open()
                # Other writers may have filled the queue during the read: queue only
                # with room, so the bounds hold however many updates run at once.
                if self._queue.has_room(key):
                    break
            current = None if stored is None else self._decode(key, stored)
            result = fn(current)
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()  # no "coroutine ... was never awaited" warning on top
                raise TypeError("update() takes a plain function, not a coroutine function")
            data = None if result is None else self._codec.encode(result)
            seq = self._queue.put(key, data, fn=fn, base=base)
        await self._settle(key, seq, durable)
        return result

    async def delete(self, key: str, *, durable: bool = False) -> bool:
        """Delete the entry of ``key``; return whether there was one."""
        self._check_open()
        validate_key(key)
        async with self._locks.hold(key):
            pending = self._queue.pending(key)
            existed = pending[0] is not None if pending is not None else await self._backend.exists(key)
            if not existed:
                return False
            await self._queue.wait_for_room(key)
            self._check_open()
            seq = self._queue.put(key, None)
        await self._settle(key, seq, durable)
        return True

    async def _settle(self, key: str, seq: int, durable: bool) -> None:
        if durable or self._queue.write_through:
            await self._queue.wait_landed(key, seq)

    def _rebase(self, key: str, current: bytes | None, fns: list[Callable[[Any], Any]]) -> bytes | None:
        """Re-apply pending update functions to another process's newer value."""
        value: Any = None if current is None else self._decode(key, current)
        for fn in fns:
            value = fn(value)
        return None if value is None else self._codec.encode(value)

    # -- lifecycle -------------------------------------------------------------------

    async def flush(self) -> None:
        """Return once every change accepted before the call is on disk.

        :raises FlushError: some changes could not be written; they stay queued
            and are retried.
        """
        self._check_open()
        await self._queue.flush()

    def statistics(self) -> StoreStatistics:
        """Counters of the write-behind queue: pending, writes, coalesced, flushes, failures ..."""
        return self._queue.statistics(swept=self._backend.counters().get("swept", 0))

    async def aclose(self, *, timeout: float = DEFAULT_CLOSE_TIMEOUT) -> None:
        """Flush what is queued (for at most ``timeout`` seconds), stop the flusher, close files.

        Idempotent. Cancelling the caller does not interrupt the final flush.

        :raises FlushError: changes could not be written; the message says how many.
        """
        if self._closed:
            return
        self._closed = True
        error: BaseException | None = None
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(timeout):
                try:
                    await self._queue.flush()
                except Exception as exc:
                    error = exc
            # The background tasks must be over before the descriptors they use are
            # closed: a closed descriptor number may be reused by an unrelated open.
            if self._background is not None:
                self._background.cancel()
                await self._background_done.wait()
            await self._backend.aclose()
        unwritten = self._queue.close_error(timeout=timeout, timed_out=error is None)
        if unwritten is not None:
            raise unwritten from error
        if error is not None:
            raise error

    async def _run_background(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The flusher and the orphan sweep, under one scope that :meth:`aclose` cancels."""
        try:
            with anyio.CancelScope() as scope:
                self._background = scope
                async with anyio.create_task_group() as tasks:
                    await tasks.start(self._queue.run)
                    tasks.start_soon(self._backend.maintain)
                    task_status.started()
        finally:
            self._background_done.set()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"the store {self.path} is closed")

    def _decode(self, key: str, data: bytes) -> T:
        try:
            return self._codec.decode(data)
        except DECODE_ERRORS as exc:
            raise self._corrupt(key, exc) from exc

    def _corrupt(self, key: str, exc: Exception) -> CorruptSessionError:
        where = self._backend.location(key)
        return CorruptSessionError(
            f"session {key!r} in {where} is not a valid entry: {exc} "
            "(other sessions are unaffected; `aiosessions fsck --repair` quarantines it)",
            where=where,
            key=key,
        )

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if self._opened and not self._closed:
            _warn(f"unclosed session store {self.path}", ResourceWarning, source=self, stacklevel=1)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<SessionStore {self.mode} {self.path!r} {state}>"


class _StoreContext(Generic[T]):
    """What :func:`open_store` returns: ``async with`` it to get the store."""

    def __init__(
        self, make_backend: Callable[[], Awaitable[Backend]], codec: Codec[T], options: _StoreOptions
    ) -> None:
        self._make_backend = make_backend
        self._codec = codec
        self._options = options
        self._store: SessionStore[T] | None = None
        self._task_group: anyio.abc.TaskGroup | None = None

    def __await__(self) -> Generator[Any, None, None]:
        raise TypeError(
            "open_store() is an async context manager: use `async with open_store(...) as store:`"
        )

    async def __aenter__(self) -> SessionStore[T]:
        if self._store is not None:
            raise RuntimeError("this open_store() context is already in use")
        backend = await self._make_backend()
        store = SessionStore(backend, self._codec, **self._options)
        try:
            await backend.open()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await backend.aclose()  # a failed open (say, a corrupt file) keeps no descriptor
            raise
        store._opened = True
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        try:
            await task_group.start(store._run_background)
        except BaseException:
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(None, None, None)
            await backend.aclose()
            raise
        self._store, self._task_group = store, task_group
        return store

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._store is not None and self._task_group is not None
        try:
            await self._store.aclose()
        finally:
            self._task_group.cancel_scope.cancel()
            await self._task_group.__aexit__(None, None, None)


class _StoreOptions(TypedDict):
    flush_interval: float
    fsync: bool
    max_pending_keys: int
    max_pending_bytes: int


Target = Union[str, "os.PathLike[str]", Backend]


@overload
def open_store(
    target: Target,
    *,
    flush_interval: float = DEFAULT_FLUSH_INTERVAL,
    fsync: bool = True,
    max_pending_keys: int = DEFAULT_MAX_PENDING_KEYS,
    max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
    max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
    mode: str | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    tmp_max_age: float = DEFAULT_TMP_MAX_AGE,
    filesystem: FileSystem | None = None,
) -> _StoreContext[SessionEntry]: ...
@overload
def open_store(
    target: Target,
    *,
    entry_type: type[T],
    flush_interval: float = DEFAULT_FLUSH_INTERVAL,
    fsync: bool = True,
    max_pending_keys: int = DEFAULT_MAX_PENDING_KEYS,
    max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
    max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
    mode: str | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    tmp_max_age: float = DEFAULT_TMP_MAX_AGE,
    filesystem: FileSystem | None = None,
) -> _StoreContext[T]: ...
def open_store(
    target: Target,
    *,
    entry_type: type[Any] = SessionEntry,
    flush_interval: float = DEFAULT_FLUSH_INTERVAL,
    fsync: bool = True,
    max_pending_keys: int = DEFAULT_MAX_PENDING_KEYS,
    max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
    max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
    mode: str | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    tmp_max_age: float = DEFAULT_TMP_MAX_AGE,
    filesystem: FileSystem | None = None,
) -> _StoreContext[Any]:
    """Open a session store; use as ``async with open_store(target) as store:``.

    ``target`` is where the sessions live:

    * a path naming the store file, ``X/sessions.json``: a directory store lives
      in ``X/sessions.d/``. An existing directory store (with its FORMAT marker)
      opens in directory mode, else an existing ``sessions.json`` in legacy JSON
      mode, else a new directory store is made;
    * a ``redis://``, ``rediss://`` or ``unix://`` URL: the Redis backend
      (``pip install "aiosessions[redis]"``);
    * any object implementing :class:`aiosessions.backends.Backend`, built with
      its own options (say ``DirectoryBackend(path, lock_timeout=5)``).

    :param entry_type: what entries decode to: :class:`SessionEntry` (default),
        a subclass of :class:`Entry` or any ``msgspec.Struct``, or ``dict``.
    :param flush_interval: seconds a change may wait in memory before its batch
        is written; 0 writes through (each call returns once stored).
    :param fsync: make every batch durable before it counts as flushed (files:
        fsync of files and folders; see the backend for what it means there).
    :param max_pending_keys: writers wait while this many keys are unwritten.
    :param max_pending_bytes: writers wait while this many bytes are unwritten.
    :param max_entry_bytes: the largest entry stored or read back.
    :param mode: file stores only: ``"directory"`` or ``"json"`` to insist on one
        kind (``"json"`` makes a new legacy file); None detects it.
    :param lock_timeout: file stores only: seconds to wait for another process's
        lock before :class:`LockTimeoutError`.
    :param cache_bytes: file stores only: bytes of recently used entries kept to
        answer reads after one ``stat`` (their freshness is checked on every read).
    :param tmp_max_age: file stores only: tmp files older than this (seconds) are
        orphans, swept in the background after open.
    :param filesystem: file stores only: the :class:`FileSystem` doing every
        blocking call (tests pass one that injects faults).
    :raises StoreFormatError: ``mode`` contradicts what is on disk, or the
        FORMAT marker is of another version.
    :raises TypeError: file-store options given with a URL or a backend object.
    """
    if flush_interval < 0 or not (flush_interval < float("inf")):
        raise ValueError(f"flush_interval must be >= 0 and finite, not {flush_interval!r}")
    for name, value in (
        ("max_pending_keys", max_pending_keys),
        ("max_pending_bytes", max_pending_bytes),
        ("max_entry_bytes", max_entry_bytes),
    ):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, not {value!r}")
    if mode not in (None, "directory", "json"):
        raise ValueError(f"mode must be 'directory', 'json' or None, not {mode!r}")
    codec = codec_for(entry_type)
    options = _StoreOptions(
        flush_interval=flush_interval,
        fsync=fsync,
        max_pending_keys=max_pending_keys,
        max_pending_bytes=max_pending_bytes,
    )
    make_backend: Callable[[], Awaitable[Backend]]
    is_path = isinstance(target, os.PathLike) or (
        isinstance(target, str) and not target.startswith(REDIS_SCHEMES)
    )
    if not is_path:
        _refuse_file_options(
            mode=mode,
            lock_timeout=lock_timeout,
            cache_bytes=cache_bytes,
            tmp_max_age=tmp_max_age,
            filesystem=filesystem,
        )
    if isinstance(target, str) and not is_path:
        url = target

        async def make_backend() -> Backend:
            return _redis_backend(url)

    elif isinstance(target, (str, os.PathLike)):
        paths = StorePaths.of(target)
        fs = filesystem if filesystem is not None else FileSystem()

        async def make_backend() -> Backend:
            return await file_backend(
                paths,
                fs,
                mode,
                lock_timeout=lock_timeout,
                max_entry_bytes=max_entry_bytes,
                cache_bytes=cache_bytes,
                tmp_max_age=tmp_max_age,
            )

    else:
        backend = target

        async def make_backend() -> Backend:
            return backend

    return _StoreContext(make_backend, codec, options)


def _refuse_file_options(**given: object) -> None:
    """File-store options make no sense for a URL or a backend object: say so, not ignore them."""
    defaults: dict[str, object] = {
        "mode": None,
        "lock_timeout": DEFAULT_LOCK_TIMEOUT,
        "cache_bytes": DEFAULT_CACHE_BYTES,
        "tmp_max_age": DEFAULT_TMP_MAX_AGE,
        "filesystem": None,
    }
    wrong = sorted(name for name, value in given.items() if value != defaults[name])
    if wrong:
        raise TypeError(
            f"{', '.join(wrong)}: options of file stores; a URL or a backend object takes its own "
            "options (pass them to the backend's constructor)"
        )


def _redis_backend(url: str) -> Backend:
    """The Redis backend for ``url``, imported only now: ``import aiosessions`` needs no redis."""
    try:
        module = importlib.import_module("aiosessions.backends._redis")
    except ImportError as exc:
        raise ImportError(
            f'opening {url.split("@")[-1]!r} needs the Redis backend: pip install "aiosessions[redis]"'
        ) from exc
    backend: Backend = module.RedisBackend.from_url(url)
    return backend
