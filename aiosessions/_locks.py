"""Locks: per-key async locks in one process, flock-based locks across processes.

In-process, each key gets an :class:`anyio.Lock` on demand, reference-counted
and dropped the moment nobody holds or waits for it, so the table never grows
with the number of keys ever seen.

Across processes, locks are ``flock`` on lock files that are never renamed or
deleted (a lock on a replaced file would guard the wrong inode; deleting a lock
file that may be held lets two holders in). ``flock`` belongs to the open file
description, so two descriptors exclude each other even inside one process.
Waiting polls with ``LOCK_NB`` and a growing sleep, so it honours a timeout and,
in async code, cancellation.
"""

from __future__ import annotations

import errno
import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import anyio.lowlevel

from ._errors import LockTimeoutError
from ._fs import FileSystem

__all__ = [
    "KeyLocks",
    "acquire_file_lock",
    "acquire_file_lock_sync",
    "file_lock",
    "release_file_lock",
    "store_lock",
]

_FIRST_WAIT = 0.001
_LONGEST_WAIT = 0.05


class _Slot:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        # Taking a free lock does not yield (fast_acquire): _Hold yields before it with a
        # plain checkpoint, half the cost of the shielded one anyio.Lock adds after.
        self.lock = anyio.Lock(fast_acquire=True)
        self.users = 0


class KeyLocks:
    """Per-key async locks that exist only while in use."""

    #: Locks let go of are kept for the next keys, up to this many: making an anyio.Lock
    #: asks sniffio which loop runs (~5 µs), as much as the rest of taking it.
    SPARE = 32

    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}
        self._spare: list[_Slot] = []

    def __len__(self) -> int:
        """How many keys have a lock right now (held or waited for)."""
        return len(self._slots)

    def hold(self, key: str) -> _Hold:
        """Hold the lock of ``key`` for the body of an ``async with``."""
        return _Hold(self, key)

    def _take(self, key: str) -> _Slot:
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = self._spare.pop() if self._spare else _Slot()
        slot.users += 1
        return slot

    def _let_go(self, key: str, slot: _Slot) -> None:
        slot.users -= 1
        if slot.users == 0:
            # Nobody holds or waits for it: as good as new for another key.
            del self._slots[key]
            if len(self._spare) < self.SPARE:
                self._spare.append(slot)


class _Hold:
    """``async with locks.hold(key)``: a plain class, cheaper than a generator-based one."""

    __slots__ = ("_key", "_locks", "_slot")

    def __init__(self, locks: KeyLocks, key: str) -> None:
        self._locks = locks
        self._key = key

    async def __aenter__(self) -> None:
        slot = self._slot = self._locks._take(self._key)
        try:
            # Taking even a free lock is a checkpoint, and for a write whose entry is cached
            # it is the only one: without it a task looping over writes would never let
            # another task (or the flusher) run. Before the lock, so a cancellation here
            # leaves nothing taken.
            await anyio.lowlevel.checkpoint()
            await slot.lock.acquire()
        except BaseException:
            self._locks._let_go(self._key, slot)
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._slot.lock.release()
        self._locks._let_go(self._key, self._slot)


def _try_lock(fs: FileSystem, fd: int) -> bool:
    try:
        fs.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _timeout_error(what: str, timeout: float) -> LockTimeoutError:
    return LockTimeoutError(
        f"could not lock {what} within {timeout:g}s: another process holds it "
        "(raise lock_timeout, or find the process that holds the lock)"
    )


def acquire_file_lock_sync(fs: FileSystem, fd: int, *, timeout: float, what: str) -> None:
    """Take an exclusive flock on ``fd``, waiting at most ``timeout`` seconds (worker threads).

    :raises LockTimeoutError: still held by someone else after ``timeout``.
    """
    deadline = time.monotonic() + timeout
    wait = _FIRST_WAIT
    while not _try_lock(fs, fd):
        if time.monotonic() >= deadline:
            raise _timeout_error(what, timeout)
        time.sleep(wait)
        wait = min(wait * 2, _LONGEST_WAIT)


async def acquire_file_lock(fs: FileSystem, fd: int, *, timeout: float, what: str) -> None:
    """Take an exclusive flock on ``fd`` without blocking the event loop; cancellable.

    :raises LockTimeoutError: still held by someone else after ``timeout``.
    """
    deadline = anyio.current_time() + timeout
    wait = _FIRST_WAIT
    while not _try_lock(fs, fd):
        if anyio.current_time() >= deadline:
            raise _timeout_error(what, timeout)
        await anyio.sleep(wait)
        wait = min(wait * 2, _LONGEST_WAIT)


def release_file_lock(fs: FileSystem, fd: int) -> None:
    """Release a lock taken by one of the acquire functions."""
    fs.flock(fd, fcntl.LOCK_UN)


@contextmanager
def file_lock(fs: FileSystem, fd: int, *, timeout: float, what: str) -> Iterator[None]:
    """Hold the flock of ``fd`` for the body of a ``with`` (worker threads).

    :raises LockTimeoutError: still held by someone else after ``timeout``.
    """
    acquire_file_lock_sync(fs, fd, timeout=timeout, what=what)
    try:
        yield
    finally:
        try:
            release_file_lock(fs, fd)
        except OSError:
            pass  # closing the descriptor releases it in any case


@contextmanager
def store_lock(
    fs: FileSystem, name: str, *, dir_fd: int | None, timeout: float, what: str, create: bool = True
) -> Iterator[None]:
    """Open the lock file ``name`` (creating it), hold its flock for the body, close it.

    For occasional lockers (fsck, migration); a writer keeps its lock files open.
    ``create=False``, for a reader that must write nothing: a lock file that does not
    exist is not made, and the body runs without it (no writer has ever taken it).
    """
    try:
        fd = fs.open_lock_file(name, dir_fd=dir_fd, create=create)
    except FileNotFoundError:
        if create:
            raise
        yield
        return
    try:
        with file_lock(fs, fd, timeout=timeout, what=what):
            yield
    finally:
        try:
            fs.close(fd)
        except OSError:
            pass
