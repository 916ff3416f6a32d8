"""Moving a directory store of format version 1 forward to version 2 (large members apart).

The same staging-folder-and-rename recipe as the legacy migration (``_migrate``), so a
crash at any instant leaves one authoritative store:

1. take the store-wide lock ``.<stem>.lock`` (every upgrading process takes it: one
   upgrades, the others find version 2 when they get it) and every lock stripe of the old
   store (a writer in the middle of a write finishes it first);
2. build the new store in ``.<stem>.d.staging``: each session's ``meta.json`` split into a
   small ``meta.json`` and its blobs (``_parts``), its ``key`` file copied, every file and
   folder fsynced, the FORMAT marker (version 2) last;
   the old store's ``.quarantine`` (never deleted) is moved in first, and a session whose
   ``meta.json`` cannot be read as a file (a folder, a FIFO) is moved into it; whatever else
   the old store holds (stray files and symlinks, unknown dot-folders, other files of a
   session folder) is copied into it, under ``format-1-<hex>/`` (named in ``.leftovers`` of
   the staging folder first), since the old tree is removed afterwards;
3. carry ``.migration.json`` across (the recency index is derived: built again);
4. rename the old ``<stem>.d`` into the new store's ``.trash/`` and the staging folder to
   ``<stem>.d``, fsyncing the parent folder after each; then remove the old store.

Between the two renames of step 4 there is no ``<stem>.d``; a sealed staging folder (its
FORMAT marker is version 2) is then the store, and the next upgrade or open finishes the
rename. A sealed staging folder beside the old store (a power cut lost both renames) is the
store too: step 4 is made again (built again instead, it would keep a second copy of what it
does not carry over). A staging folder that is not sealed is removed and built again (after
handing a ``.quarantine`` it took back to the old store, without the copies it made).

Processes of a release that only knows version 1 do not know about this: stop them first.
(A write of theirs after the upgrade fails, since their store folder is gone.)
"""

from __future__ import annotations

import errno
import secrets
import stat as stat_module

from ._errors import StoreFormatError
from ._fs import FileSystem, NotRegularFileError, TooLargeError, is_tmp_name
from ._layout import (
    FORMAT_FILE,
    FORMAT_VERSION,
    KEY_FILE,
    LOCK_STRIPES,
    LOCKS,
    META,
    QUARANTINE,
    RECORD,
    SWEPT,
    TRASH,
    StorePaths,
    blob_name,
    encode_format,
    ensure_store_dirs,
    exists,
    is_real_dir,
    is_session_name,
    read_marker,
    stripe_name,
)
from ._locks import acquire_file_lock_sync
from ._parts import split
from .backends._indexfiles import INDEX_DIR

__all__ = ["NotWritableError", "older_version", "upgrade_format"]

#: Prefix of the old store's name in the new store's trash, and of the folder in the new
#: store's ``.quarantine/`` that keeps what the upgrade does not carry over.
OLD_PREFIX = "format-1-"
#: The names at the top of a version-1 store folder the upgrade carries over or builds again
#: (the trash and the recency index are dropped). Anything else there is not lost: it is copied
#: into ``.quarantine/format-1-<hex>/``, as is any file of a session folder other than these:
_KNOWN_TOP = frozenset({FORMAT_FILE, LOCKS, TRASH, QUARANTINE, RECORD, SWEPT, INDEX_DIR})
_KNOWN_IN_SESSION = frozenset({META, KEY_FILE})
#: In the staging folder: the name of that folder of the quarantine, for a take-back to drop.
LEFTOVERS = ".leftovers"


class NotWritableError(OSError):
    """The store cannot be written by this process (a read-only disk or folder): the upgrade
    did not start, nothing was changed."""


def older_version(paths: StorePaths, fs: FileSystem) -> int | None:
    """The format version of the directory store at ``paths`` when it is older than this
    release's (it would be moved forward); None otherwise. Blocking, writes nothing."""
    try:
        version = read_marker(fs, str(paths.directory), dir_fd=None, where=str(paths.directory / FORMAT_FILE))
    except (OSError, StoreFormatError):
        return None
    return version if version is not None and version < FORMAT_VERSION else None


def upgrade_format(paths: StorePaths, fs: FileSystem, *, lock_timeout: float) -> bool:
    """Move the store at ``paths`` forward to :data:`FORMAT_VERSION` (blocking; a worker thread).

    Returns whether this call did it (False: it was done already, or there is no store).

    :raises StoreFormatError: the marker is of a version this release does not read.
    :raises LockTimeoutError: the store lock or a stripe stayed taken for ``lock_timeout``.
    :raises NotWritableError: the store lock cannot be made or opened for writing: nothing changed.
    :raises OSError: reading or writing failed (a store that reads whole is left: the old one,
        the new one, or the new one sealed in the staging folder, which the next call publishes).
    """
    try:
        parent = fs.open_dir(str(paths.file.parent))
    except FileNotFoundError:
        return False
    held: list[int] = []
    try:
        # Nothing to do (the usual case) is found without the lock, and makes no lock file.
        directory = paths.directory.name
        if exists(fs, directory, dir_fd=parent):
            version = read_marker(fs, directory, dir_fd=parent, where=str(paths.directory / FORMAT_FILE))
            if version is None or version >= FORMAT_VERSION:
                return False
        elif not exists(fs, paths.staging, dir_fd=parent):
            return False
        try:
            lock = fs.open_lock_file(paths.lock.name, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise NotWritableError(exc.errno, exc.strerror or "cannot write", exc.filename) from exc
            raise
        held.append(lock)
        acquire_file_lock_sync(fs, lock, timeout=lock_timeout, what=str(paths.lock))
        return _upgrade_locked(paths, fs, parent, held, lock_timeout)
    finally:
        for fd in reversed(held):
            try:
                fs.close(fd)  # closing releases the flock
            except OSError:
                pass
        fs.close(parent)


def _sealed(fs: FileSystem, parent: int, name: str, where: str) -> bool:
    """Whether the staging folder ``name`` was sealed (its FORMAT written last), by this
    release or by one of version 2, whose store is then moved on to version 3 in turn."""
    try:
        version = read_marker(fs, name, dir_fd=parent, where=where)
    except (OSError, StoreFormatError):
        return False
    return version is not None and version >= 2


def _upgrade_locked(paths: StorePaths, fs: FileSystem, parent: int, held: list[int], timeout: float) -> bool:
    directory, staging = paths.directory.name, paths.staging
    where = str(paths.directory / FORMAT_FILE)
    if not exists(fs, directory, dir_fd=parent):
        # A crash between the two renames of a finished upgrade: the sealed staging folder is the
        # store. Not beside a legacy file: then it is a legacy migration's, and that file the store.
        legacy = exists(fs, paths.file.name, dir_fd=parent)
        if not legacy and exists(fs, staging, dir_fd=parent) and _sealed(fs, parent, staging, where):
            fs.rename(staging, directory, src_dir_fd=parent, dst_dir_fd=parent)
            fs.fsync(parent)
            return True
        return False
    version = read_marker(fs, directory, dir_fd=parent, where=where)
    if version is None or version >= FORMAT_VERSION:
        return False
    old = fs.open_dir(directory, dir_fd=parent)
    try:
        # Every writer of the old store holds its key's stripe while it writes.
        fs.ensure_dir(LOCKS, dir_fd=old)
        locks = fs.open_dir(LOCKS, dir_fd=old)
        try:
            for stripe in range(LOCK_STRIPES):
                fd = fs.open_lock_file(stripe_name(stripe), dir_fd=locks)
                held.append(fd)
                acquire_file_lock_sync(
                    fs, fd, timeout=timeout, what=f"{paths.directory}/{LOCKS}/{stripe_name(stripe)}"
                )
        finally:
            fs.close(locks)
        if version >= 2:
            # Version 3 adds the batch journal and stores sessions as version 2 did: only the
            # marker moves, replaced atomically and durably under every stripe (no writer of
            # the old store is between its writes), so a version-2 release refuses the store
            # from then on. No staging folder: nothing else is rewritten.
            fs.write_atomic(FORMAT_FILE, encode_format(), dir_fd=old, durable=True)
            return True
        if exists(fs, staging, dir_fd=parent):
            if _sealed(fs, parent, staging, where):
                # Sealed before the power went, its renames lost: it is the store, built
                # under these locks from this old store, which nothing has written since.
                new = fs.open_dir(staging, dir_fd=parent)
                try:
                    fs.discard(LEFTOVERS, dir_fd=new)  # if its removal was lost with the renames
                    _put_in_place(fs, parent, directory, staging, new)
                finally:
                    fs.close(new)
                return True
            _take_back_quarantine(fs, parent, staging, old)
            fs.remove_tree(staging, dir_fd=parent)
        fs.mkdir(staging, dir_fd=parent)
        new = fs.open_dir(staging, dir_fd=parent)
        try:
            ensure_store_dirs(fs, new)
            if exists(fs, QUARANTINE, dir_fd=old):
                fs.rename(QUARANTINE, QUARANTINE, src_dir_fd=old, dst_dir_fd=new)
                fs.fsync(new)  # where it went first: never in neither after a power cut
                fs.fsync(old)
            leftovers = _Leftovers(fs, new, f"{OLD_PREFIX}{secrets.token_hex(8)}")
            try:
                for name in fs.listdir(old):
                    if name in _KNOWN_TOP:
                        continue
                    if not (is_session_name(name) and is_real_dir(fs, name, dir_fd=old)):
                        leftovers.take(old, name)  # a stray file, symlink or unknown dot-folder
                        continue
                    try:
                        _copy_session(fs, old, new, name, leftovers)
                    except (NotRegularFileError, TooLargeError):
                        # Unreadable as it is: kept for its owner, as `fsck --repair` would.
                        fs.ensure_dir(QUARANTINE, dir_fd=new)
                        quarantine = fs.open_dir(QUARANTINE, dir_fd=new)
                        try:
                            fs.rename(name, name, src_dir_fd=old, dst_dir_fd=quarantine)
                        finally:
                            fs.close(quarantine)
            finally:
                leftovers.close()
            found = fs.read_file(RECORD, dir_fd=old)
            if found is not None:
                fs.write_new(RECORD, found[0], dir_fd=new, durable=True)
            fs.write_new(SWEPT, b"", dir_fd=new, durable=False)
            fs.fsync(new)
            fs.write_atomic(FORMAT_FILE, encode_format(), dir_fd=new, durable=True)
            fs.discard(LEFTOVERS, dir_fd=new)  # sealed: no take-back any more
            _put_in_place(fs, parent, directory, staging, new)
        finally:
            fs.close(new)
    finally:
        fs.close(old)
    return True


def _put_in_place(fs: FileSystem, parent: int, directory: str, staging: str, new: int) -> None:
    """Step 4: the old store into the sealed staging folder's (``new``) trash, the staging
    folder to the store's name, the parent folder fsynced after each; then the old store
    removed. Called with the old store's lock stripes held."""
    trash = fs.open_dir(TRASH, dir_fd=new)
    try:
        doomed = f"{OLD_PREFIX}{secrets.token_hex(8)}"
        fs.rename(directory, doomed, src_dir_fd=parent, dst_dir_fd=trash)
        fs.fsync(parent)
        fs.rename(staging, directory, src_dir_fd=parent, dst_dir_fd=parent)
        fs.fsync(parent)
        try:
            # Before the old stripes are let go: a writer of an older release waiting on
            # one then fails (its folder is gone) instead of writing into the trash.
            fs.remove_tree(doomed, dir_fd=trash)
        except OSError:
            pass  # the trash is swept
    finally:
        fs.close(trash)


def _take_back_quarantine(fs: FileSystem, parent: int, staging: str, old: int) -> None:
    """An upgrade that died after moving the quarantine into its staging folder: move it back,
    without the copies it made of what it does not carry over (the old tree still holds them)."""
    try:
        new = fs.open_dir(staging, dir_fd=parent)
    except OSError:
        return
    try:
        if exists(fs, QUARANTINE, dir_fd=new) and not exists(fs, QUARANTINE, dir_fd=old):
            copies = fs.read_file(LEFTOVERS, dir_fd=new, max_bytes=256)
            if copies is not None and copies[0]:
                quarantine = fs.open_dir(QUARANTINE, dir_fd=new)
                try:
                    fs.remove_tree(copies[0].decode(), dir_fd=quarantine)
                    fs.fsync(quarantine)
                finally:
                    fs.close(quarantine)
            fs.rename(QUARANTINE, QUARANTINE, src_dir_fd=new, dst_dir_fd=old)
            fs.fsync(old)
    finally:
        fs.close(new)


class _Leftovers:
    """``.quarantine/<name>/`` of the staging store, made at the first thing copied into it:
    what the old store holds that the upgrade does not carry over, kept for the operator
    (session files under ``<session>/``). Copied, not moved: the old tree keeps it until it
    is removed after the seal, so a power cut at any moment loses nothing (a rename between
    two folders is durable only once both are synced). Copies of an upgrade that died before
    its seal are dropped with its staging folder (:func:`_take_back_quarantine`)."""

    def __init__(self, fs: FileSystem, new: int, name: str) -> None:
        self.fs, self.new, self.name = fs, new, name
        self._folders: dict[str, int] = {}

    def _folder(self, session: str) -> int:
        fd = self._folders.get(session)
        if fd is not None:
            return fd
        fs = self.fs
        if not self._folders:
            # Its name first, where a take-back finds it (before it is made: never one unnamed).
            fs.write_new(LEFTOVERS, self.name.encode(), dir_fd=self.new, durable=True)
            fs.fsync(self.new)
            fs.ensure_dir(QUARANTINE, dir_fd=self.new)
            quarantine = fs.open_dir(QUARANTINE, dir_fd=self.new)
            try:
                fs.mkdir(self.name, dir_fd=quarantine)
                self._folders[""] = fs.open_dir(self.name, dir_fd=quarantine)
                fs.fsync(quarantine)
            finally:
                fs.close(quarantine)
            if not session:
                return self._folders[""]
        top = self._folders[""]
        fs.mkdir(session, dir_fd=top)
        fd = self._folders[session] = fs.open_dir(session, dir_fd=top)
        return fd

    def take(self, source: int, name: str, session: str = "") -> None:
        """Copy ``name`` of the folder ``source`` (the old store, or its session folder ``session``)."""
        _copy_aside(self.fs, source, name, self._folder(session))

    def close(self) -> None:
        """fsync the folders made (before the seal)."""
        try:
            for fd in reversed(self._folders.values()):
                self.fs.fsync(fd)
            if self._folders:
                self.fs.fsync(self.new)
        finally:
            for fd in self._folders.values():
                try:
                    self.fs.close(fd)
                except OSError:
                    pass


def _copy_aside(fs: FileSystem, source: int, name: str, dest: int) -> None:
    """Copy ``name`` of the folder ``source`` into ``dest``: a file (fsynced), a symlink, or a
    folder with what it holds (fsynced); a FIFO, socket or device holds nothing to keep."""
    mode = fs.stat(name, dir_fd=source).st_mode
    if stat_module.S_ISREG(mode):
        found = fs.read_file(name, dir_fd=source)
        if found is not None:
            fs.write_new(name, found[0], dir_fd=dest, durable=True)
    elif stat_module.S_ISLNK(mode):
        fs.symlink(fs.readlink(name, dir_fd=source), name, dir_fd=dest)
    elif stat_module.S_ISDIR(mode):
        fs.mkdir(name, dir_fd=dest)
        inner, copy = fs.open_dir(name, dir_fd=source), -1
        try:
            copy = fs.open_dir(name, dir_fd=dest)
            for each in fs.listdir(inner):
                _copy_aside(fs, inner, each, copy)
            fs.fsync(copy)
        finally:
            fs.close(inner)
            if copy >= 0:
                fs.close(copy)


def _copy_session(fs: FileSystem, old: int, new: int, name: str, leftovers: _Leftovers) -> None:
    """Copy one session folder into the staging store, its entry split (files fsynced); copy
    its other files (not tmp files: writes in flight of a dead process) into ``leftovers``."""
    source = fs.open_dir(name, dir_fd=old)
    try:
        for extra in fs.listdir(source):
            if extra not in _KNOWN_IN_SESSION and not is_tmp_name(extra):
                leftovers.take(source, extra, name)
        found = fs.read_file(META, dir_fd=source)
        if found is None:
            return  # a creation that died before its meta.json: nothing else to keep
        key = fs.read_file(KEY_FILE, dir_fd=source)
        fs.mkdir(name, dir_fd=new)
        folder = fs.open_dir(name, dir_fd=new)
        try:
            if key is not None:
                fs.write_new(KEY_FILE, key[0], dir_fd=folder, durable=True)
            meta, blobs = split(found[0])
            for digest, blob in blobs.items():
                fs.write_new(blob_name(digest), blob, dir_fd=folder, durable=True)
            fs.write_new(META, meta, dir_fd=folder, durable=True)
            fs.fsync(folder)
        finally:
            fs.close(folder)
    finally:
        fs.close(source)
