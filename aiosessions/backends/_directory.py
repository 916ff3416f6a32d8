"""The directory store: one folder per session, ``<stem>.d/<name>/meta.json``.

The layout and its names are ``_layout``'s (and docs/format.md's); this module
reads and writes sessions in it. In format version 2 a large entry's big members
live in blob files beside its ``meta.json`` (``_parts`` splits and joins them,
``_blobs`` remembers them): reads return the whole entry, writes write what changed.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal, TypeVar

import anyio
import msgspec

from .. import _journal
from .._barrier import BarrierMode, BarrierPolicy, syncfs_filesystem
from .._defaults import (
    BASE_TTL,
    DEFAULT_CACHE_BYTES,
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_MAX_ENTRY_BYTES,
    DEFAULT_TMP_MAX_AGE,
)
from .._entry import storable
from .._errors import CorruptSessionError, LockTimeoutError, StoreFormatError, io_error
from .._fs import FileSystem, NotRegularFileError, Signature, TooLargeError, UnsyncedError
from .._journal import HEADER_SIZE, JOURNAL, Entry, Journal, parse
from .._keys import encode_key, is_shortened
from .._layout import (
    FORMAT_FILE,
    FORMAT_MAX_BYTES,
    FORMAT_VERSION,
    KEY_FILE,
    LOCKS,
    META,
    TRASH,
    StorePaths,
    blob_digest,
    blob_name,
    claim_sweep,
    encode_format,
    ensure_store_dirs,
    exists,
    format_version,
    is_real_dir,
    is_session_name,
    read_key_file,
    read_marker,
    remove_tmp_files,
    seconds_to_sweep,
    stripe_name,
    stripe_of,
    sweep_names,
    walk,
)
from .._locks import acquire_file_lock_sync, file_lock, release_file_lock
from .._parts import Pieces, join_members, references, split_members
from .._recency import position_of
from ._base import BatchResult, Write
from ._blobs import Blobs, Known
from ._index import Intent, RecencyIndex
from ._writer import WriterThread

__all__ = ["DirectoryBackend"]

#: Batches of 8 writes or more are split over this many worker threads: fsyncs
#: issued in parallel share the filesystem's journal commits instead of queueing
#: for one each; without fsync, renames onto existing files (which start writeback
#: on ext4) overlap too (+35% for 2,000 distinct keys, docs/benchmarks.md).
BATCH_WRITERS = 4
#: Entries up to this size are read on the event loop when the page cache holds them.
INLINE_READ_MAX = 256 * 1024
#: How durable batches are made durable: "auto" picks per batch between one ``syncfs``
#: barrier and per-file fsyncs (see ``_barrier``); "syncfs" and "fsync" force one (tests).
BARRIER: BarrierMode = "auto"
#: Whether durable batches go through the batch journal (format version 3, ``_journal``):
#: "auto" where ``syncfs`` may checkpoint it (the barrier's conditions) and the machine has a
#: boot id; "on" and "off" force it (tests). Where it is taken, every durable batch takes it:
#: one that did not would be undone by the replay of an older record after a power cut.
JOURNAL_MODE: Literal["auto", "on", "off"] = "auto"
#: The journal is checkpointed (``syncfs``, then cut back) once it holds this many bytes.
JOURNAL_MAX = 4 * 1024 * 1024

_T = TypeVar("_T")
Groups = list[tuple[int, list[Write]]]


@dataclass(slots=True)
class _Staged:
    """A write of a barrier batch between its tmp file and its rename (``tmp`` None: a delete)."""

    write: Write
    name: str
    tmp: str | None = None
    signature: Signature | None = None
    #: What the tmp file holds: ``write.data``'s ``meta.json`` (its blobs are written already).
    meta: bytes = b""
    #: What splitting ``write.data`` found, when it is stored split.
    pieces: Pieces | None = None
    #: Journaled batches: the blob files the ``meta.json`` names (their signatures), and the
    #: bytes of those this process does not know durable (they go into the record).
    files: dict[str, Signature] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)


def _holds(blob: bytes, digest: str) -> bool:
    """Whether a blob file's bytes are those its name (their SHA-256) says: one read cut
    short must not stand, in the cache shared by every session, for all of that content."""
    return hashlib.sha256(blob).hexdigest() == digest


@dataclass(slots=True)
class _Cached:
    """An entry's bytes as its ``meta.json`` with ``signature`` held them, ``seen`` (monotonic
    seconds) when last known current: read, written, or a ``stat`` showed the same signature."""

    signature: Signature
    data: bytes
    seen: float


class _ReadCache:
    """Raw bytes of recently read or written entries, with the signature they had.

    A read trusts a hit only after a ``stat`` shows the same signature, so another
    process's write is seen on the next read. Bounded by total bytes (LRU).
    """

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._items: OrderedDict[str, _Cached] = OrderedDict()
        self._bytes = 0

    def get(self, key: str) -> _Cached | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: str, signature: Signature, data: bytes) -> None:
        self.drop(key)
        if len(data) > self._max_bytes // 8:
            return
        self._items[key] = _Cached(signature, data, time.monotonic())
        self._bytes += len(data)
        while self._bytes > self._max_bytes:
            _, evicted = self._items.popitem(last=False)
            self._bytes -= len(evicted.data)

    def drop(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self._bytes -= len(item.data)


class DirectoryBackend:
    """One directory per session; every path is opened relative to the store's folder."""

    mode: Final = "directory"
    #: Bounds a batch's latency and the time its keys are in flight.
    batch_size: Final = 1024

    def __init__(
        self,
        path: StorePaths | str | os.PathLike[str],
        filesystem: FileSystem | None = None,
        *,
        create: bool = True,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        tmp_max_age: float = DEFAULT_TMP_MAX_AGE,
        upgrade: bool = True,
    ) -> None:
        """A directory store at ``path`` (``X/sessions.json`` or ``X/sessions.d``).

        :param create: make a new empty store at :meth:`open` when there is none
            (False: a missing store is :class:`StoreFormatError`).
        :param lock_timeout: seconds to wait for another process's lock stripe.
        :param max_entry_bytes: a ``meta.json`` larger than this is refused as corrupt.
        :param cache_bytes: bytes of recently used entries kept, checked by ``stat``.
        :param tmp_max_age: seconds after which a tmp file or trash is an orphan.
        :param upgrade: migrate a store of an earlier format version forward at :meth:`open`
            (False: read it as it is, and refuse writes: for readers that must write nothing).
        :param filesystem: the :class:`FileSystem` doing every blocking call.
        """
        paths = path if isinstance(path, StorePaths) else StorePaths.of(path)
        fs = filesystem if filesystem is not None else FileSystem()
        self._create = create
        self.paths = paths
        self._fs = fs
        self._lock_timeout = lock_timeout
        self._max_entry_bytes = max_entry_bytes
        self._tmp_max_age = tmp_max_age
        self._cache = _ReadCache(cache_bytes)
        #: Blobs by digest and each key's last entry (format version 2).
        self._blobs = Blobs(cache_bytes)
        self._upgrade = upgrade
        #: The format version of the open store: 1 only when opened with ``upgrade=False``.
        self._version = FORMAT_VERSION
        self._root = -1
        #: ``.locks`` (opened at open if it exists) and ``.trash`` (by the first write).
        self._locks_dir = -1
        self._trash = -1
        self._lock_fds: dict[int, int] = {}
        #: The writer threads of a batch share the state below; it changes under this lock.
        self._state_lock = threading.Lock()
        #: A durable fsync of the store folder failed: the next durable batch fsyncs it
        #: again even if it creates no folder (a retried write finds its folder there).
        self._root_unsynced = False
        #: Failed fsyncs of the store folder so far: a success clears ``_root_unsynced``
        #: only if no failure happened since that fsync began (a thread whose fsync ran
        #: beside the failing one proves nothing about the failed thread's folders).
        self._root_failures = 0
        #: Folders where a write failed and may have left its tmp file (its removal can fail
        #: too, on a broken disk): the next write of the key, under its lock, removes it.
        #: Not under ``_state_lock``: a batch gives each stripe (so each folder) to one thread.
        self._unclean: set[str] = set()
        #: Deleted folders of this process still in the trash because removing them failed.
        self._trash_left: set[str] = set()
        #: Orphaned tmp files and trash left by dead writers, removed by the sweep.
        self.swept = 0
        #: Decided at the first durable batch (it needs the open store folder).
        self._policy: BarrierPolicy | None = None
        #: The batch journal (format version 3), opened at open when it must be looked at, else
        #: by the first durable batch that takes it (``_journal_wanted``, decided then).
        self._journal: Journal | None = None
        self._journaling: bool | None = None
        #: Newest first, prefixes and counts without reading sessions (backends/_index.py).
        self._index = RecencyIndex(
            paths.directory, fs, lock_timeout=lock_timeout, max_entry_bytes=max_entry_bytes
        )
        #: Seconds between two sweeps of one process, whatever ``tmp_max_age`` says.
        self.min_sweep_interval = 1.0
        #: Runs batches that need one thread, on asyncio (a cheaper hop than anyio's pool).
        self._writer = WriterThread(f"aiosessions writer {paths.directory}")

    # -- lifecycle -------------------------------------------------------------------

    def replaced_sync(self) -> bool:
        """Whether the store folder this backend opened is no longer the one at its path
        (blocking): another process moved the store forward (the old folder went to its
        trash and was removed), or replaced it. A backend opened with ``upgrade=False``
        keeps reading the old folder, whose sessions then read as absent."""
        opened = self._fs.fstat(self._root)
        try:
            now = self._fs.stat(str(self.paths.directory))
        except FileNotFoundError:
            return True
        return (opened.st_dev, opened.st_ino) != (now.st_dev, now.st_ino)

    def location(self, key: str | None = None) -> str:
        if key is None:
            return str(self.paths.directory)
        return str(self.paths.directory / encode_key(key) / META)

    def counters(self) -> Mapping[str, int]:
        return {"swept": self.swept}

    async def open(self) -> None:
        if self._open_inline():
            return
        try:
            await anyio.to_thread.run_sync(self._open_sync, self._create)
        except FileNotFoundError as exc:
            if self._create:
                raise io_error(
                    exc, f"opening the store {self.paths.directory}", path=str(self.paths.directory)
                ) from exc
            raise StoreFormatError(f"there is no directory store at {self.paths.directory}") from exc
        except OSError as exc:
            raise io_error(
                exc, f"opening the store {self.paths.directory}", path=str(self.paths.directory)
            ) from exc

    def _open_inline(self) -> bool:
        """Open an existing store on the event loop when the page cache can tell it is one.

        Opening the folder and reading a cached FORMAT marker (``RWF_NOWAIT``) cost a
        few microseconds, a worker-thread hop a hundred; anything else (no folder, an
        uncached or wrong marker, an error) returns False for :meth:`_open_sync`.
        """
        fs = self._fs
        try:
            root = fs.open_dir(str(self.paths.directory))
        except OSError:
            return False
        try:
            found = fs.read_file_cached(FORMAT_FILE, dir_fd=root, max_bytes=FORMAT_MAX_BYTES)
        except OSError:
            found = None
        if found is None or format_version(found[0]) != FORMAT_VERSION or not self._journal_settled(root):
            try:
                fs.close(root)
            except OSError:
                pass
            return False
        self._attach(root)
        return True

    def _journal_settled(self, root: int) -> bool:
        """Whether the journal needs nothing at open, told on the event loop: there is none,
        or it is a cached header of this boot (else :meth:`_recover_sync` looks, in a thread)."""
        try:
            st = self._fs.stat(JOURNAL, dir_fd=root)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        if st.st_size != HEADER_SIZE:
            return False
        try:
            found = self._fs.read_file_cached(JOURNAL, dir_fd=root, max_bytes=HEADER_SIZE)
        except OSError:
            return False
        return found is not None and parse(found[0])[0] == _journal.current_boot()

    def _attach(self, root: int) -> None:
        """Use the open store folder; ``.locks`` too if it is there (the recency index reads
        under its stripes). What is missing is made by the first write."""
        try:
            self._locks_dir = self._fs.open_dir(LOCKS, dir_fd=root)
        except OSError:
            self._locks_dir = -1
        self._root = root
        self._index.attach(root, self._locks_dir)

    def _open_sync(self, create: bool) -> None:
        fs = self._fs
        directory = str(self.paths.directory)
        if create:
            fs.ensure_dirs(str(self.paths.directory.parent))
            staging = str(self.paths.directory.with_name(self.paths.staging))
            if self._upgrade and not exists(fs, directory) and exists(fs, staging):
                # An upgrade cut between its renames leaves its sealed store there: finish it.
                from .._upgrade import upgrade_format

                upgrade_format(self.paths, fs, lock_timeout=self._lock_timeout)
            fs.ensure_dir(directory)
        root = fs.open_dir(directory)
        try:
            marked = read_marker(fs, ".", dir_fd=root, where=self.paths.directory / FORMAT_FILE)
            if marked is not None and marked < FORMAT_VERSION and self._upgrade:
                from .._upgrade import NotWritableError, upgrade_format  # it imports this module

                fs.close(root)
                root = -1
                try:
                    upgrade_format(self.paths, fs, lock_timeout=self._lock_timeout)
                except NotWritableError:
                    pass  # a store this process may only read: read as it is, writes refused
                root = fs.open_dir(directory)
                marked = read_marker(fs, ".", dir_fd=root, where=self.paths.directory / FORMAT_FILE)
            if marked is not None and marked < FORMAT_VERSION:
                self._version = marked
            if not marked:
                if not create:
                    raise StoreFormatError(f"{directory} has no FORMAT marker: it is not a store")
                if any(is_session_name(name) for name in fs.listdir(root)):
                    raise StoreFormatError(
                        f"{directory} exists, holds files and has no FORMAT marker: it is not an "
                        "aiosessions store (a half-made migration?); run `aiosessions fsck` on it"
                    )
                ensure_store_dirs(fs, root)
                claim_sweep(fs, root)  # a new store has no orphans: no sweep for tmp_max_age
                # The marker goes last: a folder without it is never trusted as a store.
                fs.write_atomic(FORMAT_FILE, encode_format(), dir_fd=root, durable=True)
                fs.fsync_dir(str(self.paths.directory.parent))
        except BaseException:
            if root >= 0:
                fs.close(root)
            raise
        self._attach(root)
        try:
            self._recover_sync()
        except BaseException:
            self._close_fds()
            raise

    def _open_writer_dirs(self) -> None:
        """Open ``.locks`` and ``.trash`` for the first write (creating them if missing)."""
        with self._state_lock:
            if self._trash >= 0:
                return
            ensure_store_dirs(self._fs, self._root)
            if self._locks_dir < 0:
                self._locks_dir = self._fs.open_dir(LOCKS, dir_fd=self._root)
                self._index.attach(self._root, self._locks_dir)
            self._trash = self._fs.open_dir(TRASH, dir_fd=self._root)

    async def aclose(self) -> None:
        if self._trash_left and self._trash >= 0:
            await anyio.to_thread.run_sync(self._empty_trash_sync)
        self._writer.stop()
        self._index.close()
        if self._journal is not None:
            try:
                self._journal.close()
            except OSError:
                pass
            self._journal = None
        self._close_fds()

    def _close_fds(self) -> None:
        fds = [*self._lock_fds.values(), self._locks_dir, self._trash, self._root]
        self._lock_fds.clear()
        self._root = self._locks_dir = self._trash = -1
        for fd in fds:
            if fd >= 0:
                try:
                    self._fs.close(fd)
                except OSError:
                    pass

    # -- reads -----------------------------------------------------------------------

    async def read_base(self, key: str) -> bytes | None:
        """The bytes a write-behind ``update()`` of ``key`` starts from: what this process
        read, validated or wrote of it in the last ``BASE_TTL`` seconds, else a :meth:`read`.

        Skips the ``stat`` that validates a cached entry (on a busy machine a fifth of a change
        by member of a cached session). The bytes may be stale (another process wrote since):
        the write's compare-and-swap still checks them, under the key's stripe lock, and a
        conflict makes the queue apply the update function again to the entry found.
        """
        hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit.seen <= BASE_TTL:
            return hit.data
        return await self.read(key)

    async def read(self, key: str) -> bytes | None:
        name = encode_key(key)
        hit = self._cache.get(key)
        if hit is not None:
            # A stat costs a few microseconds, a worker-thread hop about a hundred:
            # check freshness inline and read only when the file was replaced.
            try:
                st = self._fs.stat(f"{name}/{META}", dir_fd=self._root)
            except FileNotFoundError:
                self._cache.drop(key)
                return None
            except OSError as exc:
                raise io_error(exc, "reading", key=key, path=self.location(key)) from exc
            if Signature.of(st) == hit.signature:
                hit.seen = time.monotonic()
                return hit.data
        # Not cached (or replaced): read inline when the page cache holds the file; a
        # missing folder answers "absent" (every new session's first update) at once.
        cached = self._read_inline(key, name)
        if cached is False:
            self._cache.drop(key)
            return None
        if cached is not None:
            refused = self._refusal(key, name, cached[0])
            if refused is not None:
                raise refused
            self._cache.put(key, cached[1], cached[0])
            return cached[0]
        found = await anyio.to_thread.run_sync(self._read_sync, key, name)
        if isinstance(found, BaseException):
            raise found
        if found is None:
            self._cache.drop(key)
            return None
        data, signature = found
        self._cache.put(key, signature, data)
        return data

    def _read_inline(self, key: str, name: str) -> tuple[bytes, Signature] | Literal[False] | None:
        """The entry's bytes when the page cache holds them all, read on the event loop;
        False when the session does not exist.

        An open + read + close of a cached file costs ~30 us here, a worker-thread
        hop ~75-100 us (and it contends for the GIL with the flusher). The read never
        waits for the disk (see ``FileSystem.read_file_cached``); anything unusual
        (an error, a big or uncached file, a shortened name whose key file must be
        checked) returns None and the worker-thread read handles it as before.
        """
        fs = self._fs
        if is_shortened(name):
            try:
                fs.stat(f"{name}/{META}", dir_fd=self._root)
            except FileNotFoundError:
                return False
            except OSError:
                pass  # the read in the worker thread reports it
            return None
        try:
            folder = fs.open_dir(name, dir_fd=self._root)
        except FileNotFoundError:
            return False
        except OSError:
            return None
        try:
            limit = min(self._max_entry_bytes, INLINE_READ_MAX)
            found = fs.read_file_cached(META, dir_fd=folder, max_bytes=limit)
            if found is None or self._version < 2:
                return found
            meta, signature = found
            parts = references(meta)
            if parts is None:
                self._blobs.remember(key, Known(meta, meta, ()))
                return found
            blobs = {}
            for _, _, digest in parts:
                blob = self._blobs.get(digest)
                if blob is None:
                    if blob_digest(blob_name(digest)) != digest:
                        return None
                    cached = fs.read_file_cached(blob_name(digest), dir_fd=folder, max_bytes=limit)
                    if cached is None or not _holds(cached[0], digest):
                        return None  # the worker thread reads it, or says what is wrong
                    blob = cached[0]
                    self._blobs.put(digest, blob)
                blobs[digest] = blob
            return self._joined(key, meta, parts, blobs), signature
        except (OSError, ValueError, KeyError):
            return None  # the worker thread's read says what is wrong
        finally:
            try:
                fs.close(folder)
            except OSError:
                pass

    async def read_many(self, keys: Sequence[str]) -> list[bytes | BaseException | None]:
        found = await anyio.to_thread.run_sync(
            lambda: [self._read_sync(key, encode_key(key)) for key in keys]
        )
        return [item if item is None or isinstance(item, BaseException) else item[0] for item in found]

    def _read_sync(self, key: str, name: str) -> tuple[bytes, Signature] | BaseException | None:
        """Read one entry; errors are returned (translated), so a batch read goes on."""
        try:
            found = self._fs.read_dir_file(name, META, dir_fd=self._root, max_bytes=self._max_entry_bytes)
            if found is not None and is_shortened(name):
                self._check_key_file(key, name)
            if found is not None:
                found = self._whole_sync(key, name, found[0]), found[1]
        except NotRegularFileError as exc:
            path = str(self.paths.directory / name / META)
            error = CorruptSessionError(
                f"session {key!r}: {path} is not a regular file; run `aiosessions fsck`", path=path, key=key
            )
            error.__cause__ = exc
            return error
        except TooLargeError as exc:
            path = str(self.paths.directory / name / META)
            error = CorruptSessionError(
                f"session {key!r}: {path} is larger than max_entry_bytes={self._max_entry_bytes}; "
                "refusing to load it",
                path=path,
                key=key,
            )
            error.__cause__ = exc  # returned, not raised: set what `raise ... from exc` would
            return error
        except CorruptSessionError as exc:
            return exc
        except OSError as exc:
            return io_error(exc, "reading", key=key, path=str(self.paths.directory / name / META))
        if found is not None:
            return self._refusal(key, name, found[0]) or found
        return found

    def _whole_sync(
        self, key: str, name: str, meta: bytes, folder: int | None = None, *, again: int = 3
    ) -> bytes:
        """The whole entry a ``meta.json`` stands for: its blobs spliced back (from the cache,
        else read from the session folder ``name``, or its open descriptor ``folder``).

        :raises CorruptSessionError: a blob it names is missing, unreadable or too large,
            or its ``$parts`` member is not the store's.
        :raises OSError: reading a blob failed.
        """
        if self._version < 2:
            return meta
        try:
            parts = references(meta)
        except ValueError as exc:
            raise self._bad_parts(key, name, exc) from exc
        if parts is None:
            self._blobs.remember(key, Known(meta, meta, ()))
            return meta
        for _, _, digest in parts:
            if blob_digest(blob_name(digest)) != digest:
                raise self._bad_parts(key, name, ValueError(f"{digest!r} is not a SHA-256 digest"))
        blobs = {}
        fs, opened = self._fs, -1
        try:
            for _, _, digest in parts:
                blob = self._blobs.get(digest)
                if blob is None:
                    if folder is None:
                        folder = opened = fs.open_dir(name, dir_fd=self._root)
                    path = str(self.paths.directory / name / blob_name(digest))
                    try:
                        found = fs.read_file(
                            blob_name(digest), dir_fd=folder, max_bytes=self._max_entry_bytes
                        )
                    except (TooLargeError, NotRegularFileError) as exc:
                        raise CorruptSessionError(
                            f"session {key!r}: {path} (a part its meta.json names) {exc.strerror}; "
                            "run `aiosessions fsck`",
                            where=path,
                            key=key,
                        ) from exc
                    if found is None:
                        # A write may have replaced meta.json since it was read, and the sweep
                        # removed a blob it no longer names: read the new meta.json.
                        now = fs.read_file(META, dir_fd=folder, max_bytes=self._max_entry_bytes)
                        if again > 0 and now is not None and now[0] != meta:
                            return self._whole_sync(key, name, now[0], folder, again=again - 1)
                        raise CorruptSessionError(
                            f"session {key!r}: {path} is missing (its meta.json names it); "
                            "run `aiosessions fsck`",
                            where=path,
                            key=key,
                        )
                    blob = found[0]
                    if not _holds(blob, digest):
                        raise CorruptSessionError(
                            f"session {key!r}: {path} (a part its meta.json names) does not hold "
                            "what its name says (its SHA-256 differs: cut short or changed); "
                            "run `aiosessions fsck`",
                            where=path,
                            key=key,
                        )
                    self._blobs.put(digest, blob)
                blobs[digest] = blob
        finally:
            if opened >= 0:
                fs.close(opened)
        try:
            return self._joined(key, meta, parts, blobs)
        except ValueError as exc:
            raise self._bad_parts(key, name, exc) from exc

    def _joined(
        self, key: str, meta: bytes, parts: list[tuple[str, int, str]], blobs: dict[str, bytes]
    ) -> bytes:
        """The whole entry ``meta`` and its ``blobs`` make, remembered as the key's last, with
        its members (slices of it).

        :raises ValueError: ``meta``'s ``$parts`` is not the store's.
        """
        whole, members = join_members(meta, blobs)
        named = tuple((n, d) for n, _, d in parts)
        frozen = None if members is None else MappingProxyType(members)
        self._blobs.remember(key, Known(whole, meta, named, frozen))
        return whole

    def _bad_parts(self, key: str, name: str, exc: Exception) -> CorruptSessionError:
        path = str(self.paths.directory / name / META)
        return CorruptSessionError(
            f"session {key!r}: {path}: its {'$parts'!r} member does not name blobs ({exc}); "
            "run `aiosessions fsck`",
            where=path,
            key=key,
        )

    def _refusal(self, key: str, name: str, data: bytes) -> CorruptSessionError | None:
        """The error for an entry the store would not have stored (``storable``: too large,
        nested too deep), so that what is read back is what ``set()`` accepts, and what fsck
        calls valid (it checks with the same function)."""
        problem = storable(data, self._max_entry_bytes)
        if problem is None:
            return None
        path = str(self.paths.directory / name / META)
        return CorruptSessionError(
            f"session {key!r}: {path}: {problem}; run `aiosessions fsck`", where=path, key=key
        )

    def _check_key_file(self, key: str, name: str, *, folder: int | None = None) -> bool:
        """Whether the session folder ``name`` (or its open descriptor ``folder``) has a
        ``key`` file; it must name ``key``.

        :raises CorruptSessionError: it names another key, or is not UTF-8.
        """
        try:
            if folder is None:
                stored = read_key_file(self._fs, name, dir_fd=self._root)
            else:
                stored = read_key_file(self._fs, name, dir_fd=folder, inside=True)
        except ValueError:
            stored = ""
        if stored is None:
            return False
        if stored != key:
            path = str(self.paths.directory / name / KEY_FILE)
            raise CorruptSessionError(
                f"session {key!r}: {path} names another key; run `aiosessions fsck`", where=path, key=key
            )
        return True

    def members_of(self, key: str, data: bytes) -> Mapping[str, msgspec.Raw] | None:
        """The top-level members of ``data``, when it is the entry of ``key`` this backend last
        read or wrote and it is stored split (kept from that read or write), so
        ``update_members`` need not scan the whole entry. None otherwise."""
        known = self._blobs.known(key)
        if known is None or known.members is None or (known.whole is not data and known.whole != data):
            return None
        return known.members

    async def exists(self, key: str) -> bool:
        """Whether the session has a ``meta.json``, whatever it is (a broken one too: it
        reads as :class:`CorruptSessionError` and can be deleted)."""
        name = encode_key(key)
        try:
            self._fs.stat(f"{name}/{META}", dir_fd=self._root)
            # That stat follows a symlink planted as the session folder: an entry
            # counts only inside a real folder of the store (one more stat, ~3 us).
            return is_real_dir(self._fs, name, dir_fd=self._root)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise io_error(exc, "checking", key=key, path=self.location(key)) from exc

    def key_chunks(self, prefix: str = "") -> AsyncIterator[list[str]]:
        # The index's own generator, not one wrapping it: closing the iteration closes it.
        return self._index.key_chunks(prefix)

    async def newest(
        self, limit: int, *, after: tuple[str, int | None] | None = None
    ) -> list[tuple[str, int | None]]:
        return await self._index.newest(limit, position_of(after))

    async def count(self) -> int:
        return await self._index.count()

    # -- writes ----------------------------------------------------------------------

    async def write_batch(self, writes: Sequence[Write], *, durable: bool) -> BatchResult:
        if self._version < FORMAT_VERSION:
            refused = StoreFormatError(
                f"{self.location()} is format version {self._version}, opened to be read only (with "
                "upgrade=False, or where it cannot be written); `aiosessions migrate` moves it forward"
            )
            return BatchResult(failed={write.key: refused for write in writes})
        stripes: dict[int, list[Write]] = {}
        for write in writes:
            stripes.setdefault(stripe_of(write.key), []).append(write)
        groups = sorted(stripes.items())
        started = time.perf_counter()
        if durable and self._journal_wanted():
            # As with the barrier: the phases run shielded, locks and journal let go in all cases.
            with anyio.CancelScope(shield=True):
                result, signatures = await self._hop(self._write_journaled_sync, groups)
        elif durable and self._barrier_policy().use_barrier(len(writes)):
            # Locks are held from staging to commit: the phases run shielded, so a
            # cancellation never leaves them taken or tmp files behind.
            with anyio.CancelScope(shield=True):
                result, signatures = await self._write_barriered(groups, len(writes), started)
        else:
            parts = await self._in_parts(groups, len(writes), lambda part: self._write_sync(part, durable))
            if len(parts) == 1:
                result, signatures = parts[0]  # one thread's (a write-through call's): as it is
            else:
                result, signatures = BatchResult(), {}
                for r, s in parts:
                    self._merge(result, r)
                    signatures.update(s)
            if durable:
                self._barrier_policy().fsynced(time.perf_counter() - started, len(writes))
        data = {write.key: write.data for write in writes}
        for key in result.landed:
            written = data[key]
            if written is None:
                self._cache.drop(key)
            else:
                self._cache.put(key, signatures[key], written)
        for key in (*result.conflicts, *result.failed, *result.unsynced):
            self._cache.drop(key)
        return result

    @staticmethod
    def _merge(into: BatchResult, part: BatchResult) -> None:
        into.landed += part.landed
        into.conflicts.update(part.conflicts)
        into.failed.update(part.failed)
        into.unsynced.update(part.unsynced)

    async def _in_parts(self, groups: Groups, count: int, fn: Callable[[Groups], _T]) -> list[_T]:
        """Run ``fn`` over the stripe groups, split over ``BATCH_WRITERS`` worker threads
        when the batch is big enough (each stripe, so each folder, goes to one thread)."""
        if len(groups) <= 1 or count < 2 * BATCH_WRITERS:
            return [await self._hop(fn, groups)]
        parts = [groups[i::BATCH_WRITERS] for i in range(BATCH_WRITERS)]
        return await self._each_in_thread([functools.partial(fn, part) for part in parts])

    async def _hop(self, fn: Callable[..., _T], *args: object) -> _T:
        """Run ``fn(*args)`` in a worker thread: the store's own on asyncio (one turn of the
        loop instead of four, see ``_writer``), anyio's pool on other loops."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return await anyio.to_thread.run_sync(functools.partial(fn, *args))
        return await self._writer.run(fn, *args)

    async def _each_in_thread(self, calls: Sequence[Callable[[], _T]]) -> list[_T]:
        """Run each call in a worker thread of its own, at the same time; their results in order."""
        if len(calls) == 1:
            return [await self._hop(calls[0])]
        out: dict[int, _T] = {}

        async def run(index: int) -> None:
            out[index] = await anyio.to_thread.run_sync(calls[index])

        async with anyio.create_task_group() as tg:
            for index in range(len(calls)):
                tg.start_soon(run, index)
        return [out[index] for index in range(len(calls))]

    def _barrier_policy(self) -> BarrierPolicy:
        if self._policy is None:
            available = False
            try:
                if BARRIER == "syncfs":
                    available = True  # forced: the FileSystem's syncfs answers for itself
                elif BARRIER == "auto":
                    available = syncfs_filesystem(self._fs.fstat(self._root).st_dev) is not None
            except OSError:
                pass
            self._policy = BarrierPolicy(BARRIER, available)
        return self._policy

    # -- a durable batch through the journal ----------------------------------------------

    def _journal_wanted(self) -> bool:
        """Whether durable batches take the journal (decided once, by the first durable batch)."""
        if self._journaling is None:
            wanted = self._version >= 3 and JOURNAL_MODE != "off" and bool(_journal.current_boot())
            if wanted and JOURNAL_MODE == "auto":
                wanted = BARRIER != "fsync" and self._barrier_policy().mode != "fsync"
            self._journaling = wanted
        return self._journaling

    def _open_journal_sync(self) -> Journal:
        if self._journal is None:
            journal = Journal(
                self._fs,
                self._root,
                where=f"{self.paths.directory}/{JOURNAL}",
                lock_timeout=self._lock_timeout,
            )
            journal.open()
            self._journal = journal
        return self._journal

    def _recover_sync(self) -> None:
        """At open: replay the journal if the machine started again since it was written.

        Records of this boot need nothing (every rename they stand for is in the page cache).
        Records of another boot are replayed in order, made durable by ``syncfs``, and the
        journal cut back, before any read. Another process opening meanwhile waits on the
        journal's lock, then finds it cut back.
        """
        if self._version < 3:
            return  # no journal before version 3
        fs = self._fs
        try:
            st = fs.stat(JOURNAL, dir_fd=self._root)
        except FileNotFoundError:
            return  # no durable batch went through a journal here yet
        if st.st_size == HEADER_SIZE:
            found = fs.read_file(JOURNAL, dir_fd=self._root, max_bytes=HEADER_SIZE)
            if found is not None and parse(found[0])[0] == _journal.current_boot():
                return
        try:
            journal = self._open_journal_sync()
        except OSError as exc:
            found = fs.read_file(JOURNAL, dir_fd=self._root)
            boot, records = parse(found[0] if found is not None else b"")
            if records and boot != _journal.current_boot():
                raise io_error(
                    exc,
                    "replaying the journal after a restart of the machine (open the store once "
                    "where it can be written)",
                    path=f"{self.paths.directory}/{JOURNAL}",
                ) from exc
            return  # read only: nothing of another boot to replay
        with journal.locked():
            boot, records = journal.read()
            if boot == journal.boot:
                return
            if records:
                self._replay_sync(records)
                fs.syncfs(self._root)
            journal.cut()

    def _replay_sync(self, records: list[list[Entry]]) -> None:
        """Write what the journal's records wrote, the last write of each key winning, as
        blind writes through the ordinary path (folders, key files, blobs, the index)."""
        latest: dict[str, tuple[str, bytes | None]] = {}
        blobs: dict[str, dict[str, bytes]] = {}
        for entries in records:
            for name, key, meta, found in entries:
                latest.pop(key, None)
                latest[key] = (name, meta)
                blobs.setdefault(key, {}).update(found)
        writes: list[Write] = []
        for key, (name, meta) in latest.items():
            if meta is None:
                writes.append(Write(key, None))
                continue
            have = blobs[key]
            for _, _, digest in references(meta) or []:
                if digest not in have:
                    on_disk = self._fs.read_file(f"{name}/{blob_name(digest)}", dir_fd=self._root)
                    if on_disk is None:
                        raise CorruptSessionError(
                            f"session {key!r}: the journal names the blob {digest}, which is neither "
                            f"in it nor in {self.location(key)}'s folder",
                            where=self.location(key),
                            key=key,
                        )
                    have[digest] = on_disk[0]
            writes.append(Write(key, join_members(meta, have)[0]))
        stripes: dict[int, list[Write]] = {}
        for write in writes:
            stripes.setdefault(stripe_of(write.key), []).append(write)
        result, _ = self._write_sync(sorted(stripes.items()), durable=False)
        for error in result.failed.values():
            raise error

    def _write_journaled_sync(self, groups: Groups) -> tuple[BatchResult, dict[str, Signature]]:
        """Stage every write as a tmp file under its stripe lock, append one record to the
        journal and fsync it, rename them all: one fsync per batch, whatever its size.

        One worker thread for the whole batch: with no fsync per key to overlap, four threads
        only fought over the GIL (a batch of 1,000 new keys 6,600-9,700/s against 9,300-11,100
        on one, the event loop's p99 beside it 470-580 against 150-190 µs; docs/benchmarks.md).
        The journal is held from the append to the last rename, so a checkpoint never falls
        between them. A failed append is a failed fsync (outcome unknown): the tmp files are
        removed and the writes fail (written again later; the record may come back after a
        power cut, replaying what those writes were, as any write-ahead log's).
        """
        result, staged, held, intents = self._stage_sync(groups, journal=True)
        error = self._journal_append_sync(staged)
        if error is not None:
            self._abandon_sync([(staged, held, intents)])
            for item in staged:
                result.failed[item.write.key] = error
            return result, {}
        try:
            committed, signatures = self._commit_sync(staged, held, intents, journaled=True)
        finally:
            self._journal_done_sync()
        self._merge(result, committed)
        return result, signatures

    def _journal_append_sync(self, staged: list[_Staged]) -> BaseException | None:
        """Take the journal and append the batch's record; on an error, let it go and return it."""
        entries: list[Entry] = [
            (item.name, item.write.key, item.meta if item.tmp is not None else None, item.blobs)
            for item in staged
        ]
        where = f"{self.paths.directory}/{JOURNAL}"
        try:
            journal = self._open_journal_sync()
            journal.take()
        except LockTimeoutError as exc:
            return exc
        except OSError as exc:
            return io_error(exc, "opening the journal", path=where)
        if not entries:
            return None
        try:
            journal.append(entries)
        except OSError as exc:
            journal.let_go()
            return io_error(exc, "appending the batch to the journal", path=where)
        return None

    def _journal_done_sync(self) -> None:
        """The batch's renames are done: checkpoint if the journal is big, let it go."""
        journal = self._journal
        assert journal is not None
        try:
            if journal.size > JOURNAL_MAX:
                self._checkpoint_sync(journal)
        finally:
            journal.let_go()

    def _checkpoint_sync(self, journal: Journal) -> None:
        """Make everything the journal's records wrote durable (``syncfs``), then cut it back;
        under its lock. A failure leaves the records, still replayed after a power cut."""
        try:
            self._fs.syncfs(self._root)
            journal.cut()
        except OSError:
            pass  # tried again at the next batch past JOURNAL_MAX

    # -- a durable batch behind one barrier -----------------------------------------------

    async def _write_barriered(
        self, groups: Groups, count: int, started: float
    ) -> tuple[BatchResult, dict[str, Signature]]:
        """Stage every write as a tmp file under its stripe lock, ``syncfs``, rename them
        all, ``syncfs``: two barriers per batch instead of two fsyncs per key.

        The first barrier makes every tmp file (and new folder, and ``key`` file) durable
        before any name refers to it; the second makes the renames durable. A failed
        barrier means "outcome unknown", as a failed fsync: before the renames, the tmp
        files are removed and the writes failed (written again later); after, the writes
        are visible but unsynced, so the queue writes them again from scratch.
        """
        result, signatures = BatchResult(), dict[str, Signature]()
        staged: list[tuple[list[_Staged], list[int], list[Intent | None]]] = []
        for part_result, part_staged, held, intents in await self._in_parts(groups, count, self._stage_sync):
            self._merge(result, part_result)
            staged.append((part_staged, held, intents))
        syncfs_seconds = 0.0
        with self._state_lock:
            failures_before = self._root_failures
        error = await self._hop(self._barrier_sync, "staging the batch")
        syncfs_seconds += error[1]
        if error[0] is not None:
            await self._hop(self._abandon_sync, staged)
            for part_staged, _, _ in staged:
                for item in part_staged:
                    result.failed[item.write.key] = error[0]
            return result, signatures
        # Each part's renames in the thread that staged it (the renames overlap as the
        # fsyncs did); a part's locks go when its renames are done.
        commits = await self._each_in_thread([functools.partial(self._commit_sync, *part) for part in staged])
        committed: list[str] = []
        for part_result, part_signatures in commits:
            self._merge(result, part_result)
            signatures.update(part_signatures)
            committed += part_result.landed
        error = await self._hop(self._barrier_sync, "committing the batch")
        syncfs_seconds += error[1]
        if error[0] is not None:
            with self._state_lock:
                self._root_unsynced = True
                self._root_failures += 1
            for key in committed:
                result.landed.remove(key)
                signatures.pop(key, None)
                result.unsynced[key] = error[0]
        else:
            with self._state_lock:
                if self._root_failures == failures_before:
                    self._root_unsynced = False
            self._barrier_policy().barriered(time.perf_counter() - started, syncfs_seconds, count)
        return result, signatures

    def _stage_sync(
        self, groups: Groups, journal: bool = False
    ) -> tuple[BatchResult, list[_Staged], list[int], list[Intent | None]]:
        """Take each stripe's lock (kept until :meth:`_commit_sync`), compare, write tmp files
        (``journal``: and gather what the batch's journal record needs)."""
        staged: list[_Staged] = []
        held: list[int] = []
        intents: list[Intent | None] = []  # the recency index's, ended before the locks go
        result = self._writer_dirs_failure(groups)
        if result is not None:
            return result, staged, held, intents
        result = BatchResult()
        self._empty_trash_sync()
        for stripe, writes in groups:
            what = f"{self.location()}/{LOCKS}/{stripe_name(stripe)}"
            try:
                fd = self._lock_fd(stripe)
                acquire_file_lock_sync(self._fs, fd, timeout=self._lock_timeout, what=what)
            except OSError as exc:
                self._lock_failed(exc, writes, what, result)
                continue
            held.append(fd)
            intents.append(self._index.begin(stripe, writes, result, None))
            for write in writes:
                try:
                    item = self._stage_one(write, result, journal)
                except CorruptSessionError as exc:
                    result.failed[write.key] = exc
                except OSError as exc:
                    self._write_failed(write, exc, result)
                else:
                    if item is not None:
                        staged.append(item)
        return result, staged, held, intents

    def _write_failed(self, write: Write, exc: OSError, result: BatchResult) -> None:
        """``write`` failed: its folder may hold a tmp file now (removed by its next write)."""
        self._unclean.add(encode_key(write.key))
        action = "deleting" if write.data is None else "writing"
        result.failed[write.key] = io_error(exc, action, key=write.key, path=self.location(write.key))

    def _stage_one(self, write: Write, result: BatchResult, journal: bool = False) -> _Staged | None:
        fs, root, name = self._fs, self._root, encode_key(write.key)
        if not write.blind and not self._compare_sync(write, name, result):
            return None
        if write.data is None:
            return _Staged(write, name)
        try:
            folder = fs.open_dir(name, dir_fd=root)
        except FileNotFoundError:
            fs.ensure_dir(name, dir_fd=root)
            folder = fs.open_dir(name, dir_fd=root)
        try:
            if name in self._unclean:
                self._remove_tmp_files(name, folder)
            if is_shortened(name):
                self._write_key_file(write.key, name, folder, False)  # durable by the barrier or journal
            blobs: dict[str, bytes] | None = {} if journal else None
            meta, files, pieces = self._write_parts_sync(
                write.key,
                write.data,
                folder,
                durable=False,
                barrier=True,
                slices=write.members,
                journal=blobs,
            )
            tmp, signature = fs.write_tmp(META, meta, dir_fd=folder)
        finally:
            fs.close(folder)
        return _Staged(write, name, tmp, signature, meta, pieces, files, blobs or {})

    def _barrier_sync(self, what: str) -> tuple[BaseException | None, float]:
        started = time.perf_counter()
        try:
            self._fs.syncfs(self._root)
        except OSError as exc:
            error = io_error(exc, f"syncing the filesystem ({what})", path=self.location())
            return error, time.perf_counter() - started
        return None, time.perf_counter() - started

    def _abandon_sync(self, staged: list[tuple[list[_Staged], list[int], list[Intent | None]]]) -> None:
        """The first barrier failed: remove the tmp files and let the locks go."""
        for part_staged, held, intents in staged:
            for item in part_staged:
                if item.tmp is not None:
                    self._discard_tmp(item)
            for intent in intents:
                self._index.end(intent, {})
            self._release(held)

    def _discard_tmp(self, item: _Staged) -> None:
        assert item.tmp is not None
        try:
            folder = self._fs.open_dir(item.name, dir_fd=self._root)
        except OSError:
            self._unclean.add(item.name)
            return
        try:
            self._fs.unlink(item.tmp, dir_fd=folder)
        except FileNotFoundError:
            pass
        except OSError:
            self._unclean.add(item.name)  # removed by the key's next write, or the sweep
        finally:
            try:
                self._fs.close(folder)
            except OSError:
                pass

    def _release(self, held: list[int]) -> None:
        for fd in held:
            try:
                release_file_lock(self._fs, fd)
            except OSError:
                pass  # closing the descriptor at aclose releases it in any case

    def _commit_sync(
        self, staged: list[_Staged], held: list[int], intents: list[Intent | None], journaled: bool = False
    ) -> tuple[BatchResult, dict[str, Signature]]:
        """Rename the staged tmp files onto their ``meta.json`` (and delete), then unlock
        (``journaled``: the blob files named are durable through the journal's record)."""
        result = BatchResult()
        signatures: dict[str, Signature] = {}
        fs = self._fs
        try:
            for item in staged:
                key = item.write.key
                try:
                    if item.tmp is None:
                        self._delete_sync(item.name)
                    else:
                        folder = fs.open_dir(item.name, dir_fd=self._root)
                        try:
                            fs.rename(item.tmp, META, src_dir_fd=folder, dst_dir_fd=folder)
                        finally:
                            fs.close(folder)
                        assert item.signature is not None and item.write.data is not None
                        signatures[key] = item.signature
                        synced = item.files if journaled else None
                        self._remember_written(key, item.write.data, item.meta, item.pieces, synced=synced)
                except OSError as exc:
                    if item.tmp is not None:
                        self._discard_tmp(item)
                    self._unclean.add(item.name)
                    action = "deleting" if item.tmp is None else "writing"
                    result.failed[key] = io_error(exc, action, key=key, path=self.location(key))
                else:
                    result.landed.append(key)
        finally:
            for intent in intents:
                self._index.end(intent, signatures, result)  # before the stripes' locks go
            self._release(held)
        return result, signatures

    def _write_sync(self, groups: Groups, durable: bool) -> tuple[BatchResult, dict[str, Signature]]:
        signatures: dict[str, Signature] = {}
        namespace_changed: list[str] = []  # keys whose write created or removed a folder
        result = self._writer_dirs_failure(groups)
        if result is not None:
            return result, signatures
        result = BatchResult()
        self._empty_trash_sync()
        for stripe, writes in groups:
            what = f"{self.location()}/{LOCKS}/{stripe_name(stripe)}"
            try:
                with file_lock(self._fs, self._lock_fd(stripe), timeout=self._lock_timeout, what=what):
                    intent = self._index.begin(stripe, writes, result, namespace_changed)
                    try:
                        for write in writes:
                            try:
                                if self._apply_sync(write, result, signatures, durable):
                                    namespace_changed.append(write.key)
                            except CorruptSessionError as exc:
                                result.failed[write.key] = exc
                            except OSError as exc:
                                self._write_failed(write, exc, result)
                    finally:
                        self._index.end(intent, signatures)  # before another writer may take the stripe
            except OSError as exc:  # only taking the lock: the rest catches its own errors
                self._lock_failed(exc, writes, what, result)
        with self._state_lock:
            failures_before = self._root_failures
            sync_root = durable and (namespace_changed or self._root_unsynced)
        if sync_root:
            try:
                self._fs.fsync(self._root)
            except OSError as exc:
                # The outcome is unknown after a failed fsync: report these as unsynced
                # (visible, durability unknown), so they stay queued and are written
                # again (not merely fsynced again).
                with self._state_lock:
                    self._root_unsynced = True
                    self._root_failures += 1
                error = io_error(exc, "syncing the store directory", path=self.location())
                for key in namespace_changed:
                    if key in result.landed:
                        result.landed.remove(key)
                        signatures.pop(key, None)
                        result.unsynced[key] = error
            else:
                with self._state_lock:
                    if self._root_failures == failures_before:
                        self._root_unsynced = False
        self._index.after_batch()
        return result, signatures

    def _writer_dirs_failure(self, groups: Groups) -> BatchResult | None:
        """Open ``.locks`` and ``.trash`` for the first write; on failure (a read-only disk or
        folder, say), the batch's result: every write failed, naming its session and the folder."""
        try:
            self._open_writer_dirs()
        except OSError as exc:
            where = f"{self.location()}/{LOCKS}"
            return BatchResult(
                failed={
                    write.key: io_error(exc, "writing", key=write.key, path=where)
                    for _, ws in groups
                    for write in ws
                }
            )
        return None

    @staticmethod
    def _lock_failed(exc: OSError, writes: list[Write], what: str, result: BatchResult) -> None:
        # Name each session and the lock file: on a read-only disk or folder the first
        # write fails here, making the stripe's lock file.
        for write in writes:
            result.failed[write.key] = (
                exc
                if isinstance(exc, LockTimeoutError)
                else io_error(exc, "writing", key=write.key, path=what)
            )

    def _lock_fd(self, stripe: int) -> int:
        fd = self._lock_fds.get(stripe)
        if fd is None:
            fd = self._lock_fds[stripe] = self._fs.open_lock_file(stripe_name(stripe), dir_fd=self._locks_dir)
        return fd

    def _compare_sync(self, write: Write, name: str, result: BatchResult, folder: int | None = None) -> bool:
        """Whether the stored entry is still ``write.expected`` (under the key's stripe lock);
        if not, the conflict is recorded with the whole entry found.

        Only ``meta.json`` is read: blobs are named by digest and never rewritten, so the
        ``meta.json`` the expected entry was stored as (remembered beside it) equal to the
        one on disk means equal entries. Otherwise the entry on disk is put together (its
        blobs mostly cached) and compared whole: a ``meta.json`` written differently (by
        hand, say) holding the same entry is no conflict.
        """
        key = write.key
        if folder is None:
            found = self._fs.read_dir_file(name, META, dir_fd=self._root)
        else:  # the session folder, open (-1: there is none)
            found = None if folder < 0 else self._fs.read_file(META, dir_fd=folder)
        meta = None if found is None else found[0]
        folder = None if folder is None or folder < 0 else folder
        expected = write.expected
        if meta is None or expected is None:
            if meta is None and expected is None:
                return True
            result.conflicts[key] = None if meta is None else self._whole_sync(key, name, meta, folder)
            return False
        if meta == self._blobs.meta_of(key, expected):
            return True
        current = self._whole_sync(key, name, meta, folder)
        if current == expected:
            return True
        result.conflicts[key] = current
        return False

    def _write_parts_sync(
        self,
        key: str,
        data: bytes,
        folder: int,
        *,
        durable: bool,
        barrier: bool = False,
        slices: Mapping[str, msgspec.Raw] | None = None,
        journal: dict[str, bytes] | None = None,
    ) -> tuple[bytes, dict[str, Signature], Pieces | None]:
        """Write the blobs of ``data`` that the session folder lacks; return its ``meta.json``,
        when ``durable`` ``{digest: signature}`` of the blob files it names (all durable), and
        what splitting it found when it is split (its parts, and its members for ``members_of``).

        ``data`` is not scanned when its members are given (``slices``: a write's ``members``).
        A large member is hashed only when its bytes differ from its last stored value
        (``_parts.split``'s hints), and not even compared when it is the very slice last
        stored (``update_members()`` passes on the slices it left alone). With ``durable``,
        every blob the new ``meta.json`` names is durable, its folder entry included, before
        this returns: new ones are fsynced before their rename, existing ones this process
        has not synced (that file: same signature) are fsynced, then the folder once. A blob
        file whose size is wrong (cut short by a crash without fsync) is written again.

        A new blob file is fsynced before its rename even when not ``durable`` (not on the
        ``barrier`` path, whose ``syncfs`` comes before any ``meta.json`` is renamed): it
        gets a new name, which ext4's ``auto_da_alloc`` does not cover (only a rename over
        an existing file), so after a power cut the ``meta.json`` renamed later over its old
        one could name a blob that came back empty. One fsync per new content, ~0.4 ms.

        ``journal`` (a journaled batch, with ``barrier``): nothing is fsynced; the bytes of
        every blob this process does not know durable (new files, and existing ones it has
        not synced or journaled) go into it, for the batch's record, and the signatures of
        all are returned as for ``durable``.
        """
        if self._version < 2:
            return data, {}, None
        meta, blobs, pieces = split_members(data, self._blobs.hints(key), slices)
        if not blobs:
            return meta, {}, None
        fs = self._fs
        synced = self._blobs.synced(key) if durable or journal is not None else {}
        files: dict[str, Signature] = {}
        sync_folder = False
        for digest, blob in blobs.items():
            file = blob_name(digest)
            try:
                st: os.stat_result | None = fs.stat(file, dir_fd=folder)
            except FileNotFoundError:
                st = None
            if st is None or st.st_size != len(blob):
                files[digest] = fs.write_atomic(
                    file, blob, dir_fd=folder, durable=durable or not barrier, sync_dir=False
                )
                sync_folder = durable
                if journal is not None:
                    journal[digest] = blob
            else:
                files[digest] = Signature.of(st)
                if synced.get(digest) != files[digest]:
                    if journal is not None:
                        journal[digest] = blob
                    elif durable:
                        fs.fsync_file(file, dir_fd=folder)
                        sync_folder = True
            self._blobs.put(digest, blob)
        if sync_folder:
            fs.fsync(folder)
        return meta, files if durable or journal is not None else {}, pieces

    def _remember_written(
        self,
        key: str,
        data: bytes,
        meta: bytes,
        pieces: Pieces | None,
        *,
        synced: dict[str, Signature] | None,
    ) -> None:
        """Remember what ``key`` now holds (``pieces``: what splitting ``data`` into ``meta``
        found, None when it is whole); ``synced``: the blob files a durable write made durable
        (None: the write was not durable).

        A write that was not durable leaves the synced files as they were: a blob file this
        process synced stays synced until it is replaced (then its signature differs).
        """
        if self._version < 2:
            return
        if pieces is None:
            self._blobs.remember(key, Known(data, meta, ()))
        else:
            self._blobs.remember(key, Known(data, meta, pieces.named, MappingProxyType(pieces.members)))
        if synced is not None:
            self._blobs.set_synced(key, synced)

    def _apply_sync(
        self, write: Write, result: BatchResult, signatures: dict[str, Signature], durable: bool
    ) -> bool:
        """Apply one write under its stripe lock; return whether a folder came or went.

        The session folder is opened once, for the compare-and-swap's read and the write.
        """
        fs, root, name = self._fs, self._root, encode_key(write.key)
        if write.blind and write.data is None:
            # A blind delete renames whatever is there (a planted symlink too) out of the
            # store without opening it.
            self._blobs.forget(write.key)
            removed = self._delete_sync(name)
            result.landed.append(write.key)
            return removed
        folder = -1
        try:
            # Most writes replace an existing session: open its folder at once
            # (mkdir would fail with EEXIST and cost a stat on top).
            folder = fs.open_dir(name, dir_fd=root)
        except FileNotFoundError:
            pass
        try:
            if not write.blind and not self._compare_sync(write, name, result, folder):
                return False
            if write.data is None:
                self._blobs.forget(write.key)
                if folder >= 0:
                    fd, folder = folder, -1
                    fs.close(fd)
                removed = self._delete_sync(name)
                result.landed.append(write.key)
                return removed
            created = False
            if folder < 0:
                created = fs.ensure_dir(name, dir_fd=root)
                folder = fs.open_dir(name, dir_fd=root)
            if name in self._unclean:
                self._remove_tmp_files(name, folder)
            if is_shortened(name):
                self._write_key_file(write.key, name, folder, durable)
            meta, files, pieces = self._write_parts_sync(
                write.key, write.data, folder, durable=durable, slices=write.members
            )
            try:
                signatures[write.key] = fs.write_atomic(META, meta, dir_fd=folder, durable=durable)
                self._remember_written(write.key, write.data, meta, pieces, synced=files if durable else None)
            except UnsyncedError as exc:
                result.unsynced[write.key] = io_error(
                    exc, "syncing", key=write.key, path=self.location(write.key)
                )
                return created
        finally:
            if folder >= 0:
                fs.close(folder)
        result.landed.append(write.key)
        return created

    def _write_key_file(self, key: str, name: str, folder: int, durable: bool) -> None:
        if not self._check_key_file(key, name, folder=folder):
            self._fs.write_atomic(KEY_FILE, key.encode("utf-8"), dir_fd=folder, durable=durable)

    def _delete_sync(self, name: str) -> bool:
        # One rename takes the whole folder out of the namespace atomically; the
        # removal of what is inside happens where no reader looks.
        doomed = f"{secrets.token_hex(8)}"
        try:
            self._fs.rename(name, doomed, src_dir_fd=self._root, dst_dir_fd=self._trash)
        except FileNotFoundError:
            return False
        try:
            # meta.json first: until the rename is durable a power cut may bring the folder
            # back with some of the removals below made durable (its own entries written back
            # before the store folder's), and a session must then be whole or absent, never a
            # meta.json whose key file is gone.
            self._fs.remove_tree(doomed, dir_fd=self._trash, first=(META,))
        except OSError:
            with self._state_lock:  # out of the store already; retried with the next batch
                self._trash_left.add(doomed)
        return True

    def _remove_tmp_files(self, name: str, folder: int) -> None:
        """Remove the tmp files of failed writes from a session folder (best effort).

        Called under the key's stripe lock: every writer of this folder, in any process,
        holds that lock while its tmp file exists, so any tmp file here is a leftover.
        """
        try:
            remove_tmp_files(self._fs, folder)
        except OSError:
            return  # still broken: try again with the next write
        self._unclean.discard(name)

    def _empty_trash_sync(self) -> None:
        """Retry removing deleted folders whose removal failed (best effort).

        Each writer thread takes the whole set, so two threads never remove one folder.
        """
        with self._state_lock:
            doomed, self._trash_left = self._trash_left, set()
        left = set()
        for name in doomed:
            try:
                self._fs.remove_tree(name, dir_fd=self._trash, first=(META,))
            except OSError:
                left.add(name)
        if left:
            with self._state_lock:
                self._trash_left |= left

    # -- upkeep ----------------------------------------------------------------------

    def upkeep_due(self) -> bool:
        """A sweep is due (one ``stat`` of ``.swept``): then the store starts sweeping at open."""
        if not math.isfinite(self._tmp_max_age):
            return False
        try:
            return seconds_to_sweep(self._fs, self._root, period=self._tmp_max_age, now=time.time()) <= 0
        except OSError:
            return False  # the first write starts the upkeep, which tries again

    async def maintain(self) -> None:
        """Sweep orphans (tmp files and trash older than ``tmp_max_age``) while open.

        A sweep visits every session folder, so it does not run at every open: it
        runs when the store's last sweep, by any process, began ``tmp_max_age`` ago
        or more (``.swept``'s modification time; one ``stat`` per open), and again
        every ``tmp_max_age`` while the store stays open. An orphan is older than
        ``tmp_max_age`` by definition, so each is found within one more period.
        The walk takes :data:`CHUNK` names per worker-thread hop, so neither a hop's
        time nor the sweep's memory grows with the number of sessions.
        """
        fs = self._fs
        period = self._tmp_max_age
        if not math.isfinite(period):
            return  # nothing is ever an orphan: no sweep, and nothing written (a dry run, say)
        while True:
            try:
                wait = seconds_to_sweep(fs, self._root, period=period, now=time.time())
            except OSError:
                wait = period  # best effort: try again later
            if wait <= 0:
                try:
                    await anyio.to_thread.run_sync(claim_sweep, fs, self._root)
                    cutoff = time.time() - period
                    sweep = functools.partial(
                        sweep_names,
                        fs,
                        self._root,
                        cutoff=cutoff,
                        locks=self._locks_dir if self._version >= 2 else -1,
                        lock_timeout=self._lock_timeout,
                    )
                    async with aclosing(walk(fs, self._root, sweep)) as counts:
                        async for swept in counts:
                            self.swept += swept
                except OSError:
                    pass  # best effort (a read-only store, say); fsck reports what is left
                wait = period
            await anyio.sleep(max(wait, self.min_sweep_interval))
