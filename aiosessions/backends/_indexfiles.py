"""The files of the recency index (``<stem>.d/.index/``), and what it reads of the sessions.

Everything here is synchronous and runs in worker threads (but the few ``stat`` calls
of a listing's checks). Paths are relative to directory descriptors, as in the rest of
the directory store; SQLite opens its database by path, inside ``.index``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import stat as stat_module
import time
from collections.abc import Iterable
from typing import Any, Final

import msgspec

from .._errors import LockTimeoutError
from .._fs import FileSystem, NotRegularFileError, Signature, TooLargeError, is_tmp_name
from .._keys import encode_key, is_shortened
from .._layout import META, folder_key, is_session_name
from .._recency import rank, recency_of_stored
from ._indexlog import FolderSig, State

__all__ = ["INDEX_DIR", "Current", "IndexUnusable", "Sessions", "boot_id"]

INDEX_DIR: Final = ".index"

CURRENT: Final = "CURRENT"

APPEND_LOCK: Final = "append.lock"

BUILD_LOCK: Final = "build.lock"

FORMAT_NAME: Final = "aiosessions.index"

FORMAT_VERSION: Final = 1

#: A log no longer appended to (its records are in the database) is made read-only.
SEALED_MODE = 0o400

_boot: str | None = None


def boot_id() -> str:
    """This boot of the machine: a log's unsynced tail is trusted only within one."""
    global _boot
    if _boot is None:
        try:
            with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as file:
                _boot = file.read().strip()
        except OSError:
            _boot = "unknown"  # not Linux: a power loss is not detected (docs/design.md)
    return _boot


def folder_sig(st: os.stat_result) -> FolderSig:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_nlink)


def session_state(recency: int | None, signature: Signature) -> tuple[int, int, int, int]:
    return (rank(recency), signature.inode, signature.size, signature.mtime_ns)


class IndexUnusable(Exception):
    """The index cannot be used as it is (missing, damaged, stale): rebuild it."""


class Current(msgspec.Struct):
    db: str | None
    log: str
    boot: str


def read_current(fs: FileSystem, folder: int) -> Current | None:
    found = fs.read_file(CURRENT, dir_fd=folder, max_bytes=4096)
    if found is None:
        return None
    try:
        return msgspec.json.decode(found[0], type=Current)
    except msgspec.DecodeError:
        raise IndexUnusable(f"{INDEX_DIR}/{CURRENT} is damaged") from None


def write_current(fs: FileSystem, folder: int, current: Current) -> None:
    fs.write_atomic(CURRENT, msgspec.json.encode(current) + b"\n", dir_fd=folder, durable=False)


def flock(fs: FileSystem, fd: int, operation: int, *, timeout: float, what: str) -> None:
    """flock with LOCK_NB polled until ``timeout`` (shared or exclusive)."""
    deadline = time.monotonic() + timeout
    wait = 0.001
    while True:
        try:
            fs.flock(fd, operation | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            raise LockTimeoutError(f"could not lock {what} within {timeout:g}s: another process holds it")
        time.sleep(wait)
        wait = min(wait * 2, 0.05)


def try_flock(fs: FileSystem, fd: int, operation: int) -> bool:
    try:
        fs.flock(fd, operation | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE sessions (
    key TEXT PRIMARY KEY, rank INTEGER NOT NULL, ino INTEGER NOT NULL,
    size INTEGER NOT NULL, mtime INTEGER NOT NULL
) WITHOUT ROWID;
"""

RANK_INDEX = "CREATE INDEX sessions_by_rank ON sessions (rank, key)"

SCHEMA += RANK_INDEX + ";\n"


def connect(path: str, *, readonly: bool = False) -> sqlite3.Connection:
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=10.0)
    try:
        if not readonly:
            db.execute("PRAGMA journal_mode=WAL")
        # A derived index: a reboot rebuilds it anyway (the boot id), so no fsync here.
        db.execute("PRAGMA synchronous=OFF")
    except BaseException:
        db.close()
        raise
    return db


def read_meta(db: sqlite3.Connection) -> dict[str, Any]:
    return dict(db.execute("SELECT name, value FROM meta").fetchall())


def apply_states(db: sqlite3.Connection, states: Iterable[tuple[str, State]]) -> None:
    """Write final states into ``sessions`` (inside the caller's transaction)."""
    upserts = []
    deletes = []
    for key, state in states:
        if state is None:
            deletes.append((key,))
        elif isinstance(state, tuple):
            upserts.append((key, *state))
    if deletes:
        db.executemany("DELETE FROM sessions WHERE key = ?", deletes)
    if upserts:
        db.executemany(
            "INSERT INTO sessions (key, rank, ino, size, mtime) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET rank = excluded.rank, ino = excluded.ino, "
            "size = excluded.size, mtime = excluded.mtime",
            upserts,
        )


def read_from(fs: FileSystem, fd: int) -> bytes:
    """Everything in ``fd`` from its current position (read through the seam)."""
    chunks = []
    while chunk := fs.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def create_file(fs: FileSystem, folder: int, name: str, data: bytes) -> None:
    fd = fs.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
    try:
        fs.write_all(fd, data)
    finally:
        close_quietly(fs, fd)


def seal(fs: FileSystem, folder: int, name: str) -> None:
    try:
        os.chmod(name, SEALED_MODE, dir_fd=folder, follow_symlinks=False)
    except (FileNotFoundError, NotImplementedError):
        pass


def remove_orphans(fs: FileSystem, folder: int, current: Current | None) -> None:
    """Remove what failed rebuilds and compactions left (the build lock held: every writer of
    these files holds it): tmp files of CURRENT, and databases and logs CURRENT does not name
    (a process may still read one it opened: it then finds CURRENT changed and reloads).
    With ``current`` None, only the tmp files (a rebuild sorts out the rest).
    """
    keep = {CURRENT, APPEND_LOCK, BUILD_LOCK}
    if current is not None:
        keep |= {current.log, current.db or ""}
    for name in fs.listdir(folder):
        stem = name.split("-", 1)[0]  # x.db-wal and x.db-shm go with x.db
        if is_tmp_name(name) or (current is not None and stem not in keep and not name.startswith(".")):
            try:
                fs.unlink(name, dir_fd=folder)
            except FileNotFoundError:
                pass


def close_quietly(fs: FileSystem, fd: int) -> None:
    """Close ``fd`` in a ``finally``: an error closing must not hide the error being raised."""
    if fd >= 0:
        try:
            fs.close(fd)
        except OSError:
            pass


def list_folders(fs: FileSystem, root: int) -> list[str]:
    """The names of the folders in the store folder (not symlinks: ``d_type``, no ``stat``), but
    dot-folders; a descriptor of its own, as dups share a directory offset."""
    folder = fs.open_dir(".", dir_fd=root)
    try:
        with fs.scandir(folder) as entries:
            return [e.name for e in entries if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)]
    finally:
        try:
            close_quietly(fs, folder)
        except OSError:
            pass


class Sessions:
    """What the index reads of the store itself: names, keys and session files."""

    def __init__(self, fs: FileSystem, root: int, max_entry_bytes: int) -> None:
        self.fs = fs
        self.root = root
        self.max_entry_bytes = max_entry_bytes

    def key_of(self, name: str) -> str | None:
        """The key a top-level name holds, or None (not a session's name)."""
        if not is_session_name(name):
            return None
        try:
            return folder_key(self.fs, name, dir_fd=self.root)
        except (ValueError, FileNotFoundError, NotADirectoryError, NotRegularFileError, TooLargeError):
            return None  # not a session (any more); other errors are the disk's: raised

    def signature(self, name: str, *, is_dir: bool = False) -> Signature | None:
        """Signature of ``name/meta.json`` if it is a session now (a real folder, a regular file).

        ``is_dir``: the caller's directory listing already said ``name`` is a folder.
        """
        fs = self.fs
        try:
            if not is_dir and not stat_module.S_ISDIR(fs.stat(name, dir_fd=self.root).st_mode):
                return None  # a file, or a symlink planted as a session folder: never followed
            st = fs.stat(f"{name}/{META}", dir_fd=self.root)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return Signature.of(st) if stat_module.S_ISREG(st.st_mode) else None

    def state(self, key: str, base: State = None, *, listed: str | None = None) -> State:
        """The state of ``key`` as its files say (read only if its signature differs from ``base``).

        ``listed``: the key's folder name, just found to be a folder holding this key.

        :raises OSError: the disk failed.
        """
        name = listed or encode_key(key)
        if listed is None and is_shortened(name) and self.key_of(name) != key:
            return None
        signature = self.signature(name, is_dir=listed is not None)
        if signature is None:
            return None
        if isinstance(base, tuple) and base[1:] == signature:
            return base
        try:
            found = self.fs.read_dir_file(name, META, dir_fd=self.root, max_bytes=self.max_entry_bytes)
        except (TooLargeError, NotRegularFileError):
            return session_state(None, signature)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if found is None:
            return None
        data, signature = found
        return session_state(recency_of_stored(data), signature)
