"""Moving a store from the legacy ``sessions.json`` to the directory store, and back.

:func:`migrate` is built so that a crash at any instant leaves one
authoritative store, never a half-made one:

1. take the store-wide lock ``.<stem>.lock`` (the lock every legacy-mode writer
   of this library takes), so nobody rewrites ``sessions.json`` meanwhile;
2. parse ``sessions.json`` into raw slices (entries are not decoded), check
   every key and entry, and refuse (or, if asked, skip and report) the ones a
   directory store cannot hold;
3. build the whole directory store in a staging folder ``.<stem>.d.staging``
   beside it, fsync every file and folder, write the FORMAT marker last;
4. rename the staging folder to ``<stem>.d`` in one ``rename`` and fsync the
   parent folder: from this instant the directory store is the store;
5. rename ``sessions.json`` to ``sessions.json.pre-directory-migration.<timestamp>``.

Until step 4 lands, ``<stem>.d`` has no FORMAT marker and the legacy file is
authoritative; after it, the directory store is, and the legacy file is only
waiting to be put aside. Running :func:`migrate` again finishes the job from
either state: a stale staging folder is removed and rebuilt; a complete store
beside a legacy file only needs the backup rename.

:func:`export_json` is the way back: every session in one legacy-format file.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import stat as stat_module
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import anyio
import msgspec

from ._defaults import DEFAULT_LOCK_TIMEOUT
from ._entry import DECODE_ERRORS
from ._errors import (
    CorruptSessionError,
    MigrationError,
    SessionStoreError,
    StoreFormatError,
    StoreIOError,
    io_error,
)
from ._fs import FILE_MODE, FileSystem
from ._keys import encode_key, is_shortened, validate_key
from ._layout import (
    FORMAT_FILE,
    FORMAT_VERSION,
    KEY_FILE,
    LOCKS,
    META,
    RECORD,
    SWEPT,
    TRASH,
    StorePaths,
    blob_name,
    detect_mode,
    encode_format,
    ensure_store_dirs,
    exists,
    read_marker,
    refuse_inside_store,
)
from ._locks import acquire_file_lock, release_file_lock
from ._parts import split
from ._preflight import migration_blockers
from ._upgrade import older_version, upgrade_format
from .backends._directory import BATCH_WRITERS, DirectoryBackend
from .backends._json import decode_legacy, encode_legacy

__all__ = ["MigrationReport", "export_json", "migrate"]

#: Infix of the legacy file's backup name.
BACKUP_INFIX = ".pre-directory-migration."
#: Entries written per worker-thread hop.
BATCH = 256
#: Decodes a JSON object without decoding its members (also used by fsck).
object_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])

Progress = Callable[[int, int], object]


@dataclass(frozen=True)
class MigrationReport:
    """What :func:`migrate` did (or, with ``dry_run``, would do)."""

    #: The legacy file that was (or would be) migrated.
    source: str
    #: The directory store, ``<stem>.d``.
    directory: str
    #: Sessions written to the directory store by this run (would be, in a dry run).
    entries: int
    #: Size in bytes of the legacy file read (0 when there was none to read).
    bytes: int
    #: Wall-clock seconds the whole call took.
    seconds: float
    #: Where the legacy file went (``sessions.json.pre-directory-migration.<timestamp>``), if moved.
    backup: str | None
    #: Entries that could not be migrated: key -> reason. Without ``skip_invalid``
    #: a non-empty dict means the migration was refused (see :class:`MigrationError`).
    problems: Mapping[str, str] = field(default_factory=dict)
    #: How many entries were left out (only with ``skip_invalid``; they stay in the backup).
    skipped: int = 0
    #: The directory store already existed with its marker; at most the backup was left to do.
    already_migrated: bool = False
    #: Nothing was written: the report says what a real run would do.
    dry_run: bool = False
    #: Things an operator should look at (e.g. the legacy file changed after the store was built).
    warnings: tuple[str, ...] = ()
    #: A dry run's findings of what would make the real run fail: entries it would refuse,
    #: a folder it could not write, too little free space ... Empty: it would go through.
    blockers: tuple[str, ...] = ()


class _Record(msgspec.Struct, rename="camel", omit_defaults=True):
    """The ``.migration.json`` left inside a migrated store."""

    source: str
    bytes: int
    blake2b: str
    entries: int
    migrated_at: str
    skipped: dict[str, str] = {}


@dataclass
class _Plan:
    """The state found under the lock, and what to do about it."""

    state: Literal["build", "backup", "done"]
    entries: dict[str, msgspec.Raw] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    size: int = 0
    digest: str = ""
    warnings: list[str] = field(default_factory=list)


def _describe(first: int) -> str:
    kinds = {ord("["): "an array", ord('"'): "a string", ord("n"): "null", ord("t"): "a boolean"}
    kinds[ord("f")] = "a boolean"
    return kinds.get(first, "a number")


def _check_entries(entries: Mapping[str, msgspec.Raw]) -> dict[str, str]:
    """Every entry a directory store cannot hold, with the reason (pure; no decoding)."""
    problems: dict[str, str] = {}
    for key, raw in entries.items():
        try:
            validate_key(key)
        except ValueError as exc:
            problems[key] = f"invalid key: {getattr(exc, 'problem', exc)}"
            continue
        view = memoryview(raw)
        if not view or view[0] != ord("{"):
            problems[key] = f"the entry is {_describe(view[0]) if view else 'empty'}, not a JSON object"
    return problems


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=20).hexdigest()


def _stamp() -> str:
    """A UTC timestamp for backup and quarantine names (sortable, no ':' for Windows)."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


class _Migration:
    """The blocking steps of one migration; each method runs in a worker thread."""

    def __init__(self, paths: StorePaths, fs: FileSystem, *, durable: bool) -> None:
        self.paths = paths
        self.fs = fs
        self.durable = durable
        self.parent = -1
        self.lock = -1
        self.staging = -1
        #: The staging folder has been renamed into place: the directory store is the store.
        self.published = False
        self.staging_name = paths.staging

    # -- setup and state ----------------------------------------------------------------

    def open(self, *, lock: bool) -> None:
        refuse_inside_store(self.fs, self.paths)
        folder = str(self.paths.file.parent)
        try:
            self.parent = self.fs.open_dir(folder)
        except FileNotFoundError:
            raise MigrationError(f"no session store at {self.paths.file}: {folder} does not exist") from None
        if lock:
            if not self._exists(self.paths.file.name) and not self._exists(self.paths.directory.name):
                # Checked before the lock file is made: a wrong path leaves nothing behind.
                raise MigrationError(self._no_store())
            self.lock = self.fs.open_lock_file(self.paths.lock.name, dir_fd=self.parent)

    def close(self) -> None:
        fds = (self.staging, self.lock, self.parent)
        self.staging = self.lock = self.parent = -1  # never close a number twice: it may be reused
        for fd in fds:
            if fd >= 0:
                try:
                    self.fs.close(fd)
                except OSError:
                    pass

    def _no_store(self) -> str:
        return (
            f"no session store at {self.paths.file}: neither it nor {self.paths.directory.name}/ exists "
            "(check the path: migrate takes the legacy file, e.g. state/sessions.json)"
        )

    def _exists(self, name: str) -> bool:
        return exists(self.fs, name, dir_fd=self.parent)

    def plan(self) -> _Plan:
        """Find out where things stand (under the lock) and read the legacy file if needed."""
        fs, paths = self.fs, self.paths
        directory = paths.directory.name
        if read_marker(fs, directory, dir_fd=self.parent, where=paths.directory / FORMAT_FILE):
            found = fs.read_file(paths.file.name, dir_fd=self.parent)
            if found is None:
                return _Plan("done")
            plan = _Plan("backup", size=len(found[0]), digest=_digest(found[0]))
            plan.warnings.extend(self._compare_with_record(plan.digest))
            return plan
        found = fs.read_file(paths.file.name, dir_fd=self.parent)
        if found is None:
            if self._exists(directory):
                raise MigrationError(
                    f"{paths.directory} has no FORMAT marker and there is no {paths.file.name} to "
                    "migrate: it is not an aiosessions store (see `aiosessions fsck`)"
                )
            raise MigrationError(self._no_store())
        data = found[0]
        entries = decode_legacy(data, str(paths.file))
        return _Plan(
            "build",
            entries=entries,
            problems=_check_entries(entries),
            size=len(data),
            digest=_digest(data),  # the Raw entries keep the buffer they point into alive
        )

    def _compare_with_record(self, digest: str) -> list[str]:
        found = self.fs.read_dir_file(self.paths.directory.name, RECORD, dir_fd=self.parent)
        name = self.paths.file.name
        if found is None:
            return [
                f"{name} was beside a directory store that was not made by migrate(); it was moved "
                "aside, not merged: the directory store is authoritative"
            ]
        try:
            record = msgspec.json.decode(found[0], type=_Record)
        except DECODE_ERRORS:
            return [f"{self.paths.directory / RECORD} is unreadable; {name} was moved aside, not merged"]
        if record.blake2b != digest:
            return [
                f"{name} changed after the directory store was built from it (a legacy-mode writer "
                "ran between the two steps?); it was moved aside, not merged: compare the backup "
                "with the store (`aiosessions export`) for changes to carry over"
            ]
        return []

    # -- building -----------------------------------------------------------------------

    def prepare(self) -> None:
        """Clear leftovers of an interrupted run and create an empty staging folder."""
        fs = self.fs
        if self._exists(self.staging_name):
            fs.remove_tree(self.staging_name, dir_fd=self.parent)
        directory = self.paths.directory.name
        if self._exists(directory):
            self._clear_unmarked(directory)
        fs.mkdir(self.staging_name, dir_fd=self.parent)
        self.staging = fs.open_dir(self.staging_name, dir_fd=self.parent)
        ensure_store_dirs(fs, self.staging)

    def _clear_unmarked(self, directory: str) -> None:
        """Remove a marker-less ``<stem>.d`` if it holds nothing (a store creation that died
        before its marker); refuse to touch one that holds anything else."""
        fs = self.fs
        root = fs.open_dir(directory, dir_fd=self.parent)
        try:
            names = fs.listdir(root)
            for name in names:
                if name in (LOCKS, TRASH):
                    sub = fs.open_dir(name, dir_fd=root)
                    try:
                        empty = not fs.listdir(sub)
                    finally:
                        fs.close(sub)
                    if empty:
                        continue
                raise MigrationError(
                    f"{self.paths.directory} exists without a FORMAT marker and is not empty: it is "
                    "not an aiosessions store and migrate will not overwrite it; move it aside first"
                )
            for name in names:
                fs.rmdir(name, dir_fd=root)
        finally:
            fs.close(root)
        fs.rmdir(directory, dir_fd=self.parent)

    def write_batch(self, batch: list[tuple[str, msgspec.Raw]]) -> None:
        """Write one batch of session folders into the staging folder."""
        fs, staging, durable = self.fs, self.staging, self.durable
        for key, raw in batch:
            name = encode_key(key)
            data = msgspec.json.format(raw, indent=-1)  # compact, every token kept as it was
            fs.mkdir(name, dir_fd=staging)
            folder = fs.open_dir(name, dir_fd=staging)
            try:
                if is_shortened(name):
                    fs.write_new(KEY_FILE, key.encode("utf-8"), dir_fd=folder, durable=durable)
                meta, blobs = split(data)  # large members apart (format version 2)
                for digest, blob in blobs.items():
                    fs.write_new(blob_name(digest), blob, dir_fd=folder, durable=durable)
                fs.write_new(META, meta, dir_fd=folder, durable=durable)
                if durable:
                    fs.fsync(folder)
            finally:
                fs.close(folder)

    def seal(self, record: _Record) -> None:
        """Make the staging folder durable and write the marker, last."""
        fs = self.fs
        fs.write_new(RECORD, msgspec.json.encode(record) + b"\n", dir_fd=self.staging, durable=self.durable)
        fs.write_new(SWEPT, b"", dir_fd=self.staging, durable=False)  # nothing to sweep in a new store
        if self.durable:
            fs.fsync(self.staging)
        fs.write_atomic(FORMAT_FILE, encode_format(), dir_fd=self.staging, durable=self.durable)
        staging, self.staging = self.staging, -1
        fs.close(staging)

    def publish(self) -> None:
        """One rename makes the directory store the store."""
        self.fs.rename(
            self.staging_name, self.paths.directory.name, src_dir_fd=self.parent, dst_dir_fd=self.parent
        )
        self.published = True
        if self.durable:
            self.fs.fsync(self.parent)

    def back_up(self) -> str:
        """Rename the legacy file out of the way (never over an existing file); return its path."""
        base = f"{self.paths.file.name}{BACKUP_INFIX}{_stamp()}"
        name, n = base, 0
        while self._exists(name):
            n += 1
            name = f"{base}.{n}"
        self.fs.rename(self.paths.file.name, name, src_dir_fd=self.parent, dst_dir_fd=self.parent)
        if self.durable:
            self.fs.fsync(self.parent)
        return str(self.paths.file.with_name(name))

    def discard_staging(self) -> None:
        """Best effort after a failure: the next run removes whatever is left."""
        if self.staging >= 0:
            staging, self.staging = self.staging, -1
            try:
                self.fs.close(staging)
            except OSError:
                pass
        try:
            self.fs.remove_tree(self.staging_name, dir_fd=self.parent)
        except OSError:
            pass


def _batches(
    entries: Mapping[str, msgspec.Raw], skip: Mapping[str, str], size: int
) -> Iterator[list[tuple[str, Any]]]:
    batch: list[tuple[str, Any]] = []
    for key, raw in entries.items():
        if key in skip:
            continue
        batch.append((key, raw))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _refusal(paths: StorePaths, problems: Mapping[str, str]) -> MigrationError:
    shown = "; ".join(f"{key!r}: {reason}" for key, reason in list(problems.items())[:5])
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    return MigrationError(
        f"{len(problems)} entr{'y' if len(problems) == 1 else 'ies'} of {paths.file} cannot be "
        f"migrated: {shown}{more}. Nothing was changed; fix them, or pass skip_invalid=True "
        "(--skip-invalid) to leave them out (they stay in the backup file)",
        problems=problems,
    )


async def migrate(
    path: str | os.PathLike[str],
    *,
    skip_invalid: bool = False,
    dry_run: bool = False,
    fsync: bool = True,
    progress: Progress | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    filesystem: FileSystem | None = None,
) -> MigrationReport:
    """Move the legacy store ``path`` (``X/sessions.json``) into the directory store ``X/sessions.d``.

    Crash-safe and idempotent (see the module docstring): call it again after
    any failure to finish the job. Already migrated: returns a report saying so.
    A store of this library still open in legacy mode (in any process) carries on
    in the directory store once it is in place, losing nothing; stop other programs
    that write the file (they cannot follow) first.

    :param path: the legacy store file, ``X/sessions.json`` (or its ``X/sessions.d``).
    :param skip_invalid: leave out entries that cannot be migrated (an invalid
        key, a value that is not a JSON object) instead of refusing; they are
        listed in the report and remain in the backup of the legacy file.
    :param dry_run: read and check everything, write nothing; the report's
        ``blockers`` say what would stop the real run (entries it would refuse,
        permission to create and rename in the folder, free space, a folder in the
        way), empty when it would go through.
    :param fsync: make every file and folder durable before the switch (leave on
        for real data; off is for tests and throwaway stores).
    :param progress: called as ``progress(done, total)`` on the event loop as
        sessions are written.
    :param lock_timeout: seconds to wait for the store's lock.
    :param filesystem: the :class:`FileSystem` doing every blocking call.
    :raises MigrationError: entries cannot be migrated (``problems`` lists them),
        or there is no legacy store at ``path``; nothing was changed.
    :raises CorruptSessionError: the legacy file is empty or not a JSON object.
    :raises StoreFormatError: the directory's FORMAT marker is of another version.
    :raises LockTimeoutError: another process held the store's lock too long.
    :raises StoreIOError: the disk failed; the store that was authoritative still is.
    """
    started = time.perf_counter()
    paths = StorePaths.of(path)
    fs = filesystem if filesystem is not None else FileSystem()
    upgraded = False
    older = await anyio.to_thread.run_sync(older_version, paths, fs) if dry_run else None
    if not dry_run:
        # A directory store of an earlier format version is moved forward (before this
        # function takes the store lock: the upgrade takes it itself).
        try:
            upgraded = await anyio.to_thread.run_sync(
                functools.partial(upgrade_format, paths, fs, lock_timeout=lock_timeout)
            )
        except OSError as exc:
            raise io_error(
                exc, f"moving {paths.directory} forward to the current format", path=str(paths.directory)
            ) from exc
    job = _Migration(paths, fs, durable=fsync)
    stage = "opening"

    def report(**fields: Any) -> MigrationReport:
        fields.setdefault("backup", None)
        if upgraded or older is not None:
            done = "was moved" if upgraded else f"is format version {older}: the real run moves it"
            fields["warnings"] = (
                *fields.get("warnings", ()),
                f"{paths.directory} {done} forward to format version {FORMAT_VERSION}",
            )
        return MigrationReport(
            source=str(paths.file),
            directory=str(paths.directory),
            seconds=time.perf_counter() - started,
            **fields,
        )

    try:
        try:
            await anyio.to_thread.run_sync(lambda: job.open(lock=not dry_run))
            if not dry_run:
                stage = "locking"
                await acquire_file_lock(fs, job.lock, timeout=lock_timeout, what=str(paths.lock))
            try:
                stage = "reading"
                plan = await anyio.to_thread.run_sync(job.plan)
                if plan.state != "build":
                    backup = None
                    if plan.state == "backup" and not dry_run:
                        stage = "renaming the legacy file"
                        backup = await anyio.to_thread.run_sync(job.back_up)
                    blockers: list[str] = []
                    if plan.state == "backup" and dry_run:
                        blockers = await anyio.to_thread.run_sync(
                            lambda: migration_blockers(
                                paths, entries=None, staging=job.staging_name, problems={}, skip_invalid=True
                            )
                        )
                    return report(
                        entries=0,
                        bytes=plan.size,
                        backup=backup,
                        already_migrated=True,
                        dry_run=dry_run,
                        warnings=tuple(plan.warnings),
                        blockers=tuple(blockers),
                    )
                if plan.problems and not skip_invalid and not dry_run:
                    raise _refusal(paths, plan.problems)
                total = len(plan.entries) - len(plan.problems)
                if dry_run:
                    # What the real run needs beyond a valid file: see _preflight.
                    writes = {key: raw for key, raw in plan.entries.items() if key not in plan.problems}
                    blockers = await anyio.to_thread.run_sync(
                        lambda: migration_blockers(
                            paths,
                            entries=writes,
                            staging=job.staging_name,
                            problems=plan.problems,
                            skip_invalid=skip_invalid,
                        )
                    )
                    return report(
                        entries=total,
                        bytes=plan.size,
                        problems=plan.problems,
                        skipped=len(plan.problems),
                        dry_run=True,
                        blockers=tuple(blockers),
                    )
                stage = "building"
                await _build(job, plan, total, progress)
                stage = "switching"
                await anyio.to_thread.run_sync(job.publish)
                stage = "renaming the legacy file"
                backup = await anyio.to_thread.run_sync(job.back_up)
                return report(
                    entries=total,
                    bytes=plan.size,
                    backup=backup,
                    problems=plan.problems,
                    skipped=len(plan.problems),
                )
            finally:
                if job.lock >= 0 and not dry_run:
                    try:
                        release_file_lock(fs, job.lock)
                    except OSError:
                        pass  # closing the descriptor releases it too
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(job.close)
    except OSError as exc:
        if isinstance(exc, SessionStoreError):  # LockTimeoutError is a TimeoutError, an OSError
            raise
        raise _io_failure(exc, paths, stage, published=job.published) from exc


async def _build(job: _Migration, plan: _Plan, total: int, progress: Progress | None) -> None:
    """Write every session into the staging folder, seal it; remove it again on failure."""
    try:
        await anyio.to_thread.run_sync(job.prepare)
        # Parallel fsyncs share journal commits, as in the directory backend's batches.
        workers = BATCH_WRITERS if job.durable else 1
        # Small stores still get several batches, so that the workers' fsyncs overlap.
        size = max(8, min(BATCH, -(-total // (4 * workers))))
        batches = _batches(plan.entries, plan.problems, size)
        done = 0
        errors: list[Exception] = []

        async def worker(scope: anyio.CancelScope) -> None:
            nonlocal done
            try:
                for batch in batches:  # shared iterator, advanced on the event loop only
                    await anyio.to_thread.run_sync(job.write_batch, batch)
                    done += len(batch)
                    if progress is not None:
                        progress(done, total)
            except Exception as exc:
                # Raise the first failure itself, not an exception group; the other
                # workers stop after their current batch (a thread is never abandoned).
                errors.append(exc)
                scope.cancel()

        if progress is not None:
            progress(0, total)
        async with anyio.create_task_group() as tg:
            for _ in range(workers):
                tg.start_soon(worker, tg.cancel_scope)
        if errors:
            raise errors[0]
        record = _Record(
            source=job.paths.file.name,
            bytes=plan.size,
            blake2b=plan.digest,
            entries=total,
            migrated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            skipped=dict(plan.problems),
        )
        await anyio.to_thread.run_sync(job.seal, record)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(job.discard_staging)
        raise


def _io_failure(exc: OSError, paths: StorePaths, stage: str, *, published: bool) -> StoreIOError:
    if published or stage == "renaming the legacy file":
        state = (
            f"the directory store {paths.directory} is complete and authoritative; run migrate "
            f"again to move {paths.file.name} aside"
        )
    else:
        state = f"{paths.file} is still the store and nothing was lost; run migrate again"
    reason = exc.strerror or exc.__class__.__name__
    where = f": {exc.filename}" if isinstance(exc.filename, str) else ""
    # Calls relative to a folder descriptor carry a relative name, calls on a descriptor
    # none: name the store file then, so the error always points at a real path.
    filename = exc.filename if isinstance(exc.filename, str) and os.path.isabs(exc.filename) else None
    return StoreIOError(
        exc.errno,
        f"migrating {paths.file} failed while {stage}: {reason}{where} ({state})",
        filename or str(paths.file),
    )


# -- the way back ---------------------------------------------------------------------------


#: Called with each session an export cannot read; the session is then left out.
OnCorrupt = Callable[[CorruptSessionError], object]


async def export_bytes(
    path: str | os.PathLike[str],
    *,
    on_corrupt: OnCorrupt | None = None,
    filesystem: FileSystem | None = None,
) -> bytes:
    """Every session of the store at ``path`` as one legacy ``sessions.json`` document.

    Entries are sorted by key and indented by 2, as OpenClaw writes them. A session
    that cannot be read stops it (see :func:`export_json`), unless ``on_corrupt``
    takes it.
    """
    paths = StorePaths.of(path)
    fs = filesystem if filesystem is not None else FileSystem()
    entries = await _read_all(paths, fs, on_corrupt)
    return await anyio.to_thread.run_sync(encode_legacy, dict(sorted(entries.items())))


async def _read_all(
    paths: StorePaths, fs: FileSystem, on_corrupt: OnCorrupt | None
) -> dict[str, msgspec.Raw]:
    try:
        mode = await anyio.to_thread.run_sync(detect_mode, fs, paths)
        if mode is None:
            raise StoreFormatError(
                f"no session store at {paths.file}: neither it nor {paths.directory.name}/ "
                "(with a FORMAT marker) exists"
            )
        if mode == "json":
            legacy = await anyio.to_thread.run_sync(fs.read_file, str(paths.file))
            if legacy is None:
                raise StoreFormatError(f"{paths.file} disappeared while it was being read")
            return await anyio.to_thread.run_sync(decode_legacy, legacy[0], str(paths.file))
    except OSError as exc:
        raise io_error(exc, f"reading {paths.file}", path=str(paths.file)) from exc
    backend = DirectoryBackend(
        paths,
        fs,
        create=False,
        lock_timeout=DEFAULT_LOCK_TIMEOUT,
        max_entry_bytes=2**31,
        cache_bytes=0,
        tmp_max_age=float("inf"),
        upgrade=False,  # an export writes nothing: a store of format version 1 is read as it is
    )
    await backend.open()
    entries: dict[str, msgspec.Raw] = {}
    # Every unreadable session is found before deciding: the error names them all, not the first.
    unreadable: list[CorruptSessionError] = []
    try:
        async for keys in backend.key_chunks():
            for key, data in zip(keys, await backend.read_many(keys), strict=True):
                if isinstance(data, CorruptSessionError):
                    unreadable.append(data)
                    continue
                if isinstance(data, BaseException):
                    raise data
                if data is None:
                    continue  # deleted while we listed
                try:
                    object_decoder.decode(data)
                except DECODE_ERRORS as exc:
                    where = backend.location(key)
                    error = CorruptSessionError(
                        f"session {key!r}: {where} is not a JSON object ({exc})", where=where, key=key
                    )
                    error.__cause__ = exc
                    unreadable.append(error)
                    continue
                entries[key] = msgspec.Raw(data)
        # Sessions that read as absent were deleted while listing, or the whole folder went (a
        # store of version 1 moved forward by another process): then fail, never a partial backup.
        if await anyio.to_thread.run_sync(backend.replaced_sync):
            raise StoreFormatError(
                f"the session store {paths.directory} was replaced while it was exported (moved "
                "forward to a new format version by another process?); nothing was exported: "
                "run the export again"
            )
    finally:
        await backend.aclose()
    if unreadable:
        if on_corrupt is None:
            raise unreadable_error(unreadable, "nothing was exported", "on_corrupt=")
        for error in unreadable:
            on_corrupt(error)
    return entries


def unreadable_error(errors: list[CorruptSessionError], outcome: str, option: str) -> CorruptSessionError:
    """One error naming every session that could not be read (and what to do about them)."""
    shown = "; ".join(str(error) for error in errors[:3])
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    count = "1 session" if len(errors) == 1 else f"{len(errors)} sessions"
    error = CorruptSessionError(
        f"{count} cannot be read: {shown}{more}; {outcome}. `aiosessions fsck --repair` quarantines "
        f"{'it' if len(errors) == 1 else 'them'}, or pass {option} (--skip-corrupt) to go on without "
        f"{'it' if len(errors) == 1 else 'them'}",
        where=errors[0].where,
        key=errors[0].key if len(errors) == 1 else None,
    )
    error.__cause__ = errors[0]
    return error


def _export_target(paths: StorePaths, dest: str | os.PathLike[str]) -> Path:
    target = Path(os.path.abspath(os.fspath(dest)))
    if paths.directory in target.parents or target == paths.directory:
        raise ValueError(f"cannot export into the store itself ({target} is inside {paths.directory})")
    return target


async def export_json(
    path: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    fsync: bool = True,
    on_corrupt: OnCorrupt | None = None,
    filesystem: FileSystem | None = None,
) -> int:
    """Write every session of the store at ``path`` into ``dest``, one legacy-format JSON file.

    The file is what OpenClaw reads (an object of entries, indented by 2) and
    what :func:`migrate` turns into the same store again. It is written
    atomically (tmp file + rename); an existing ``dest`` is replaced. Each
    entry is read as it is on disk at that moment; stop writers first for a
    consistent snapshot. Returns the number of sessions written.

    :param path: the store, either kind (``X/sessions.json`` or ``X/sessions.d``).
    :param dest: the file to write; it may not be inside the store.
    :param fsync: make the new file and its folder durable before returning.
    :param on_corrupt: called with the :class:`CorruptSessionError` of each session
        that cannot be read, which is then left out of the file (the command line's
        ``--skip-corrupt``); without it such sessions stop the export.
    :param filesystem: the :class:`FileSystem` doing every blocking call.
    :raises CorruptSessionError: sessions cannot be read (a ``meta.json`` that is
        not a JSON object) and no ``on_corrupt`` was given; the message names them
        and nothing is written (run ``aiosessions fsck --repair`` first).
    :raises StoreFormatError: there is no store at ``path``, or its folder was replaced
        while it was read (another process moved a store of format version 1 forward):
        nothing was written, run it again.
    :raises StoreIOError: the disk failed.
    """
    paths = StorePaths.of(path)
    fs = filesystem if filesystem is not None else FileSystem()
    target = _export_target(paths, dest)
    entries = await _read_all(paths, fs, on_corrupt)
    data = await anyio.to_thread.run_sync(encode_legacy, dict(sorted(entries.items())))

    def write() -> None:
        folder = fs.open_dir(str(target.parent))
        try:
            mode = FILE_MODE
            try:
                st = fs.stat(target.name, dir_fd=folder)
            except FileNotFoundError:
                pass
            else:
                if stat_module.S_ISDIR(st.st_mode):
                    raise IsADirectoryError(errno.EISDIR, "is a directory", str(target))
                mode = stat_module.S_IMODE(st.st_mode)  # a file replaced keeps its permissions
            fs.write_atomic(target.name, data, dir_fd=folder, durable=fsync, mode=mode)
        finally:
            fs.close(folder)

    try:
        await anyio.to_thread.run_sync(write)
    except OSError as exc:
        raise io_error(exc, f"writing {target}", path=str(target)) from exc
    return len(entries)
