"""``SessionStore``: the public API over a backend and its write-behind queue."""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Generator, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Generic, TypedDict, TypeVar, Union, overload

import anyio
import anyio.abc
import anyio.lowlevel

from . import _members as members
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
from ._entry import DECODE_ERRORS, Codec, SessionEntry, codec_for, recency_of, storable
from ._errors import CorruptSessionError, InvalidEntryError, StoreClosedError
from ._fs import FileSystem
from ._keys import validate_key
from ._layout import StorePaths
from ._locks import KeyLocks
from ._recency import PendingRecency, check_limit, merge_pending, position_of
from ._targets import is_redis_url, redis_backend
from ._writebehind import State, StoreStatistics, WriteBehind
from .backends import Backend
from .backends._files import file_backend

__all__ = ["DELETE", "SessionStore", "open_store"]

T = TypeVar("T")


class _Delete:
    """The type of :data:`DELETE`."""

    _instance: _Delete | None = None

    def __new__(cls) -> _Delete:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "aiosessions.DELETE"

    def __reduce__(self) -> str:
        return "DELETE"


#: Returned by an :meth:`SessionStore.update` function to delete the session.
DELETE: Final = _Delete()

#: Only the openers make stores: a store needs its background flusher to be started.
_OPENER = object()


class SessionStore(Generic[T]):
    """Sessions by key: read, set, update and delete them from async code.

    Made by :func:`open_store` (never directly); see there for the options. Reads
    see this process's changes at once and another process's flushed changes on
    the next read. Changes are queued and written in batches by a background
    flusher; :meth:`aclose` writes what is left.
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
        max_entry_bytes: int,
        _opener: object = None,
    ) -> None:
        if _opener is not _OPENER:
            raise TypeError(
                "a SessionStore is made by open_store(): `async with open_store(path) as store:` "
                "or `store = await open_store(path)`"
            )
        self._backend = backend
        #: Where an update's compare-and-swap base comes from: the backend's optional
        #: ``read_base`` (bytes it knows already, checked by the write), else a read.
        self._read_base: Callable[[str], Awaitable[bytes | None]]
        self._read_base = getattr(backend, "read_base", backend.read)
        self._codec = codec
        self._max_entry_bytes = max_entry_bytes
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
        #: The recency of pending changes, decoded once per value (for newest()).
        self._pending_recency = PendingRecency()
        #: The members of entries last changed by update_members (to skip splitting them again).
        self._member_splits = members.MemberSplits(known=getattr(backend, "members_of", None))
        self._closed = False
        # Reached its caller (who must close it): an unclosed store then warns.
        self._opened = False
        # The background tasks (flusher, upkeep) start at the first write, not at open:
        # opening a store to read it then costs no task. How to start them (set by the
        # opener), the start in progress, whether they run, their scope, and their end.
        self._start: Callable[[], Awaitable[None]] | None = None
        self._starting: anyio.Event | None = None
        self._started = False
        self._background: anyio.CancelScope | None = None
        self._background_done = anyio.Event()
        # Calls using the backend right now: its files close only once they are done.
        self._users = 0
        self._idle: anyio.Event | None = None
        # Set when a close could not wait for a stuck call: the last one out closes.
        self._close_backend_later = False
        self._close_done: anyio.Event | None = None
        self._close_error: BaseException | None = None

    # -- properties ------------------------------------------------------------------

    @property
    def mode(self) -> str:
        """The backend's kind: ``"directory"``, ``"json"`` (the legacy file), ``"redis"`` ..."""
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
        :raises StoreIOError: the storage failed.
        :raises StoreClosedError: the store is closed.
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
        self._enter()
        try:
            return await self._backend.exists(key)
        finally:
            await self._leave()

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
        """The bytes of ``key`` as this process sees them: pending, else stored."""
        pending = await self._begin_read(key)
        return pending[0] if pending is not None else await self._read(key)

    async def _read(self, key: str, *, base: bool = False) -> bytes | None:
        self._enter()
        try:
            return await (self._read_base if base else self._backend.read)(key)
        finally:
            await self._leave()

    async def newest(
        self, limit: int, *, after: tuple[str, int | None] | None = None
    ) -> list[tuple[str, int | None]]:
        """The ``limit`` most recently updated sessions as ``(key, updated_at)`` pairs, newest first.

        Sorted by ``updatedAt`` (epoch ms), highest first, ties by key; sessions without
        an integer ``updatedAt`` come last with None. Exact: this process's unwritten
        changes and every other process's written ones are in it. Entries are not read:
        the backend keeps an index. A session that changes between pages may be missed or
        seen twice.

        :param limit: the most pairs to return.
        :param after: the last pair of the previous page, to page on from there (None: from
            the newest).
        :raises ValueError: ``limit`` is negative.
        :raises TypeError: ``limit`` is not an int, or ``after`` not such a pair.
        """
        await anyio.lowlevel.checkpoint()
        self._check_open()
        check_limit(limit)
        start = position_of(after)
        changed = self._queue.pending_keys()
        pending = {
            key: self._pending_recency.of(key, data)
            for key, exists in changed.items()
            if exists and (data := self._pending_bytes(key)) is not None
        }
        if len(self._pending_recency) > 2 * len(changed) + 256:
            self._pending_recency.forget_all_but(changed)
        stored: list[tuple[str, int | None]] = []
        if limit:
            self._enter()
            try:
                stored = await self._backend.newest(limit + len(changed), after=after)
            finally:
                await self._leave()
        return merge_pending(stored, pending, changed, limit=limit, start=start)

    async def count(self) -> int:
        """How many sessions there are (this process's unwritten changes included), without reading them."""
        await anyio.lowlevel.checkpoint()
        self._check_open()
        changed = self._queue.pending_keys()
        keys = list(changed)
        self._enter()
        try:
            total = await self._backend.count()
            # Whether each changed key is stored decides what its pending state adds.
            stored = await self._backend.read_many(keys) if keys else []
        finally:
            await self._leave()
        if keys:
            for key, found in zip(keys, stored, strict=True):
                if isinstance(found, CorruptSessionError):
                    found = b""  # stored, if unreadable
                elif isinstance(found, BaseException):
                    raise found
                now = self._queue.pending(key)
                exists = changed[key] if now is None else now[0] is not None
                total += exists - (found is not None)
        return total

    def _pending_bytes(self, key: str) -> bytes | None:
        pending = self._queue.pending(key)
        return None if pending is None else pending[0]

    async def keys(self, prefix: str = "") -> AsyncIterator[str]:
        """Every key (starting with ``prefix``), listed a chunk at a time; entries are not read.

        The order is the backend's (the directory store lists keys in order). Changes
        made while iterating may or may not be seen.

        :param prefix: only keys starting with it (``""``: all); the cost grows with the
            keys that match, not with the store.
        :raises StoreClosedError: the store was closed (also while iterating).
        """
        self._check_open()
        pending = self._queue.pending_keys()
        if prefix:
            pending = {key: exists for key, exists in pending.items() if key.startswith(prefix)}
        chunks = self._backend.key_chunks(prefix)
        try:
            while True:
                await anyio.lowlevel.checkpoint()  # every chunk, even one answered from memory
                self._enter()
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                finally:
                    await self._leave()
                for key in chunk:
                    exists = pending.pop(key, None)
                    if exists is None:
                        # Not pending when we began; it may have become a pending delete since.
                        now = self._queue.pending(key)
                        if now is None or now[0] is not None:
                            yield key
                    elif exists:
                        yield key
        finally:
            # A consumer that stops early (or is cancelled) closes the backend's listing
            # now, not whenever the garbage collector finds it (trio warns about that).
            close = getattr(chunks, "aclose", None)
            if close is not None:
                await close()
        for key, exists in pending.items():
            if exists:
                yield key

    async def items(self, prefix: str = "", *, skip_corrupt: bool = False) -> AsyncIterator[tuple[str, T]]:
        """Every ``(key, entry)`` (whose key starts with ``prefix``), reading entries a chunk at a time.

        :param prefix: only keys starting with it (``""``: all), as :meth:`keys`.
        :param skip_corrupt: leave out entries that do not decode instead of raising
            :class:`CorruptSessionError`.
        """
        chunk: list[str] = []
        async for key in self.keys(prefix):
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
        stored: dict[str, bytes | BaseException | None] = {}
        if clean:
            self._enter()
            try:
                stored = dict(zip(clean, await self._backend.read_many(clean), strict=True))
            finally:
                await self._leave()
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
        ``durable=True`` (or ``flush_interval=0``), once it is stored.

        :param durable: return only once this change is on disk (and fsynced, with
            ``fsync=True``), however long the store's ``flush_interval``.
        :raises TypeError: ``entry`` is not of the store's entry type.
        :raises InvalidEntryError: the entry could not be read back (too large, nested
            too deep); nothing is written.
        :raises StoreIOError: with ``durable``, the write failed (it stays queued).
        """
        self._check_open()
        validate_key(key)
        data = self._encode(key, entry)
        if not self._started:
            await self._start_background()
        async with self._locks.hold(key):
            await self._queue.wait_for_room(key)
            self._check_open()
            seq = self._queue.put(key, data)
        await self._settle(key, seq, durable)

    async def update(
        self, key: str, fn: Callable[[T | None], T | _Delete], *, durable: bool = False
    ) -> T | None:
        """Apply ``fn`` to the entry of ``key`` (None if absent) and store its result.

        ``fn`` returns the new entry, or :data:`aiosessions.DELETE` to delete the
        session (returning None is a :class:`TypeError`: a function that changes the
        entry in place and forgets ``return`` must not delete it). ``fn`` runs with
        the key locked, so concurrent updates in this process never interleave. If
        another process changes the key before this change is written, ``fn`` is
        applied again to that process's value before writing (so no update is
        lost); keep ``fn`` free of side effects. Returns the new entry (None when
        deleted).

        :param durable: return only once this change is on disk, as for :meth:`set`.
        :raises TypeError: ``fn`` returned None, or is a coroutine function.
        :raises InvalidEntryError: the new entry could not be read back; nothing changes.
        """
        self._check_open()
        validate_key(key)
        if not self._started:
            await self._start_background()
        async with self._locks.hold(key):
            state, base = await self._state_with_room(key, durable)
            stored = state.data if isinstance(state, members.Unjoined) else state
            current = None if stored is None else self._decode(key, stored)
            result = fn(current)
            data = self._encode_result(key, result)
            seq = self._queue.put(key, data, fn=fn, base=base)
        await self._settle(key, seq, durable)
        return None if isinstance(result, _Delete) else result

    async def update_members(
        self,
        key: str,
        names: Collection[str],
        fn: Callable[[dict[str, Any] | None], Mapping[str, Any] | _Delete],
        *,
        durable: bool = False,
    ) -> Mapping[str, Any] | None:
        """Apply ``fn`` to some top-level members of the entry of ``key``; leave the rest unread.

        For sessions carrying large, rarely changing members (embedded prompts, skills
        snapshots) beside the few that change with every message: ``fn`` receives the
        members named in ``names`` (JSON names, such as ``updatedAt``), decoded, in a
        ``dict`` of those the entry has (None if there is no session), and returns their
        new values (a named member it leaves out is removed) or
        :data:`aiosessions.DELETE`. Every other member keeps its bytes and its place, so
        the call costs what the named members cost, not what the entry does. Otherwise
        as :meth:`update`: ``fn`` runs with the key locked, and if another process changes
        the key before this change is written, ``fn`` is applied again to the members of
        that process's value (keep it free of side effects). Returns what ``fn`` returned
        (None when deleted).

        :param names: the members ``fn`` reads and writes, e.g. ``("updatedAt", "totalTokens")``.
        :param durable: return only once this change is on disk, as for :meth:`set`.
        :raises TypeError: ``fn`` returned neither a mapping nor DELETE, or a member not named.
        :raises InvalidEntryError: the new entry could not be read back (too large, nested too
            deep, or not an entry of the store's type); nothing changes.
        """
        self._check_open()
        validate_key(key)
        if isinstance(names, str):
            raise TypeError(f"names is a collection of member names, not one name: names=[{names!r}]")
        names = tuple(dict.fromkeys(names))
        if not self._started:
            await self._start_background()
        async with self._locks.hold(key):
            state, base = await self._state_with_room(key, durable)
            if isinstance(state, members.Unjoined):
                split: members.Split | None = state.members  # a pending change by member
            else:
                split = None if state is None else self._members_of(key, state)
            result = fn(members.current(split, names))
            entry = self._join_members(key, names, split, result)
            update = self._whole_entry_update(key, names, fn)
            seq = self._queue.put(key, entry, fn=update, base=base)
            if entry is not None:
                self._member_splits.remember(key, entry)
        await self._settle(key, seq, durable)
        return None if isinstance(result, _Delete) else result

    async def delete(self, key: str, *, durable: bool = False) -> bool:
        """Delete the entry of ``key``; return whether there was one.

        :param durable: return only once the deletion is on disk, as for :meth:`set`.
        """
        self._check_open()
        validate_key(key)
        if not self._started:
            await self._start_background()
        async with self._locks.hold(key):
            pending = self._queue.pending(key)
            if pending is not None:
                existed = pending[0] is not None
            else:
                self._enter()
                try:
                    existed = await self._backend.exists(key)
                finally:
                    await self._leave()
            if not existed:
                return False
            await self._queue.wait_for_room(key)
            self._check_open()
            seq = self._queue.put(key, None)
        await self._settle(key, seq, durable)
        return True

    async def _state_with_room(self, key: str, durable: bool) -> tuple[State, bytes | None]:
        """The state a change of ``key`` starts from (a pending change by member left
        unjoined), and its compare-and-swap base (None when ``key`` is pending), once the
        queue has room for it. Called with the key locked."""
        while True:
            await self._queue.wait_for_room(key)
            self._check_open()
            pending = self._queue.pending_state(key)
            if pending is not None:
                return pending[0], None
            # The stored bytes are the compare-and-swap base of this change. A backend may
            # offer bytes it knows already (read_base): the compare-and-swap still checks
            # them. A caller that waits for the write (durable, write-through) reads afresh.
            stored = await self._read(key, base=not (durable or self._queue.write_through))
            self._check_open()
            # Other writers may have filled the queue during the read: queue only
            # with room, so the bounds hold however many updates run at once.
            if self._queue.has_room(key):
                return stored, stored

    def _members_of(self, key: str, data: bytes) -> members.Split:
        try:
            return self._member_splits.of(key, data)
        except DECODE_ERRORS as exc:
            raise self._corrupt(key, exc) from exc

    def _join_members(
        self, key: str, names: tuple[str, ...], split: members.Split | None, result: object
    ) -> members.Unjoined | None:
        """The entry with the members ``result`` gives (None: delete), not joined unless
        checking it needs its bytes."""
        if isinstance(result, _Delete):
            return None
        if not isinstance(result, Mapping):
            if inspect.iscoroutine(result):
                result.close()  # no "coroutine ... was never awaited" warning on top
            what = "None" if result is None else f"a {type(result).__name__}"
            raise TypeError(
                f"the update_members function for {key!r} returned {what}: return a mapping of "
                "the named members' new values (or aiosessions.DELETE); the entry is unchanged"
            )
        stray = [name for name in result if name not in names]
        if stray:
            raise TypeError(
                f"the update_members function for {key!r} returned members it did not name: "
                f"{stray!r} (name them in `names`)"
            )
        entry, fresh = members.changed(split, names, result)
        if entry.size > self._max_entry_bytes:
            problem = storable(entry.data, self._max_entry_bytes)
        else:
            # Only the new values can nest deeper than the entry did (which was read back);
            # in a list they nest one level down, as members of the entry's object do.
            problem = storable(b"[" + b",".join(fresh) + b"]", self._max_entry_bytes)
        if problem is None and not self._codec.decodes_any_object:
            try:
                self._codec.decode(entry.data)
            except DECODE_ERRORS as exc:
                problem = f"it is not a {self._codec.entry_type.__name__}: {exc}"
        if problem is not None:
            raise InvalidEntryError(key, problem)
        return entry

    def _whole_entry_update(
        self, key: str, names: tuple[str, ...], fn: Callable[[dict[str, Any] | None], object]
    ) -> Callable[[T | None], T | _Delete]:
        """``fn`` as an :meth:`update` function, for re-applying it to another writer's value."""

        def update(entry: T | None) -> T | _Delete:
            split = None if entry is None else members.split(self._codec.encode(entry))
            changed = self._join_members(key, names, split, fn(members.current(split, names)))
            return DELETE if changed is None else self._codec.decode(changed.data)

        return update

    async def _settle(self, key: str, seq: int, durable: bool) -> None:
        if durable or self._queue.write_through:
            await self._queue.wait_landed(key, seq)

    def _encode(self, key: str, entry: T) -> bytes:
        """The bytes of ``entry``, refused unless the store can give them back."""
        data = self._codec.encode(entry)
        problem = storable(data, self._max_entry_bytes)
        if problem is not None:
            raise InvalidEntryError(key, problem)
        return data

    def _encode_result(self, key: str, result: object) -> bytes | None:
        """The bytes an update function's result stands for (None: delete)."""
        if isinstance(result, _Delete):
            return None
        if result is None:
            raise TypeError(
                f"the update function for {key!r} returned None: return the new entry "
                "(or aiosessions.DELETE to delete the session); the entry is unchanged"
            )
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()  # no "coroutine ... was never awaited" warning on top
            raise TypeError("update() takes a plain function, not a coroutine function")
        return self._encode(key, result)  # type: ignore[arg-type]

    def _rebase(self, key: str, current: bytes | None, fns: list[Callable[[Any], Any]]) -> bytes | None:
        """Re-apply pending update functions to another process's newer value."""
        value: Any = None if current is None else self._decode(key, current)
        for fn in fns:
            value = fn(value)
            if isinstance(value, _Delete):
                value = None
            elif value is None:
                raise TypeError(f"the update function for {key!r} returned None when re-applied")
        return None if value is None else self._encode(key, value)

    # -- lifecycle -------------------------------------------------------------------

    async def flush(self) -> None:
        """Return once every change accepted before the call is stored.

        :raises FlushError: some changes could not be written; they stay queued
            and are retried.
        """
        self._check_open()
        await self._queue.flush()

    def statistics(self) -> StoreStatistics:
        """Counters of the write-behind queue: pending, writes, coalesced, flushes, failures ..."""
        return self._queue.statistics(backend_counters=self._backend.counters())

    async def aclose(self, *, timeout: float = DEFAULT_CLOSE_TIMEOUT) -> None:
        """Write what is queued, stop the background tasks, close the backend's files.

        May be called from any task, and by several at once: every call returns
        only when the store is closed, and each raises the same error if something
        accepted could not be written (a call after the close is over returns at
        once). Cancelling the caller does not interrupt the final flush.

        :param timeout: seconds to wait for calls in progress and for the final
            flush; when they run out, the store is closed anyway and the error says
            how many changes were not written. One thing is waited for beyond it: a
            batch already being written (closing files under a system call is
            unsafe). A read stuck in a system call (a hung disk or mount) is not
            waited for: the backend's files stay open until it returns.
        :raises FlushError: changes could not be written; the message says how many.
        """
        if self._close_done is not None:
            if not self._close_done.is_set():
                await self._close_done.wait()  # a close in progress: its outcome is ours too
                if self._close_error is not None:
                    raise self._close_error
            return  # closed before this call: its error, if any, was raised to that caller
        self._close_done = anyio.Event()
        try:
            with anyio.CancelScope(shield=True):
                self._close_error = await self._close(timeout)
        finally:
            self._close_done.set()
        if self._close_error is not None:
            raise self._close_error

    async def _close(self, timeout: float) -> BaseException | None:
        """The one close: refuse new calls, let running ones finish, drain, stop, close."""
        self._closed = True
        self._queue.begin_close()
        error: BaseException | None = None
        with anyio.move_on_after(timeout) as waited:
            if self._users:
                self._idle = anyio.Event()
                await self._idle.wait()
            if self._starting is not None:
                await self._starting.wait()  # a start in progress ends first (it is short)
            # Between batches: the flusher never stops inside one (see WriteBehind).
            if self._background is not None:
                self._background.cancel()
            if self._started:
                await self._background_done.wait()
            try:
                await self._queue.drain()
            except Exception as exc:  # the backend failed in a way it should have reported
                error = exc
        self._queue.stop()
        if self._users or (self._started and not self._background_done.is_set()):
            self._close_backend_later = True  # a stuck call: the last one out closes
        else:
            await self._backend.aclose()
        unwritten = self._queue.close_error(timeout=timeout, timed_out=waited.cancelled_caught)
        if unwritten is not None:
            unwritten.__cause__ = error or unwritten.__cause__
            return unwritten
        return error

    def _enter(self) -> None:
        """A call starts using the backend; refused once the store is closing.

        No await between the check and the count: a close that found no users
        waits for none.
        """
        self._check_open()
        self._users += 1

    async def _leave(self) -> None:
        """A call is done with the backend; the last one out after a close finishes it."""
        self._users -= 1
        if self._users == 0:
            if self._idle is not None:
                self._idle.set()
            if self._close_backend_later:
                self._close_backend_later = False
                with anyio.CancelScope(shield=True):
                    await self._backend.aclose()

    async def _start_background(self) -> None:
        """Start the flusher and the backend's upkeep, once (by the first write, or at open).

        Shielded, like opening: started tasks always reach :meth:`aclose`. A start that
        failed raises to its caller and is tried again by the next write.
        """
        while not self._started:
            if self._starting is not None:
                await self._starting.wait()  # another call is starting them
                continue
            self._check_open()  # a closing store starts nothing (no await since the check)
            assert self._start is not None, "stores are made by open_store()"
            self._starting = starting = anyio.Event()
            try:
                with anyio.CancelScope(shield=True):
                    await self._start()
                self._started = True
            finally:
                if not self._started:
                    self._starting = None
                starting.set()

    async def _run_background(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The flusher and the backend's upkeep, under one scope that :meth:`aclose` cancels."""
        try:
            with anyio.CancelScope() as scope:
                self._background = scope
                async with anyio.create_task_group() as tasks:
                    await tasks.start(self._queue.run)
                    tasks.start_soon(self._backend.maintain)
                    task_status.started()
        finally:
            self._background_done.set()
            if self._close_backend_later and not self._users:
                self._close_backend_later = False
                with anyio.CancelScope(shield=True):
                    await self._backend.aclose()

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
        if getattr(self, "_opened", False) and not self._closed:  # False: __init__ refused
            _warn(f"unclosed session store {self.path}", ResourceWarning, source=self, stacklevel=1)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<SessionStore {self.mode} {self.path!r} {state}>"


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def _open(
    make_backend: Callable[[], Awaitable[Backend]],
    codec: Codec[T],
    options: _StoreOptions,
    task_group: anyio.abc.TaskGroup | None,
) -> tuple[SessionStore[T], Callable[[], Awaitable[None]] | None]:
    """Open the backend and make the store; its background tasks start at its first write.

    Where they will run: in ``task_group`` when given; else on asyncio in a task of
    their own that the store owns (so the store may be closed from any task);
    else (trio) in a task group the caller's task enters here and must leave: the
    returned function, to be awaited after ``aclose()`` in the same task. They start
    here already when the backend has upkeep due (a sweep, say).
    """
    backend = await make_backend()
    try:
        await backend.open()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await backend.aclose()  # a failed open (say, a corrupt file) keeps no descriptor
        raise
    store = SessionStore(backend, codec, **options, _opener=_OPENER)
    leave: Callable[[], Awaitable[None]] | None = None
    try:
        if task_group is None and not _on_asyncio():
            # trio: a task group of the caller's task, entered here and left by `leave`.
            own = anyio.create_task_group()
            await own.__aenter__()

            async def leave() -> None:
                own.cancel_scope.cancel()
                await own.__aexit__(None, None, None)

            task_group = own
        if task_group is not None:
            store._start = functools.partial(task_group.start, store._run_background)
        else:
            store._start = functools.partial(_start_own_task, store)
        if backend.upkeep_due():
            await store._start_background()  # shielded: a started store reaches the caller
    except BaseException:
        with anyio.CancelScope(shield=True):
            if leave is not None:
                await leave()
            await backend.aclose()
        raise
    store._opened = True
    return store, leave


async def _start_own_task(store: SessionStore[Any]) -> None:
    """asyncio: run the background tasks in a task the store owns, not the caller's."""
    started = anyio.Event()

    async def host() -> None:
        try:
            async with anyio.create_task_group() as tasks:
                await tasks.start(store._run_background)
                started.set()
        finally:
            started.set()  # also when starting failed: the opener must not wait forever

    task = asyncio.get_running_loop().create_task(host(), name=f"aiosessions {store.path}")
    _HOSTS.add(task)
    task.add_done_callback(_HOSTS.discard)
    await started.wait()
    if task.done():  # it ended while starting: say why (the opener closes the backend)
        error: BaseException | None = None if task.cancelled() else task.exception()
        inner: Sequence[BaseException] = getattr(error, "exceptions", ())
        while len(inner) == 1:  # a task group's wrapping of one error says nothing more
            error = inner[0]
            inner = getattr(error, "exceptions", ())
        raise error or RuntimeError(f"the background tasks of the store {store.path} ended while starting")


#: The asyncio tasks hosting stores' background work: a running task must be referenced.
_HOSTS: set[asyncio.Task[None]] = set()


class _StoreContext(Generic[T]):
    """What :func:`open_store` returns: ``async with`` it, or ``await`` it, to get the store."""

    def __init__(
        self,
        make_backend: Callable[[], Awaitable[Backend]],
        codec: Codec[T],
        options: _StoreOptions,
        task_group: anyio.abc.TaskGroup | None,
    ) -> None:
        self._make_backend = make_backend
        self._codec = codec
        self._options = options
        self._task_group = task_group
        self._store: SessionStore[T] | None = None
        self._leave: Callable[[], Awaitable[None]] | None = None
        self._used = False

    def __await__(self) -> Generator[Any, None, SessionStore[T]]:
        return self._open_for_await().__await__()

    async def _open_for_await(self) -> SessionStore[T]:
        self._claim()
        if self._task_group is None and not _on_asyncio():
            raise RuntimeError(
                "on trio, `store = await open_store(...)` needs the task group its background "
                "tasks run in: open_store(..., task_group=nursery), with a nursery that outlives "
                "the store; or use `async with open_store(...) as store:` in one task"
            )
        store, _ = await _open(self._make_backend, self._codec, self._options, self._task_group)
        return store

    async def __aenter__(self) -> SessionStore[T]:
        self._claim()
        self._store, self._leave = await _open(
            self._make_backend, self._codec, self._options, self._task_group
        )
        return self._store

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._store is not None
        try:
            await self._store.aclose()
        finally:
            if self._leave is not None:
                await self._leave()

    def _claim(self) -> None:
        if self._used:
            raise RuntimeError("this open_store() call was used already: call open_store() again")
        self._used = True

    def __getattr__(self, name: str) -> Any:
        if hasattr(SessionStore, name):
            raise AttributeError(
                f"open_store() returns an opener, not the store: use `async with open_store(...) as "
                f"store:` (or `store = await open_store(...)`), then `store.{name}`"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


class _StoreOptions(TypedDict):
    flush_interval: float
    fsync: bool
    max_pending_keys: int
    max_pending_bytes: int
    max_entry_bytes: int


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
    task_group: anyio.abc.TaskGroup | None = None,
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
    task_group: anyio.abc.TaskGroup | None = None,
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
    task_group: anyio.abc.TaskGroup | None = None,
    mode: str | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    tmp_max_age: float = DEFAULT_TMP_MAX_AGE,
    filesystem: FileSystem | None = None,
) -> _StoreContext[Any]:
    """Open a session store: ``async with open_store(target) as store:``.

    Or ``store = await open_store(target)`` and later ``await store.aclose()``,
    from any task (on trio, with ``task_group=``): the way for startup and
    shutdown hooks. The ``async with`` form may also be left in another task than
    the one that entered it, on asyncio.

    A store opened before ``fork()`` must not be used in the child process: the
    child opens its own.

    ``target`` is where the sessions live:

    * a path naming the store file, ``X/sessions.json``: a directory store lives
      in ``X/sessions.d/``. An existing directory store (with its FORMAT marker)
      opens in directory mode, else an existing ``sessions.json`` in legacy JSON
      mode, else a new directory store is made;
    * a ``redis://``, ``rediss://`` or ``unix://`` URL: the Redis backend
      (``pip install "aiosessions[redis]"``);
    * any object implementing :class:`aiosessions.backends.Backend`, built with
      its own options (say ``DirectoryBackend(path, lock_timeout=5)``).

    :param target: where the sessions live: a path, a URL or a backend object
        (see above).
    :param entry_type: what entries decode to: :class:`SessionEntry` (default),
        a subclass of :class:`Entry` or any ``msgspec.Struct``, or ``dict``.
    :param flush_interval: seconds a change may wait in memory before its batch
        is written; 0 writes through (each call returns once stored).
    :param fsync: make every batch durable before it counts as flushed (files:
        fsync of files and folders; see the backend for what it means there).
    :param max_pending_keys: writers wait while this many keys are unwritten.
    :param max_pending_bytes: writers wait while this many bytes are unwritten.
    :param max_entry_bytes: the largest entry (in JSON bytes) stored or read back;
        a larger one is refused at ``set()``/``update()``.
    :param task_group: the task group the store's background tasks (the flusher,
        upkeep) run in; it must outlive the store. Needed on trio to open the store
        in one task and close it in another (``store = await open_store(...,
        task_group=nursery)``); on asyncio the store runs them in a task of its own.
    :param mode: file stores only: ``"directory"`` or ``"json"`` to insist on one
        kind (``"json"`` makes a new legacy file); None detects it.
    :param lock_timeout: file stores only: seconds to wait for another process's
        lock before :class:`LockTimeoutError`.
    :param cache_bytes: file stores only: bytes of recently used entries kept to
        answer reads after one ``stat`` (their freshness is checked on every read);
        default 64 MiB. A directory store's large members and what it last knew of
        each session have bounds of their own of this size, mostly over the same bytes:
        expect up to about twice this held, never more than three times.
    :param tmp_max_age: file stores only: tmp files (and deleted sessions) older
        than this (seconds) are orphans, swept in the background; a directory store
        is swept when its last sweep is this old, not at every open.
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
        max_entry_bytes=max_entry_bytes,
    )
    make_backend: Callable[[], Awaitable[Backend]]
    is_path = isinstance(target, os.PathLike) or (isinstance(target, str) and not is_redis_url(target))
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
            return redis_backend(url)

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

    return _StoreContext(make_backend, codec, options, task_group)


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
