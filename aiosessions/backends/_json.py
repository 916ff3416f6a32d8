"""The legacy store: every session in one ``sessions.json``, as OpenClaw keeps it.

The whole file is parsed on load and rewritten (tmp + rename, JSON indented by
2) on every flush, under the store-wide lock file ``.<stem>.lock``. Entries are
kept as :class:`msgspec.Raw` slices of the file, so loading does not decode
them and rewriting copies the untouched ones verbatim. With the write-behind
queue in front, a burst of changes still costs one rewrite.

When :func:`~aiosessions.migrate` (in any process) replaces the file with the
directory store, this backend carries on there: every read looks for the
directory store's FORMAT marker, every rewrite looks again under the store lock
(which migration holds from reading the file until the file is put aside), and
from the first sighting on, reads and writes go to a
:class:`~aiosessions.backends.DirectoryBackend` of the same store. Pending
updates whose base came from the file conflict there (the bytes differ) and are
applied again to the migrated entries, so nothing accepted is lost or applied twice.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from functools import partial
from typing import Final, Literal

import anyio
import msgspec

from .._defaults import (
    DEFAULT_CACHE_BYTES,
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_MAX_ENTRY_BYTES,
    DEFAULT_TMP_MAX_AGE,
)
from .._entry import DECODE_ERRORS
from .._errors import (
    CorruptSessionError,
    LockTimeoutError,
    SessionStoreError,
    StoreFormatError,
    StoreIOError,
    io_error,
)
from .._fs import FileSystem, Signature, UnsyncedError, is_tmp_for
from .._layout import FORMAT_FILE, StorePaths, remove_tmp_files
from .._locks import file_lock
from .._recency import Ordered, position_of, recency_of_stored
from ._base import BatchResult, Write
from ._directory import DirectoryBackend

__all__ = ["JsonBackend"]

Entries = dict[str, msgspec.Raw]

_decoder = msgspec.json.Decoder(Entries)
#: Keys per chunk of a listing; the store checkpoints between chunks, and ``items()`` reads
#: (and decodes) one chunk at a time, so this bounds a step of the event loop.
CHUNK = 512
_encoder = msgspec.json.Encoder()

#: What a rewrite returns instead of a new state when the store has been migrated.
MOVED: Final = "moved"
State = tuple[Entries, Signature]


def decode_legacy(data: bytes, path: str) -> Entries:
    """Parse a legacy file into raw entries. :raises CorruptSessionError: not a JSON object."""
    if not data or data.isspace():  # not data.strip(): that copies the whole file
        raise CorruptSessionError(
            f"{path} is empty ({len(data)} bytes): the legacy store was truncated; restore it "
            "from a backup (look for sessions.json.bak or .pre-directory-migration files)",
            path=path,
        )
    try:
        return _decoder.decode(data)
    except DECODE_ERRORS as exc:
        raise CorruptSessionError(f"{path} is not a JSON object of sessions: {exc}", path=path) from exc


def encode_legacy(entries: Entries) -> bytes:
    """Render raw entries the way OpenClaw writes them: JSON indented by 2."""
    return msgspec.json.format(_encoder.encode(entries), indent=2) + b"\n"


class JsonBackend:
    """All sessions in one JSON file (until a migration moves them; see the module docstring)."""

    #: Each batch rewrites the whole file: one batch per flush, not one rewrite per 1,024 keys.
    batch_size: Final = None

    def __init__(
        self,
        path: StorePaths | str | os.PathLike[str],
        filesystem: FileSystem | None = None,
        *,
        create: bool = True,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        tmp_max_age: float = DEFAULT_TMP_MAX_AGE,
        max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        """The legacy store at ``path`` (``X/sessions.json``).

        :param create: write a new empty file at :meth:`open` when there is none.
        :param lock_timeout: seconds to wait for another process's store lock.
        :param tmp_max_age: seconds after which a tmp file is an orphan.
        :param max_entry_bytes: once migrated: the largest ``meta.json`` read back.
        :param cache_bytes: once migrated: bytes of entries the directory store caches.
        :param filesystem: the :class:`FileSystem` doing every blocking call.
        """
        paths = path if isinstance(path, StorePaths) else StorePaths.of(path)
        fs = filesystem if filesystem is not None else FileSystem()
        self._create = create
        self.paths = paths
        self._tmp_max_age = tmp_max_age
        self._max_entry_bytes = max_entry_bytes
        self._cache_bytes = cache_bytes
        #: Orphaned tmp files of the legacy file removed by the background sweep.
        self.swept = 0
        self._fs = fs
        self._lock_timeout = lock_timeout
        self._name = paths.file.name
        #: The directory store's marker, relative to the folder of the file.
        self._marker = f"{paths.directory.name}/{FORMAT_FILE}"
        self._folder = -1
        self._lock = -1
        # Swapped as a pair on the event loop, never mutated in place: a worker
        # thread builds the next state while readers keep using this one.
        self._entries: Entries = {}
        self._signature: Signature | None = None
        #: Listings: the entries sorted for one version of ``_entries``, and each key's recency.
        self._order: tuple[Entries, Ordered] | None = None
        self._recencies: dict[str, tuple[msgspec.Raw, int | None]] = {}
        #: The last durable rewrite's fsync of the folder failed: rewrite on the next
        #: durable batch even if it changes nothing (a retried delete finds its key gone).
        self._unsynced = False
        #: A rewrite may have left its tmp file (a failed one in this process, whose removal
        #: failed too on a broken disk; or one of a process that died): the next rewrite,
        #: under the lock, removes them. True at first, so the first rewrite looks once.
        self._unclean = True
        #: The directory store that a migration made of the file, once seen: it answers
        #: everything from then on.
        self._moved: DirectoryBackend | None = None
        self._moving: anyio.Lock | None = None

    @property
    def mode(self) -> str:
        """``"json"``; ``"directory"`` once a migration has moved the store."""
        return "json" if self._moved is None else self._moved.mode

    def location(self, key: str | None = None) -> str:
        if self._moved is not None:
            return self._moved.location(key)
        return str(self.paths.file)

    def counters(self) -> Mapping[str, int]:
        counters = {"swept": self.swept}
        if self._moved is not None:
            for name, value in self._moved.counters().items():
                counters[name] = counters.get(name, 0) + value
        return counters

    async def open(self) -> None:
        self._moving = anyio.Lock()
        try:
            state = await anyio.to_thread.run_sync(self._open_sync, self._create)
        except OSError as exc:
            raise io_error(exc, f"opening the store {self.paths.file}", path=str(self.paths.file)) from exc
        if state is None:
            await self._follow()  # migrated between the detection and now
        else:
            self._entries, self._signature = state

    def _open_sync(self, create: bool) -> State | None:
        fs = self._fs
        if create:
            fs.ensure_dirs(str(self.paths.file.parent))
        self._folder = fs.open_dir(str(self.paths.file.parent))
        if not create:
            # Reading needs no lock and no write access: the lock file is opened (made) by
            # the first write, so a store on a read-only disk opens, lists and reads.
            return self._load_sync()
        with file_lock(fs, self._lock_fd_sync(), timeout=self._lock_timeout, what=str(self.paths.lock)):
            found = fs.read_file(self._name, dir_fd=self._folder)
            if found is None:
                signature = fs.write_atomic(self._name, b"{}\n", dir_fd=self._folder, durable=True)
                return {}, signature
            return decode_legacy(found[0], str(self.paths.file)), found[1]

    def _lock_fd_sync(self) -> int:
        """The store lock's descriptor, opening (making) ``.<stem>.lock`` the first time."""
        if self._lock < 0:
            self._lock = self._fs.open_lock_file(self.paths.lock.name, dir_fd=self._folder)
        return self._lock

    async def aclose(self) -> None:
        moved, self._moved = self._moved, None
        if moved is not None:
            await moved.aclose()
        for fd in (self._lock, self._folder):
            if fd >= 0:
                try:
                    self._fs.close(fd)
                except OSError:
                    pass
        self._lock = self._folder = -1

    # -- following a migration -----------------------------------------------------------

    def _marker_exists(self) -> bool:
        """Whether the directory store's FORMAT marker is beside the file: migrate() puts it
        there (with the whole store) in one rename, and from then on that store is the store."""
        try:
            self._fs.stat(self._marker, dir_fd=self._folder)
        except FileNotFoundError:
            return False
        return True

    async def _follow(self) -> DirectoryBackend:
        """The directory store the file was migrated to, opened the first time (once, however
        many tasks get here at the same time)."""
        assert self._moving is not None, "the backend is not open"
        async with self._moving:
            if self._moved is None:
                moved = DirectoryBackend(
                    self.paths,
                    self._fs,
                    create=False,
                    lock_timeout=self._lock_timeout,
                    max_entry_bytes=self._max_entry_bytes,
                    cache_bytes=self._cache_bytes,
                    tmp_max_age=self._tmp_max_age,
                )
                try:
                    await moved.open()
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await moved.aclose()
                    raise
                self._moved = moved
                self._entries, self._signature = {}, None  # the file is history: free it
            return self._moved

    # -- reads -----------------------------------------------------------------------------

    def _load_sync(self) -> State | None:
        """Read and parse the file; None when the store was migrated."""
        if self._marker_exists():
            return None
        found = self._fs.read_file(self._name, dir_fd=self._folder)
        if found is None:
            if self._marker_exists():  # put aside between the two looks
                return None
            raise StoreIOError(None, f"the legacy store {self.paths.file} disappeared", str(self.paths.file))
        return decode_legacy(found[0], str(self.paths.file)), found[1]

    async def _fresh(self) -> Entries | DirectoryBackend:
        """The entries as on disk now (two stats, and a reload in a worker thread if the
        file changed), or the directory store once the file has been migrated."""
        if self._moved is not None:
            return self._moved
        try:
            # The marker first: between a migration's switch and its backup rename the file
            # is unchanged, while writers of the directory store already change sessions.
            if self._marker_exists():
                return await self._follow()
            current = Signature.of(self._fs.stat(self._name, dir_fd=self._folder))
        except FileNotFoundError:
            current = None
        except OSError as exc:
            raise io_error(exc, f"checking {self.paths.file}", path=str(self.paths.file)) from exc
        if current != self._signature:
            try:
                state = await anyio.to_thread.run_sync(self._load_sync)
            except OSError as exc:
                raise io_error(exc, f"reading {self.paths.file}", path=str(self.paths.file)) from exc
            if state is None:
                return await self._follow()
            self._entries, self._signature = state
        return self._entries

    async def read(self, key: str) -> bytes | None:
        entries = await self._fresh()
        if isinstance(entries, DirectoryBackend):
            return await entries.read(key)
        raw = entries.get(key)
        return None if raw is None else bytes(raw)

    async def read_many(self, keys: Sequence[str]) -> list[bytes | BaseException | None]:
        entries = await self._fresh()
        if isinstance(entries, DirectoryBackend):
            return await entries.read_many(keys)
        return [None if (raw := entries.get(key)) is None else bytes(raw) for key in keys]

    async def exists(self, key: str) -> bool:
        entries = await self._fresh()
        if isinstance(entries, DirectoryBackend):
            return await entries.exists(key)
        return key in entries

    async def key_chunks(self, prefix: str = "") -> AsyncIterator[list[str]]:
        entries = await self._fresh()
        if isinstance(entries, DirectoryBackend):
            chunks = entries.key_chunks(prefix)
            try:
                async for chunk in chunks:
                    yield chunk
            finally:
                close = getattr(chunks, "aclose", None)  # an async generator: close it now
                if close is not None:
                    await close()
            return
        keys = self._ordered(entries).with_prefix(prefix) if prefix else list(entries)
        for start in range(0, len(keys), CHUNK):
            yield keys[start : start + CHUNK]

    # -- upkeep ----------------------------------------------------------------------------

    def upkeep_due(self) -> bool:
        return True  # a sweep at every open: one listing of the file's folder

    async def maintain(self) -> None:
        """Remove this store's orphaned ``.<name>.*.tmp`` files older than ``tmp_max_age``."""
        try:
            self.swept += await anyio.to_thread.run_sync(self._sweep_sync)
        except OSError:
            pass  # best effort

    def _sweep_sync(self) -> int:
        cutoff = time.time() - self._tmp_max_age
        return remove_tmp_files(self._fs, self._folder, cutoff=cutoff, match=partial(is_tmp_for, self._name))

    def _remove_tmp_files(self) -> None:
        """Remove the tmp files of failed rewrites (best effort; called under the lock).

        Every writer of the legacy file holds the store lock while its tmp file exists,
        so a ``.<name>.*.tmp`` beside the file now is a leftover.
        """
        try:
            remove_tmp_files(self._fs, self._folder, match=partial(is_tmp_for, self._name))
        except OSError:
            return  # still broken: try again with the next rewrite
        self._unclean = False

    def _ordered(self, entries: Entries) -> Ordered:
        """``entries`` sorted by recency and by key, built once per version of the file.

        An entry's recency is decoded once: an unchanged entry keeps its ``Raw`` object
        across this process's rewrites, so only what changed is decoded again.
        """
        if self._order is not None and self._order[0] is entries:
            return self._order[1]
        memo = self._recencies
        pairs = []
        for key, raw in entries.items():
            seen = memo.get(key)
            if seen is None or seen[0] is not raw:
                seen = memo[key] = (raw, recency_of_stored(raw))
            pairs.append((key, seen[1]))
        if len(memo) > len(entries):
            self._recencies = {key: memo[key] for key in entries}
        ordered = Ordered(pairs)
        self._order = (entries, ordered)
        return ordered

    async def newest(
        self, limit: int, *, after: tuple[str, int | None] | None = None
    ) -> list[tuple[str, int | None]]:
        start = position_of(after)
        entries = await self._fresh()
        if isinstance(entries, DirectoryBackend):
            return await entries.newest(limit, after=after)
        return self._ordered(entries).newest(limit, start)

    async def count(self) -> int:
        entries = await self._fresh()
        if isinstance(entries, DirectoryBackend):
            return await entries.count()
        return len(entries)

    # -- writes ----------------------------------------------------------------------------

    async def write_batch(self, writes: Sequence[Write], *, durable: bool) -> BatchResult:
        if self._moved is None:
            result, state = await anyio.to_thread.run_sync(self._write_sync, writes, durable)
            if state != MOVED:
                if state is not None:
                    self._entries, self._signature = state
                return result
            # Migrated: nothing was written to the file. The same batch goes to the
            # directory store; updates based on the file's bytes conflict there and are
            # applied again to the migrated entries.
            try:
                await self._follow()
            except (SessionStoreError, OSError) as exc:
                error = exc if isinstance(exc, SessionStoreError) else io_error(exc, "opening the store")
                return BatchResult(failed={write.key: error for write in writes})
        assert self._moved is not None
        return await self._moved.write_batch(writes, durable=durable)

    def _write_sync(
        self, writes: Sequence[Write], durable: bool
    ) -> tuple[BatchResult, State | Literal["moved"] | None]:
        result = BatchResult()
        fs = self._fs
        error: BaseException
        try:
            with file_lock(fs, self._lock_fd_sync(), timeout=self._lock_timeout, what=str(self.paths.lock)):
                try:
                    # Under the lock: a migration holds it from reading the file until the file
                    # is put aside, so the file is rewritten only while it is still the store.
                    if self._marker_exists():
                        return result, MOVED
                    return self._apply_sync(writes, durable, result)
                except (CorruptSessionError, StoreFormatError, OSError) as exc:
                    self._unclean = self._unclean or isinstance(exc, OSError)
                    error = (
                        io_error(exc, f"rewriting {self.paths.file}", path=str(self.paths.file))
                        if isinstance(exc, OSError)
                        else exc
                    )
                    result.landed.clear()
                    result.conflicts.clear()
                    result.failed = {write.key: error for write in writes}
                    return result, None
        except OSError as exc:  # only opening or taking the lock: the rewrite catches its own errors
            # Say what was being done, and where: on a read-only disk or folder the first
            # write fails here, making the lock file (the message names both files).
            error = (
                exc
                if isinstance(exc, LockTimeoutError)
                else io_error(exc, f"writing {self.paths.file}", path=str(self.paths.lock))
            )
            result.failed = {write.key: error for write in writes}
            return result, None

    def _apply_sync(
        self, writes: Sequence[Write], durable: bool, result: BatchResult
    ) -> tuple[BatchResult, State | None]:
        found = self._fs.read_file(self._name, dir_fd=self._folder)
        if found is None:
            # Never recreate the file: it may have been put aside by hand, or lost.
            raise StoreIOError(None, f"the legacy store {self.paths.file} disappeared", str(self.paths.file))
        data, signature = found
        entries = self._entries if signature == self._signature else decode_legacy(data, str(self.paths.file))
        updated = dict(entries)
        changed = False
        for write in writes:
            raw = updated.get(write.key)
            if not write.blind:
                current = None if raw is None else bytes(raw)
                if current != write.expected:
                    result.conflicts[write.key] = current
                    continue
            if write.data is None:
                changed |= updated.pop(write.key, None) is not None
            else:
                updated[write.key] = msgspec.Raw(write.data)
                changed = True
            result.landed.append(write.key)
        if changed or (durable and self._unsynced):
            if self._unclean:
                self._remove_tmp_files()
            # The rewrite keeps the file's permissions: another program (the gateway that
            # made it, a backup job) may read it as a group or another user.
            keep = stat.S_IMODE(self._fs.stat(self._name, dir_fd=self._folder).st_mode)
            try:
                signature = self._fs.write_atomic(
                    self._name, encode_legacy(updated), dir_fd=self._folder, durable=durable, mode=keep
                )
            except UnsyncedError as exc:
                # The new file is in place (readers see it) but its durability is unknown:
                # the queue writes these keys again rather than trusting another fsync.
                self._unsynced = True
                error = io_error(exc, f"syncing {self.paths.file}", path=str(self.paths.file))
                result.unsynced = {key: error for key in result.landed}
                result.landed.clear()
                try:  # the file holds `updated`: keep it, so the rewrite's digests match
                    return result, (updated, Signature.of(self._fs.stat(self._name, dir_fd=self._folder)))
                except OSError:
                    return result, None
            self._unsynced = False
        return result, (updated, signature)
