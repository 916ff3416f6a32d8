"""Every blocking filesystem call of aiosessions, behind one object.

:class:`FileSystem` wraps each system call the library makes (open, write,
fsync, rename, flock ...) as a method, and builds the compound operations
(read a file, write one atomically, remove a session folder) from those methods
only. The store and its backends never touch ``os`` directly: tests subclass
:class:`FileSystem` to fail the Nth call, slow the disk or forget what was not
fsynced, and pass the instance as ``open_store(..., filesystem=...)``.

Everything here is synchronous and meant to run in a worker thread, a whole
compound operation (or a whole batch of them) per thread hop. Paths are relative
to directory file descriptors and opened with ``O_NOFOLLOW``, so a symlink
planted inside a store is never followed out of it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import secrets
import stat as stat_module
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import ClassVar, NamedTuple

__all__ = ["FileSystem", "Signature", "TMP_SUFFIX", "UnsyncedError", "is_tmp_for", "is_tmp_name"]

FILE_MODE = 0o600
DIR_MODE = 0o700
TMP_SUFFIX = ".tmp"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO planted where a file should be must not wait for a writer
# (forever, in a worker thread no cancel scope can stop); for regular files it changes nothing.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
#: preadv2 flag (Linux 4.14+): fail with EAGAIN instead of waiting for the disk.
_RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _load_syncfs() -> Callable[[int], int] | None:
    """libc's ``syncfs(2)`` (Linux; Python's ``os`` has no wrapper), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


#: ctypes releases the GIL around the call, so other threads run while it waits.
_SYNCFS = _load_syncfs()


class Signature(NamedTuple):
    """What tells one version of a file from another without reading it.

    Every write makes a new inode (tmp + rename), so a change of inode, size or
    modification time means the file was replaced.
    """

    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Signature:
        return cls(st.st_ino, st.st_size, st.st_mtime_ns)


class TooLargeError(OSError):
    """A file larger than the caller allows (EFBIG)."""


class NotRegularFileError(IsADirectoryError):
    """A directory, FIFO, socket or device where a regular file should be."""


class UnsyncedError(OSError):
    """The new file replaced the old one, but fsyncing its directory failed.

    Readers (and other processes) already see the new bytes; whether they
    survive a crash is unknown. Retrying the fsync proves nothing after a failed
    fsync: the caller writes the file again.
    """


def is_tmp_for(target: str, name: str) -> bool:
    """Whether ``name`` is a tmp file :meth:`FileSystem.write_atomic` makes for ``target``.

    Exactly its pattern: ``.X.json.json.<pid>-<rand>.tmp`` belongs to ``X.json.json``,
    not to ``X.json``, although both start with ``.X.json.``.
    """
    prefix = f".{target}."
    if not (name.startswith(prefix) and name.endswith(TMP_SUFFIX)):
        return False
    pid, dash, rand = name[len(prefix) : -len(TMP_SUFFIX)].partition("-")
    return bool(dash) and pid.isdigit() and len(rand) > 0 and all(c in "0123456789abcdef" for c in rand)


def is_tmp_name(name: str) -> bool:
    """Whether ``name`` is one of the library's in-flight temporary files."""
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


class FileSystem:
    """The system calls of the library (override them to inject faults) and the
    compound operations built on them."""

    # -- system calls: one method each -------------------------------------------------

    def open(self, path: str, flags: int, mode: int = FILE_MODE, *, dir_fd: int | None = None) -> int:
        return os.open(path, flags, mode, dir_fd=dir_fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def read(self, fd: int, size: int) -> bytes:
        return os.read(fd, size)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def truncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)

    def fstat(self, fd: int) -> os.stat_result:
        return os.fstat(fd)

    def stat(self, path: str, *, dir_fd: int | None = None) -> os.stat_result:
        return os.stat(path, dir_fd=dir_fd, follow_symlinks=False)

    def rename(
        self, src: str, dst: str, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None
    ) -> None:
        os.replace(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    def mkdir(self, path: str, *, dir_fd: int | None = None) -> None:
        os.mkdir(path, DIR_MODE, dir_fd=dir_fd)

    def rmdir(self, path: str, *, dir_fd: int | None = None) -> None:
        os.rmdir(path, dir_fd=dir_fd)

    def unlink(self, path: str, *, dir_fd: int | None = None) -> None:
        os.unlink(path, dir_fd=dir_fd)

    def scandir(self, fd: int) -> AbstractContextManager[Iterator[os.DirEntry[str]]]:
        return os.scandir(fd)

    def listdir(self, fd: int) -> list[str]:
        # os.listdir(fd) reads through a dup of fd, and dups share one directory
        # offset: two threads listing the same folder would each see part of it.
        # A fresh open of "." has an offset of its own.
        own = os.open(".", _DIR_FLAGS, dir_fd=fd)
        try:
            return os.listdir(own)
        finally:
            os.close(own)

    def flock(self, fd: int, operation: int) -> None:
        fcntl.flock(fd, operation)

    def syncfs(self, fd: int) -> None:
        """``syncfs(2)``: write back and commit everything of the filesystem holding ``fd``.

        Whether it reports write-back errors, and whether a filesystem honours it,
        is for the caller to know (see ``_barrier``); ENOSYS where there is none.
        """
        if _SYNCFS is None:
            raise OSError(errno.ENOSYS, "syncfs(2) is not available on this platform")
        if _SYNCFS(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    #: The system-call methods above. Everything below is built on them, so a
    #: subclass that wraps these sees (and can fail) every call the library makes.
    SYSCALLS: ClassVar[tuple[str, ...]] = (
        "open",
        "close",
        "read",
        "write",
        "fsync",
        "truncate",
        "fstat",
        "stat",
        "rename",
        "mkdir",
        "rmdir",
        "unlink",
        "scandir",
        "listdir",
        "flock",
        "syncfs",
    )

    # -- compound operations, built only from the calls above ------------------------------

    def write_all(self, fd: int, data: bytes) -> None:
        """Write all of ``data`` (``write`` may take less than asked for)."""
        view = memoryview(data)
        while view:
            view = view[self.write(fd, view) :]

    def open_dir(self, path: str, *, dir_fd: int | None = None) -> int:
        """Open a directory without following a symlink in its last component."""
        return self.open(path, _DIR_FLAGS, dir_fd=dir_fd)

    def open_lock_file(self, name: str, *, dir_fd: int | None = None, create: bool = True) -> int:
        """Open (creating) a lock file; lock files are never replaced or deleted.

        ``create=False`` opens an existing one read-only (``flock`` needs no write
        access), for readers that must not write: FileNotFoundError if there is none.
        """
        if not create:
            return self.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        return self.open(name, flags, FILE_MODE, dir_fd=dir_fd)

    def fsync_dir(self, path: str) -> None:
        """fsync a directory by path, so that an entry created or renamed in it is durable."""
        fd = self.open_dir(path)
        try:
            self.fsync(fd)
        finally:
            self.close(fd)

    def ensure_dirs(self, path: str) -> None:
        """Create ``path`` and any missing parent folders (each 0700)."""
        missing = []
        folder = os.path.abspath(path)
        while True:
            try:
                self.stat(folder)
                break
            except FileNotFoundError:
                missing.append(folder)
                folder = os.path.dirname(folder)
        for each in reversed(missing):
            self.ensure_dir(each)

    def ensure_dir(self, path: str, *, dir_fd: int | None = None) -> bool:
        """Create a directory (0700) unless it exists; return whether it was created."""
        try:
            self.mkdir(path, dir_fd=dir_fd)
        except FileExistsError:
            st = self.stat(path, dir_fd=dir_fd)
            if not stat_module.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory", path) from None
            return False
        return True

    def read_file(
        self, name: str, *, dir_fd: int | None = None, max_bytes: int | None = None
    ) -> tuple[bytes, Signature] | None:
        """Read a whole file; None if it does not exist.

        :raises TooLargeError: the file is larger than ``max_bytes``.
        :raises NotRegularFileError: a folder, FIFO, socket or device is there instead.
        """
        try:
            fd = self.open(name, _READ_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # a socket, or a device with nothing behind it
                raise NotRegularFileError(errno.ENXIO, "not a regular file", name) from exc
            if exc.errno == errno.ELOOP:  # a symlink (O_NOFOLLOW): never followed
                raise NotRegularFileError(errno.ELOOP, "a symlink, not a regular file", name) from exc
            raise
        try:
            st = self.fstat(fd)
            if not stat_module.S_ISREG(st.st_mode):
                raise NotRegularFileError(errno.EISDIR, "not a regular file", name)
            if max_bytes is not None and st.st_size > max_bytes:
                raise TooLargeError(
                    errno.EFBIG, f"file is {st.st_size} bytes, the limit is {max_bytes}", name
                )
            chunks = []
            remaining = st.st_size + 1  # read past the size seen, in case it grew
            while True:
                chunk = self.read(fd, max(remaining, 65536))
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
                if max_bytes is not None and sum(map(len, chunks)) > max_bytes:
                    raise TooLargeError(errno.EFBIG, f"file grew past {max_bytes} bytes", name)
            return b"".join(chunks), Signature.of(st)
        finally:
            self.close(fd)

    def read_file_cached(
        self, name: str, *, dir_fd: int | None, max_bytes: int
    ) -> tuple[bytes, Signature] | None:
        """Read a whole small file only if the page cache holds all of it; else None.

        It never waits for the disk (``preadv`` with ``RWF_NOWAIT``), so it may run
        on the event loop, where it costs less than a worker-thread hop. None means
        "use :meth:`read_file` in a worker thread": the file is missing, larger than
        ``max_bytes``, not regular, not (wholly) cached, or the platform cannot tell;
        also when a subclass overrides :meth:`read` (to inject faults), so that every
        read still passes through its :meth:`read`.
        """
        if _RWF_NOWAIT is None or type(self).read is not FileSystem.read:
            return None
        try:
            fd = self.open(name, _READ_FLAGS, dir_fd=dir_fd)
        except OSError:
            return None
        try:
            st = self.fstat(fd)
            if not stat_module.S_ISREG(st.st_mode) or st.st_size > max_bytes:
                return None
            buffer = bytearray(st.st_size + 1)  # one byte more: a file that grew is not whole
            try:
                count = os.preadv(fd, [buffer], 0, _RWF_NOWAIT)
            except OSError:
                return None  # EAGAIN: not in the page cache; EOPNOTSUPP: cannot tell
            if count != st.st_size:
                return None
            del buffer[count:]
            return bytes(buffer), Signature.of(st)
        finally:
            self.close(fd)

    def read_dir_file(
        self, directory: str, name: str, *, dir_fd: int | None, max_bytes: int | None = None
    ) -> tuple[bytes, Signature] | None:
        """Read ``directory/name`` without following a symlink in either part."""
        try:
            sub = self.open_dir(directory, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        try:
            return self.read_file(name, dir_fd=sub, max_bytes=max_bytes)
        finally:
            self.close(sub)

    def write_atomic(
        self,
        name: str,
        data: bytes,
        *,
        dir_fd: int,
        durable: bool,
        mode: int = FILE_MODE,
        sync_dir: bool = True,
    ) -> Signature:
        """Replace ``name`` in the directory ``dir_fd`` with ``data``, all or nothing.

        A uniquely named tmp file is written whole, fsynced (when ``durable``),
        renamed over ``name`` and the directory fsynced (when ``durable`` and
        ``sync_dir``: a caller writing several files fsyncs the folder once after them);
        a reader sees the old file or the new one. On failure the tmp file is removed.
        The new file has the permissions ``mode`` (a rewrite passes the old file's).
        """
        tmp = f".{name}.{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}"
        fd = self.open(tmp, _CREATE_FLAGS, mode, dir_fd=dir_fd)
        try:
            try:
                self.write_all(fd, data)
                if durable:
                    self.fsync(fd)
                st = self.fstat(fd)
                if stat_module.S_IMODE(st.st_mode) != mode:
                    # The process's umask took bits the old file had (say, the group's read
                    # of a file another program reads): give them back before it is visible.
                    os.fchmod(fd, mode)
                signature = Signature.of(st)
            finally:
                self.close(fd)
            self.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            self._discard(tmp, dir_fd=dir_fd)
            raise
        if durable and sync_dir:
            try:
                self.fsync(dir_fd)
            except OSError as exc:
                raise UnsyncedError(exc.errno, exc.strerror or "fsync failed", name) from exc
        return signature

    def write_tmp(self, name: str, data: bytes, *, dir_fd: int) -> tuple[str, Signature]:
        """Write ``data`` to a new tmp file for ``name`` (no fsync, no rename); return its
        name and the signature ``name`` will have once the tmp file is renamed onto it.

        The first half of :meth:`write_atomic`, for a batch made durable by one barrier
        (``syncfs``) between writing every tmp file and renaming them. On failure the
        tmp file is removed.
        """
        tmp = f".{name}.{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}"
        fd = self.open(tmp, _CREATE_FLAGS, FILE_MODE, dir_fd=dir_fd)
        try:
            try:
                self.write_all(fd, data)
                signature = Signature.of(self.fstat(fd))
            finally:
                self.close(fd)
        except BaseException:
            self._discard(tmp, dir_fd=dir_fd)
            raise
        return tmp, signature

    def fsync_file(self, name: str, *, dir_fd: int) -> None:
        """fsync the existing regular file ``name`` in the directory ``dir_fd``."""
        fd = self.open(name, _READ_FLAGS, dir_fd=dir_fd)
        try:
            self.fsync(fd)
        finally:
            self.close(fd)

    def write_new(self, name: str, data: bytes, *, dir_fd: int, durable: bool) -> None:
        """Create ``name`` (it must not exist) holding ``data``; fsync it when ``durable``.

        Not atomic: for a folder nobody reads until it is complete (a migration's
        staging folder), where a plain create is enough.
        """
        fd = self.open(name, _CREATE_FLAGS, FILE_MODE, dir_fd=dir_fd)
        try:
            self.write_all(fd, data)
            if durable:
                self.fsync(fd)
        finally:
            self.close(fd)

    def readlink(self, name: str, *, dir_fd: int) -> str:
        return os.readlink(name, dir_fd=dir_fd)

    def symlink(self, target: str, name: str, *, dir_fd: int) -> None:
        os.symlink(target, name, dir_fd=dir_fd)

    def remove_tree(self, name: str, *, dir_fd: int, first: tuple[str, ...] = ()) -> None:
        """Remove a directory and everything in it, never following a symlink.

        :param first: names in the directory to remove before the others (in any order
            a power cut may make some of the removals durable and not others).
        """
        try:
            sub = self.open_dir(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            self.unlink(name, dir_fd=dir_fd)  # a file or a symlink: remove the link only
            return
        try:
            with self.scandir(sub) as scan:
                entries = sorted(scan, key=lambda entry: entry.name not in first)
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    self.remove_tree(entry.name, dir_fd=sub)
                else:
                    self.unlink(entry.name, dir_fd=sub)
        finally:
            self.close(sub)
        self.rmdir(name, dir_fd=dir_fd)

    def discard(self, name: str, *, dir_fd: int) -> None:
        """Remove ``name`` if possible (best effort: the sweep removes what is left)."""
        self._discard(name, dir_fd=dir_fd)

    def _discard(self, name: str, *, dir_fd: int) -> None:
        try:
            self.unlink(name, dir_fd=dir_fd)
        except OSError:
            pass  # best effort: the orphan sweep removes what is left
