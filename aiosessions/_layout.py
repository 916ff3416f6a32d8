"""The directory format, in one place: every name a store uses on disk and what it means.

Everything a store creates beside its file is named after the file's stem:
``X/foo.json`` (legacy file), ``X/foo.d/`` (directory store), ``X/.foo.lock``
(the store-wide cross-process lock) and ``X/.foo.d.staging/`` (a migration being
built), so two stores in one folder never share anything. Inside ``foo.d/``
(see docs/format.md)::

    FORMAT              the marker, written last when the store is made
    .locks/00 .. 3f     cross-process lock stripes (flock; never renamed or deleted)
    .trash/             deleted sessions on their way out
    .quarantine/        what ``fsck --repair`` moved aside
    .migration.json     the record of the migration that made the store
    .swept              its modification time: when the last orphan sweep began
    <name>/meta.json    the entry, exactly the JSON object of the legacy file, or (format
                        version 2) its small members and ``"$parts"`` naming the blobs below
    <name>/blob-<sha256>.json   a large member stored apart (see _parts), never rewritten
    <name>/key          the exact key, only for shortened names (see _keys)
    <name>/.meta.json.<pid>-<rand>.tmp   an in-flight write (an orphan once old)

The directory backend, migration and fsck use this module for names, the marker,
detection, key files, lock stripes, tmp files, trash and the walk over session
folders; none of them spells a name or a policy of its own.
"""

from __future__ import annotations

import functools
import itertools
import os
import stat as stat_module
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import anyio
import msgspec

from ._entry import DECODE_ERRORS
from ._errors import StoreFormatError
from ._fs import FileSystem, NotRegularFileError, TooLargeError, is_tmp_name
from ._keys import MAX_KEY_BYTES, decode_name, encode_key, is_shortened, lock_stripe
from ._locks import store_lock
from ._parts import references

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "StorePaths",
    "detect_mode",
    "encode_format",
    "refuse_inside_store",
]

T = TypeVar("T")

Mode = Literal["directory", "json"]

FORMAT_FILE = "FORMAT"
FORMAT_NAME = "aiosessions.directory"
FORMAT_VERSION = 3
#: The versions this release opens, read as they are and upgraded by ``_upgrade.upgrade_format``.
#: Version 1 has no blobs (a top-level ``$parts`` member is the entry's own); version 2 has no
#: batch journal (``.journal``: a release of version 2 would not replay it after a power cut).
READABLE_VERSIONS = (1, 2, 3)
#: A FORMAT marker is a few dozen bytes; anything larger is not one.
FORMAT_MAX_BYTES = 4096

META = "meta.json"
KEY_FILE = "key"
#: A large member stored apart: ``blob-<sha256 hex of its bytes>.json`` in the session folder.
BLOB_PREFIX = "blob-"
BLOB_SUFFIX = ".json"
_HEX = frozenset("0123456789abcdef")
LOCKS = ".locks"
TRASH = ".trash"
QUARANTINE = ".quarantine"
RECORD = ".migration.json"
SWEPT = ".swept"
#: Suffix of the staging folder of a migration, ``.<stem>.d.staging``.
STAGING_SUFFIX = ".d.staging"
LOCK_STRIPES = 64
#: Names listed, checked and decoded per worker-thread hop by the walks over a store.
CHUNK = 512


class _Format(msgspec.Struct):
    format: object = None
    version: object = None


@dataclass(frozen=True)
class StorePaths:
    """The paths of one store, all derived from the path the user gave."""

    file: Path
    directory: Path
    lock: Path

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> StorePaths:
        """Derive the paths from ``X/foo.json`` (or from ``X/foo.d``, the directory itself)."""
        text = os.fspath(path)
        if not os.path.isabs(text):
            text = os.path.join(os.getcwd(), text)
        return _paths_of(text)

    @property
    def staging(self) -> str:
        """The name of a migration's staging folder, beside the store file."""
        return f".{self.directory.name[: -len('.d')]}{STAGING_SUFFIX}"


@functools.lru_cache(maxsize=64)
def _paths_of(absolute: str) -> StorePaths:
    """:meth:`StorePaths.of` of an absolute path; cached: pathlib costs ~10 us, a whole open's worth."""
    given = Path(absolute)
    stem = given.stem
    if given.suffix == ".d":
        given = given.with_name(stem + ".json")
    if not stem:
        raise StoreFormatError(f"{absolute!r} does not name a store file (expected e.g. sessions.json)")
    return StorePaths(
        file=given, directory=given.with_name(stem + ".d"), lock=given.with_name(f".{stem}.lock")
    )


# -- the FORMAT marker ------------------------------------------------------------------------


def encode_format() -> bytes:
    """The bytes of the FORMAT marker this release writes."""
    return msgspec.json.encode({"format": FORMAT_NAME, "version": FORMAT_VERSION}) + b"\n"


def _version(marker: _Format) -> int | None:
    version = marker.version
    if marker.format != FORMAT_NAME or not isinstance(version, int) or isinstance(version, bool):
        return None
    return version


def format_version(data: bytes) -> int | None:
    """The version a FORMAT marker declares; None if the bytes are not an aiosessions marker."""
    try:
        return _version(msgspec.json.decode(data, type=_Format))
    except DECODE_ERRORS:
        return None


def check_format(data: bytes, where: Path | str) -> int:
    """The version of a FORMAT marker this release reads (one of :data:`READABLE_VERSIONS`),
    or raise :class:`StoreFormatError` saying why not."""
    invalid = f"{where} is not a valid aiosessions FORMAT marker: {bytes(data[:80])!r}"
    try:
        version = _version(msgspec.json.decode(data, type=_Format))
    except DECODE_ERRORS as exc:
        raise StoreFormatError(f"{invalid} ({exc})") from exc
    if version is None:
        raise StoreFormatError(f"{invalid} (expected {encode_format().strip().decode()})")
    if version not in READABLE_VERSIONS:
        raise StoreFormatError(
            f"{where} is format version {version}; this aiosessions reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))} (upgrade aiosessions to open it)"
        )
    return version


def read_marker(fs: FileSystem, name: str, *, dir_fd: int | None, where: Path | str) -> int | None:
    """The version of the FORMAT marker of the store folder ``name`` (relative to ``dir_fd``;
    ``"."``: ``dir_fd`` is the store folder); None when there is none.

    :raises StoreFormatError: it is there but not a valid marker of a version this release reads.
    """
    try:
        found = fs.read_dir_file(name, FORMAT_FILE, dir_fd=dir_fd, max_bytes=FORMAT_MAX_BYTES)
    except (TooLargeError, NotRegularFileError) as exc:
        raise StoreFormatError(f"{where} is not a valid aiosessions FORMAT marker: {exc.strerror}") from None
    if found is None:
        return None
    return check_format(found[0], where)


def refuse_inside_store(fs: FileSystem, paths: StorePaths) -> None:
    """Refuse a path inside a directory store (blocking; run it in a worker thread).

    ``X/sessions.d/FORMAT`` or ``X/sessions.d/<name>/meta.json`` would otherwise be
    taken for a legacy file of its own, read as nonsense sessions and get a lock file
    made beside it, inside the store.

    :raises StoreFormatError: a folder above ``paths.file`` is a directory store.
    """
    for folder in paths.file.parents:
        if not folder.name.endswith(".d"):
            continue
        try:
            found = fs.read_file(str(folder / FORMAT_FILE), max_bytes=FORMAT_MAX_BYTES)
        except OSError:
            continue
        # Another program's FORMAT file is not ours: a folder that happens to end in .d.
        if found is not None and format_version(found[0]) is not None:
            raise StoreFormatError(
                f"{paths.file} is inside the directory store {folder}: open the store itself, "
                f"{folder.with_name(folder.name[: -len('.d')] + '.json')} (or {folder})"
            )


def detect_mode(fs: FileSystem, paths: StorePaths) -> Mode | None:
    """Which store is at ``paths`` (blocking; see :func:`detect_mode_inline`).

    A directory holding a valid FORMAT marker is a directory store; otherwise an
    existing legacy file is a JSON store; otherwise there is none (None). A
    directory without the marker (say, a half-made migration) is never trusted.

    :raises StoreFormatError: the marker exists but is invalid or of another version;
        the path is inside a directory store, or names a folder.
    """
    refuse_inside_store(fs, paths)
    if read_marker(fs, str(paths.directory), dir_fd=None, where=paths.directory / FORMAT_FILE):
        return "directory"
    try:
        st = fs.stat(str(paths.file))
    except FileNotFoundError:
        return None
    if stat_module.S_ISDIR(st.st_mode):
        raise StoreFormatError(
            f"{paths.file} is a folder, not a store file: name the store file in it "
            f"(e.g. {paths.file / 'sessions.json'})"
        )
    return "json"


def detect_mode_inline(fs: FileSystem, paths: StorePaths) -> Mode | Literal[False] | None:
    """:func:`detect_mode` on the event loop when the page cache can answer; False when not.

    A ``stat`` and a read of a marker the page cache holds (``RWF_NOWAIT``) cost a few
    microseconds, a worker-thread hop a hundred; anything unusual (an uncached or odd
    marker, an error) returns False and the caller runs :func:`detect_mode` in a thread.
    """
    if ".d/" in f"{paths.file.parent}/":
        return False  # a folder above may be a store: refuse_inside_store looks, in the thread
    marker = f"{paths.directory}/{FORMAT_FILE}"  # not Path's "/": ~5 us here
    try:
        fs.stat(marker)
    except FileNotFoundError:
        try:
            st = fs.stat(str(paths.file))
        except FileNotFoundError:
            return None
        except OSError:
            return False
        return False if stat_module.S_ISDIR(st.st_mode) else "json"
    except OSError:
        return False
    found = fs.read_file_cached(marker, dir_fd=None, max_bytes=FORMAT_MAX_BYTES)
    if found is None or format_version(found[0]) != FORMAT_VERSION:
        return False  # the thread says what is wrong, or reads what was not cached
    return "directory"


# -- session folders and their keys ------------------------------------------------------------


def is_session_name(name: str) -> bool:
    """Whether ``name`` in the store folder may be a session folder (dot-names never are)."""
    return not name.startswith(".") and name != FORMAT_FILE


def stripe_of(key: str) -> int:
    """The lock stripe that guards ``key`` (its lock file is ``.locks/<stripe_name>``)."""
    return lock_stripe(key, LOCK_STRIPES)


def stripe_name(stripe: int) -> str:
    """The name of a stripe's lock file in ``.locks/``."""
    return f"{stripe:02x}"


def read_key_file(fs: FileSystem, name: str, *, dir_fd: int, inside: bool = False) -> str | None:
    """The key in the ``key`` file of the session folder ``name``; None when it has none.

    ``dir_fd`` is the store folder, or with ``inside`` the session folder itself.

    :raises ValueError: the file is not UTF-8 or names a key whose folder is not ``name``.
    :raises OSError: it cannot be read (or is not a regular file, or is too large).
    """
    if inside:
        found = fs.read_file(KEY_FILE, dir_fd=dir_fd, max_bytes=MAX_KEY_BYTES)
    else:
        found = fs.read_dir_file(name, KEY_FILE, dir_fd=dir_fd, max_bytes=MAX_KEY_BYTES)
    if found is None:
        return None
    key = found[0].decode("utf-8")
    if encode_key(key) != name:
        raise ValueError("its key file names another key")
    return key


def folder_key(fs: FileSystem, name: str, *, dir_fd: int) -> str | None:
    """The key of the session folder ``name`` in the store folder ``dir_fd``.

    Decoded from the name, or read from the ``key`` file of a shortened name
    (None when a shortened name has no key file: a creation in progress or broken).

    :raises ValueError: ``name`` is not the encoding of any key, or its key file is wrong.
    """
    if is_shortened(name):
        return read_key_file(fs, name, dir_fd=dir_fd)
    return decode_name(name)


def blob_name(digest: str) -> str:
    """The file name of the blob whose bytes have the SHA-256 ``digest`` (hex)."""
    return f"{BLOB_PREFIX}{digest}{BLOB_SUFFIX}"


def blob_digest(name: str) -> str | None:
    """The digest a blob file's name carries; None when ``name`` is not a blob's."""
    if not (name.startswith(BLOB_PREFIX) and name.endswith(BLOB_SUFFIX)):
        return None
    digest = name[len(BLOB_PREFIX) : -len(BLOB_SUFFIX)]
    return digest if len(digest) == 64 and _HEX.issuperset(digest) else None


def exists(fs: FileSystem, name: str, *, dir_fd: int | None = None) -> bool:
    """Whether ``name`` (in the folder ``dir_fd``) exists; a symlink is not followed."""
    try:
        fs.stat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def is_real_dir(fs: FileSystem, name: str, *, dir_fd: int) -> bool:
    """Whether ``name`` is a folder, not a symlink to one (nor anything else)."""
    return stat_module.S_ISDIR(fs.stat(name, dir_fd=dir_fd).st_mode)


# -- tmp files and trash -----------------------------------------------------------------------


def old_tmp_files(
    fs: FileSystem, dir_fd: int, *, cutoff: float | None = None, match: Callable[[str], bool] = is_tmp_name
) -> list[str]:
    """The tmp files in the folder ``dir_fd`` last modified before ``cutoff`` (epoch seconds).

    ``cutoff=None`` takes every tmp file: under the lock that every writer of the
    folder holds while its tmp file exists, any tmp file there is a leftover.
    ``match`` tells a tmp file by its name (a legacy file's own: ``is_tmp_for``).
    """
    found = []
    for name in fs.listdir(dir_fd):
        if not match(name):
            continue
        if cutoff is not None:
            try:
                if fs.stat(name, dir_fd=dir_fd).st_mtime >= cutoff:
                    continue  # a write may still be in flight
            except FileNotFoundError:
                continue
        found.append(name)
    return found


def remove_tmp_files(
    fs: FileSystem, dir_fd: int, *, cutoff: float | None = None, match: Callable[[str], bool] = is_tmp_name
) -> int:
    """Remove what :func:`old_tmp_files` finds; return how many went.

    :raises OSError: listing or a removal failed (what was removed before stays removed).
    """
    removed = 0
    for name in old_tmp_files(fs, dir_fd, cutoff=cutoff, match=match):
        try:
            fs.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            continue  # another sweeper was first
        removed += 1
    return removed


def old_trash(fs: FileSystem, trash_fd: int, *, cutoff: float) -> list[str]:
    """The deleted folders in ``.trash/`` that were moved there before ``cutoff``.

    A delete renames the session folder into the trash and removes it at once; one
    still there later was left by a deleter that died or whose removal failed. The
    age is the later of mtime and ctime: a rename changes the ctime, not the mtime.
    """
    found = []
    for name in fs.listdir(trash_fd):
        try:
            st = fs.stat(name, dir_fd=trash_fd)
        except FileNotFoundError:
            continue
        if max(st.st_mtime, st.st_ctime) < cutoff:
            found.append(name)
    return found


# -- walking a store ---------------------------------------------------------------------------


class _NameScan:
    """The names of the store folder, a chunk per call, through a descriptor of its own
    (dups of one descriptor share a directory offset: see ``FileSystem.listdir``)."""

    def __init__(self, fs: FileSystem, root: int) -> None:
        self._fs = fs
        self._fd = fs.open_dir(".", dir_fd=root)
        self._scan: AbstractContextManager[Iterator[os.DirEntry[str]]] | None = None
        try:
            self._scan = fs.scandir(self._fd)
            self._entries = self._scan.__enter__()
        except BaseException:
            self.close()
            raise

    def next_chunk(self) -> list[str]:
        return [entry.name for entry in itertools.islice(self._entries, CHUNK)]

    def close(self) -> None:
        scan, self._scan = self._scan, None
        if scan is not None:
            scan.__exit__(None, None, None)
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                self._fs.close(fd)
            except OSError:
                pass


async def walk(fs: FileSystem, root: int, each: Callable[[list[str]], T]) -> AsyncGenerator[T, None]:
    """``each(names)`` for the names in the store folder ``root``, :data:`CHUNK` names per
    worker-thread hop (listing and ``each`` in the same hop).

    Neither a hop's time nor the memory grows with the number of sessions. Names
    created or removed during the walk may or may not be seen; the others are seen once.
    Use it in ``async with contextlib.aclosing(...)``: a walk left early closes its folder.
    """
    scan = await anyio.to_thread.run_sync(_NameScan, fs, root)
    try:
        while True:

            def step() -> tuple[bool, T]:
                names = scan.next_chunk()
                result = each(names)
                if len(names) < CHUNK:
                    scan.close()  # here, so that the walk's last system call precedes its last result
                    return True, result
                return False, result

            last, result = await anyio.to_thread.run_sync(step)
            yield result
            if last:
                return
    finally:
        scan.close()


def ensure_store_dirs(fs: FileSystem, root: int) -> None:
    """Create ``.locks`` and ``.trash`` in the store folder ``root`` unless they exist."""
    fs.ensure_dir(LOCKS, dir_fd=root)
    fs.ensure_dir(TRASH, dir_fd=root)


# -- the orphan sweep --------------------------------------------------------------------------


def seconds_to_sweep(fs: FileSystem, root: int, *, period: float, now: float) -> float:
    """Seconds until the store's next orphan sweep is due (0 or less: now).

    A sweep is due ``period`` seconds after the last one began, as the modification
    time of ``.swept`` says (no such file: never swept). One ``stat``: cheap enough
    for every open, whatever the number of sessions.
    """
    try:
        began = fs.stat(SWEPT, dir_fd=root).st_mtime
    except FileNotFoundError:
        return 0.0
    if began > now:
        return 0.0  # a clock that went back: do not wait for the future
    return began + period - now


def claim_sweep(fs: FileSystem, root: int) -> None:
    """Record that a sweep begins now (a new ``.swept``; not fsynced: losing it costs a sweep)."""
    fs.write_atomic(SWEPT, b"", dir_fd=root, durable=False)


def old_blobs(fs: FileSystem, folder: int, *, cutoff: float) -> list[str]:
    """The blob files of the session folder ``folder`` last modified before ``cutoff``."""
    found = []
    for name in fs.listdir(folder):
        if blob_digest(name) is None:
            continue
        try:
            if fs.stat(name, dir_fd=folder).st_mtime < cutoff:
                found.append(name)
        except FileNotFoundError:
            continue
    return found


def unreferenced(fs: FileSystem, folder: int, blobs: list[str]) -> list[str] | None:
    """Those of ``blobs`` the folder's ``meta.json`` does not name; None when it cannot tell
    (no ``meta.json``, or one that does not read: fsck's business, never the sweep's).

    Call it under the session's stripe: a writer names a blob only while it holds it."""
    try:
        found = fs.read_file(META, dir_fd=folder)
    except OSError:
        return None
    if found is None:
        return None
    try:
        named = {digest for _, _, digest in references(found[0]) or ()}
    except ValueError:
        return None
    return [name for name in blobs if blob_digest(name) not in named]


def sweep_blobs(
    fs: FileSystem, root: int, name: str, folder: int, *, cutoff: float, locks: int, lock_timeout: float
) -> int:
    """Remove the blobs of the session folder ``name`` that its ``meta.json`` no longer names
    and that are older than ``cutoff``, under the key's stripe; return how many went.

    The age is the blob file's modification time, which is when it was made (a blob is
    never rewritten), not when a write stopped naming it: a blob made long ago and dropped
    an instant ago goes at once. What keeps a reader right is not the age: a reader reads
    ``meta.json`` and then its blobs without a lock, and on a blob that is missing reads
    ``meta.json`` again (up to three times), which no longer names it. The age only spares
    blobs made recently.
    """
    candidates = old_blobs(fs, folder, cutoff=cutoff)
    if not candidates:
        return 0
    try:
        key = folder_key(fs, name, dir_fd=root)
    except ValueError:
        return 0  # fsck reports it
    if key is None:
        return 0
    stripe = stripe_name(stripe_of(key))
    removed = 0
    # A lock file of its own (not a writer's descriptor: flock on one open file description
    # would not exclude this process's own writers).
    with store_lock(fs, stripe, dir_fd=locks, timeout=lock_timeout, what=f"{LOCKS}/{stripe}"):
        for doomed in unreferenced(fs, folder, candidates) or ():
            try:
                fs.unlink(doomed, dir_fd=folder)
            except FileNotFoundError:
                continue
            removed += 1
    return removed


def sweep_names(
    fs: FileSystem,
    root: int,
    names: list[str],
    *,
    cutoff: float,
    locks: int = -1,
    lock_timeout: float = 10.0,
) -> int:
    """Remove orphans among ``names`` of the store folder: tmp files (at the top and in
    session folders), trash and (given the ``.locks`` folder ``locks``) unreferenced blobs
    older than ``cutoff``. Best effort; returns how many went."""
    swept = 0
    for name in names:
        try:
            if is_tmp_name(name):  # only the FORMAT marker is written at the top
                if fs.stat(name, dir_fd=root).st_mtime < cutoff:
                    fs.unlink(name, dir_fd=root)
                    swept += 1
                continue
            if name != TRASH and not is_session_name(name):
                continue
            folder = fs.open_dir(name, dir_fd=root)
        except OSError:
            continue
        try:
            if name == TRASH:
                for doomed in old_trash(fs, folder, cutoff=cutoff):
                    try:
                        fs.remove_tree(doomed, dir_fd=folder)
                    except OSError:
                        continue
                    swept += 1
            else:
                swept += remove_tmp_files(fs, folder, cutoff=cutoff)
                if locks >= 0:
                    swept += sweep_blobs(
                        fs, root, name, folder, cutoff=cutoff, locks=locks, lock_timeout=lock_timeout
                    )
        except OSError:
            pass  # fsck reports what is left (a LockTimeoutError too: next time)
        finally:
            try:
                fs.close(folder)
            except OSError:
                pass
    return swept
