"""The legacy store: every session in one ``sessions.json``, as OpenClaw keeps it.

The whole file is parsed on load and rewritten (tmp + rename, JSON indented by
2) on every flush, under the store-wide lock file ``.<stem>.lock``. Entries are
kept as :class:`msgspec.Raw` slices of the file, so loading does not decode
them and rewriting copies the untouched ones verbatim. With the write-behind
queue in front, a burst of changes still costs one rewrite.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Final

import anyio
import msgspec

from .._defaults import DEFAULT_LOCK_TIMEOUT, DEFAULT_TMP_MAX_AGE
from .._entry import DECODE_ERRORS
from .._errors import CorruptSessionError, LockTimeoutError, StoreFormatError, StoreIOError, io_error
from .._fs import FileSystem, Signature, UnsyncedError, is_tmp_for
from .._layout import FORMAT_FILE, StorePaths
from .._locks import acquire_file_lock_sync, release_file_lock
from ._base import BatchResult, Write

__all__ = ["JsonBackend"]

Entries = dict[str, msgspec.Raw]

_decoder = msgspec.json.Decoder(Entries)
#: Keys per chunk of a listing; the store checkpoints between chunks, and ``items()`` reads
#: (and decodes) one chunk at a time, so this bounds a step of the event loop.
CHUNK = 512
_encoder = msgspec.json.Encoder()


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
    """All sessions in one JSON file."""

    mode: Final = "json"
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
    ) -> None:
        """The legacy store at ``path`` (``X/sessions.json``).

        :param create: write a new empty file at :meth:`open` when there is none.
        :param lock_timeout: seconds to wait for another process's store lock.
        :param tmp_max_age: seconds after which a tmp file is an orphan.
        :param filesystem: the :class:`FileSystem` doing every blocking call.
        """
        paths = path if isinstance(path, StorePaths) else StorePaths.of(path)
        fs = filesystem if filesystem is not None else FileSystem()
        self._create = create
        self.paths = paths
        self._tmp_max_age = tmp_max_age
        #: Orphaned tmp files of the legacy file removed by the background sweep.
        self.swept = 0
        self._fs = fs
        self._lock_timeout = lock_timeout
        self._name = paths.file.name
        self._folder = -1
        self._lock = -1
        # Swapped as a pair on the event loop, never mutated in place: a worker
        # thread builds the next state while readers keep using this one.
        self._entries: Entries = {}
        self._signature: Signature | None = None
        #: The last durable rewrite's fsync of the folder failed: rewrite on the next
        #: durable batch even if it changes nothing (a retried delete finds its key gone).
        self._unsynced = False
        #: A rewrite may have left its tmp file (a failed one in this process, whose removal
        #: failed too on a broken disk; or one of a process that died): the next rewrite,
        #: under the lock, removes them. True at first, so the first rewrite looks once.
        self._unclean = True

    def location(self, key: str | None = None) -> str:
        return str(self.paths.file)

    def counters(self) -> Mapping[str, int]:
        return {"swept": self.swept}

    async def open(self) -> None:
        try:
            self._entries, self._signature = await anyio.to_thread.run_sync(self._open_sync, self._create)
        except OSError as exc:
            raise io_error(exc, f"opening the store {self.paths.file}", path=str(self.paths.file)) from exc

    def _open_sync(self, create: bool) -> tuple[Entries, Signature]:
        fs = self._fs
        if create:
            fs.ensure_dirs(str(self.paths.file.parent))
        self._folder = fs.open_dir(str(self.paths.file.parent))
        if not create:
            # Reading needs no lock and no write access: the lock file is opened (made) by
            # the first write, so a store on a read-only disk opens, lists and reads.
            return self._load_sync()
        self._lock_fd_sync()
        acquire_file_lock_sync(fs, self._lock, timeout=self._lock_timeout, what=str(self.paths.lock))
        try:
            found = fs.read_file(self._name, dir_fd=self._folder)
            if found is None:
                signature = fs.write_atomic(self._name, b"{}\n", dir_fd=self._folder, durable=True)
                return {}, signature
            return decode_legacy(found[0], str(self.paths.file)), found[1]
        finally:
            release_file_lock(fs, self._lock)

    def _lock_fd_sync(self) -> int:
        """The store lock's descriptor, opening (making) ``.<stem>.lock`` the first time."""
        if self._lock < 0:
            self._lock = self._fs.open_lock_file(self.paths.lock.name, dir_fd=self._folder)
        return self._lock

    async def aclose(self) -> None:
        for fd in (self._lock, self._folder):
            if fd >= 0:
                try:
                    self._fs.close(fd)
                except OSError:
                    pass
        self._lock = self._folder = -1

    def _load_sync(self) -> tuple[Entries, Signature]:
        found = self._fs.read_file(self._name, dir_fd=self._folder)
        if found is None:
            raise self._missing_error()
        return decode_legacy(found[0], str(self.paths.file)), found[1]

    def _migrated(self) -> bool:
        """Whether a directory store with its FORMAT marker exists beside the legacy file."""
        try:
            self._fs.stat(str(self.paths.directory / FORMAT_FILE))
        except FileNotFoundError:
            return False
        return True

    def _missing_error(self) -> Exception:
        if self._migrated():
            return StoreFormatError(
                f"{self.paths.file} was migrated to the directory store {self.paths.directory} "
                "by another process; reopen the store (it will open in directory mode)"
            )
        return StoreIOError(None, f"the legacy store {self.paths.file} disappeared", str(self.paths.file))

    async def maintain(self) -> None:
        """Remove this store's orphaned ``.<name>.*.tmp`` files older than ``tmp_max_age``."""
        try:
            self.swept += await anyio.to_thread.run_sync(self._sweep_sync)
        except OSError:
            pass  # best effort

    def _sweep_sync(self) -> int:
        cutoff = time.time() - self._tmp_max_age
        swept = 0
        for name in self._fs.listdir(self._folder):
            if is_tmp_for(self._name, name):
                try:
                    if self._fs.stat(name, dir_fd=self._folder).st_mtime < cutoff:
                        self._fs.unlink(name, dir_fd=self._folder)
                        swept += 1
                except OSError:
                    continue
        return swept

    def _remove_tmp_files(self) -> None:
        """Remove the tmp files of failed rewrites (best effort; called under the lock).

        Every writer of the legacy file holds the store lock while its tmp file exists,
        so a ``.<name>.*.tmp`` beside the file now is a leftover.
        """
        try:
            for name in self._fs.listdir(self._folder):
                if is_tmp_for(self._name, name):
                    self._fs.unlink(name, dir_fd=self._folder)
        except OSError:
            return  # still broken: try again with the next rewrite
        self._unclean = False

    async def _fresh(self) -> Entries:
        """The entries as on disk now: a stat, and a reload in a worker thread if it changed."""
        try:
            current = Signature.of(self._fs.stat(self._name, dir_fd=self._folder))
        except FileNotFoundError:
            current = None
        except OSError as exc:
            raise io_error(exc, f"checking {self.paths.file}", path=str(self.paths.file)) from exc
        if current != self._signature:
            try:
                self._entries, self._signature = await anyio.to_thread.run_sync(self._load_sync)
            except OSError as exc:
                raise io_error(exc, f"reading {self.paths.file}", path=str(self.paths.file)) from exc
        return self._entries

    async def read(self, key: str) -> bytes | None:
        raw = (await self._fresh()).get(key)
        return None if raw is None else bytes(raw)

    async def read_many(self, keys: Sequence[str]) -> list[bytes | BaseException | None]:
        entries = await self._fresh()
        return [None if (raw := entries.get(key)) is None else bytes(raw) for key in keys]

    async def exists(self, key: str) -> bool:
        return key in await self._fresh()

    async def key_chunks(self, prefix: str = "") -> AsyncIterator[list[str]]:
        keys = [key for key in await self._fresh() if key.startswith(prefix)]
        for start in range(0, len(keys), CHUNK):
            yield keys[start : start + CHUNK]

    async def write_batch(self, writes: Sequence[Write], *, durable: bool) -> BatchResult:
        result, state = await anyio.to_thread.run_sync(self._write_sync, writes, durable)
        if state is not None:
            self._entries, self._signature = state
        return result

    def _write_sync(
        self, writes: Sequence[Write], durable: bool
    ) -> tuple[BatchResult, tuple[Entries, Signature] | None]:
        result = BatchResult()
        fs = self._fs
        error: BaseException
        try:
            lock = self._lock_fd_sync()
            acquire_file_lock_sync(fs, lock, timeout=self._lock_timeout, what=str(self.paths.lock))
        except (LockTimeoutError, OSError) as exc:
            # Say what was being done, and where: on a read-only disk or folder the first
            # write fails here, making the lock file (the message names both files).
            error = (
                exc
                if isinstance(exc, LockTimeoutError)
                else io_error(exc, f"writing {self.paths.file}", path=str(self.paths.lock))
            )
            result.failed = {write.key: error for write in writes}
            return result, None
        try:
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
        finally:
            try:
                release_file_lock(fs, lock)
            except OSError:
                pass

    def _apply_sync(
        self, writes: Sequence[Write], durable: bool, result: BatchResult
    ) -> tuple[BatchResult, tuple[Entries, Signature] | None]:
        found = self._fs.read_file(self._name, dir_fd=self._folder)
        if found is None or self._migrated():
            # Never recreate or rewrite the legacy file once a migration has switched
            # the store over (between its switch and its backup rename, the file is
            # still there but no longer the truth).
            raise self._missing_error()
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
