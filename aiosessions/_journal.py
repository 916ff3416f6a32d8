"""The batch journal of a directory store (format version 3): one fsync makes a durable batch
durable, whatever its number of keys (docs/design.md, "Durable batches").

A durable batch stages its writes as tmp files (nothing synced), appends one record holding
what it writes to ``.journal`` in the store folder and fsyncs it, then renames the tmp files
into place and returns: every reader, in every process, reads ``meta.json`` as before. The
journal matters only after a power cut, when those renames and files may be lost: the first
open after the machine started again replays it. Which start that is, the journal's header
says: the boot id (``/proc/sys/kernel/random/boot_id``) of the machine's start that wrote
it. The same boot id means only processes died, whose renames the page cache holds; another
means the records must be replayed. A checkpoint (``syncfs``, then the journal cut back to its
header) bounds its size.

- **Header**: :data:`MAGIC` then the boot id, :data:`HEADER_SIZE` bytes in all.
- **Record**: ``b"REC1"``, the payload's length and CRC-32 (little-endian 32-bit each), the
  payload: a msgpack array of ``[folder name, key, meta.json bytes or nil (a delete),
  {digest: blob bytes}]``, the blobs being those the ``meta.json`` names that may not be
  durable otherwise. A record cut short or failing its CRC ends the journal: it was never
  fsynced, so no write it holds was acknowledged. (One the disk damaged after its fsync ends
  it too, and what follows it is not replayed: SQLite's write-ahead log stops the same way.)

Every call goes through the store's :class:`~aiosessions._fs.FileSystem` (the fault and
power-loss suites see them); the caller holds :meth:`Journal.locked` around appending, the
renames that follow, checkpoints and recovery, so no checkpoint cuts a batch in two.
"""

from __future__ import annotations

import functools
import os
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Final

import msgspec

from ._fs import FileSystem
from ._locks import acquire_file_lock_sync, release_file_lock

__all__ = ["HEADER_SIZE", "JOURNAL", "MAGIC", "Entry", "Journal", "current_boot"]

JOURNAL: Final = ".journal"
MAGIC: Final = b"aiosessions journal 1 "
#: The header: MAGIC, the boot id padded with spaces, a newline.
HEADER_SIZE: Final = 64
_BOOT_BYTES: Final = HEADER_SIZE - len(MAGIC) - 1
_RECORD: Final = struct.Struct("<4sII")
_TAG: Final = b"REC1"
_OPEN_FLAGS: Final = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC

#: One write of a batch: folder name, key, ``meta.json`` bytes (None: deleted), blobs by digest.
Entry = tuple[str, str, "bytes | None", "dict[str, bytes]"]
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(list[tuple[str, str, bytes | None, dict[str, bytes]]]).decode


@functools.cache
def current_boot() -> str:
    """This start of the machine's boot id ('' where there is none: no journal then). Read
    once per process: a process never outlives the start of the machine it runs on."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as source:
            return source.read(64).decode("ascii", "replace").strip()[:_BOOT_BYTES]
    except OSError:
        return ""


def header(boot: str) -> bytes:
    return MAGIC + boot.encode("ascii", "replace").ljust(_BOOT_BYTES)[:_BOOT_BYTES] + b"\n"


def record(entries: Sequence[Entry]) -> bytes:
    payload = _encode(entries)
    return _RECORD.pack(_TAG, len(payload), zlib.crc32(payload)) + payload


def parse(data: bytes) -> tuple[str | None, list[list[Entry]]]:
    """The boot id of a journal's bytes (None: no whole header) and its whole records, in order."""
    if len(data) < HEADER_SIZE or not data.startswith(MAGIC):
        return None, []
    boot = data[len(MAGIC) : HEADER_SIZE - 1].decode("ascii", "replace").rstrip()
    records: list[list[Entry]] = []
    at = HEADER_SIZE
    while at + _RECORD.size <= len(data):
        tag, size, crc = _RECORD.unpack_from(data, at)
        payload = data[at + _RECORD.size : at + _RECORD.size + size]
        if tag != _TAG or len(payload) != size or zlib.crc32(payload) != crc:
            break  # cut short by a crash before its fsync: nothing in it was acknowledged
        try:
            records.append([tuple(entry) for entry in _decode(payload)])  # type: ignore[misc]
        except msgspec.DecodeError:
            break
        at += _RECORD.size + size
    return boot, records


class Journal:
    """``.journal`` of one open store folder (``root``): append, read, cut back."""

    def __init__(self, fs: FileSystem, root: int, *, where: str, lock_timeout: float) -> None:
        self._fs = fs
        self._root = root
        self.where = where
        self._lock_timeout = lock_timeout
        self._fd = -1
        #: Threads of this process (flock does not exclude them from one another).
        self._mutex = threading.Lock()
        self.boot = current_boot()
        #: Bytes in the file after this process's last append or cut (others append too).
        self.size = 0

    def open(self) -> None:
        """Open (or make) the journal; a new one gets its header and is made durable."""
        fs = self._fs
        try:
            st = fs.stat(JOURNAL, dir_fd=self._root)
        except FileNotFoundError:
            st = None
        self._fd = fs.open(JOURNAL, _OPEN_FLAGS, dir_fd=self._root)
        if st is None:
            try:
                with self.locked():
                    if fs.fstat(self._fd).st_size == 0:
                        self._cut()
                        fs.fsync(self._root)  # its name too: records are worth nothing without it
            except BaseException:
                try:
                    self.close()  # and with it the lock, should letting it go have failed
                except OSError:
                    pass
                raise

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            self._fs.close(fd)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the journal against this process's threads and other processes."""
        self.take()
        try:
            yield
        finally:
            self.let_go()

    def take(self) -> None:
        """Take the journal, to be let go by :meth:`let_go` (maybe in another thread)."""
        self._mutex.acquire()
        try:
            acquire_file_lock_sync(self._fs, self._fd, timeout=self._lock_timeout, what=self.where)
        except BaseException:
            self._mutex.release()
            raise

    def let_go(self) -> None:
        try:
            release_file_lock(self._fs, self._fd)
        except OSError:
            pass  # closing the descriptor releases it in any case
        finally:
            self._mutex.release()

    def read(self) -> tuple[str | None, list[list[Entry]]]:
        """The header's boot id and the whole records (under the lock)."""
        found = self._fs.read_file(JOURNAL, dir_fd=self._root)
        return parse(found[0] if found is not None else b"")

    def append(self, entries: Sequence[Entry]) -> None:
        """Append one record and fsync it (under the lock). On an error its outcome is
        unknown, as a failed fsync's: the record may come back after a power cut."""
        fs = self._fs
        if fs.fstat(self._fd).st_size < HEADER_SIZE:
            # A cut that failed half-way (here or in another process) left no whole header;
            # whatever came before it is durable elsewhere, so it is cut again, or this record
            # would follow a header no start of the machine can read.
            self._cut()
        fs.write_all(self._fd, record(entries))
        fs.fsync(self._fd)
        self.size = fs.fstat(self._fd).st_size

    def cut(self) -> None:
        """Cut the journal back to a header of this boot, durable (under the lock): once
        everything its records wrote is durable, or they were never needed."""
        self._cut()

    def _cut(self) -> None:
        fs = self._fs
        fs.truncate(self._fd, 0)
        fs.write_all(self._fd, header(self.boot))
        fs.fsync(self._fd)
        self.size = HEADER_SIZE
