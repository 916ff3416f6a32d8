"""Keeping a store tidy: :func:`prune` old sessions, :func:`fsck` the files on disk.

``prune`` follows OpenClaw's session maintenance (``pruneStaleEntries`` then
``capEntryCount``): first every entry whose ``updatedAt`` is older than the
cutoff goes, then, if more than ``max_entries`` are left, the oldest go until
``max_entries`` remain. As in OpenClaw, an entry without an integer
``updatedAt`` is never stale (its age is unknown) but counts as the oldest when
capping. The policy itself is the pure function :func:`plan_prune`.

Prune deletes through a :class:`~aiosessions.SessionStore`, so it takes the
same per-key (or store-wide) cross-process locks as any writer and deletes
with compare-and-swap: an entry that another process touched after the scan
(its ``updatedAt`` moved) is kept.

``fsck`` reads every file of a store. In a directory store it finds orphaned
tmp files, ``meta.json`` files that are not JSON objects, folders without one,
folder names that decode to no key, stray files, old trash, a missing or
invalid FORMAT marker, and a staging folder left by an interrupted migration.
With ``repair=True`` it removes what is garbage by construction (orphaned tmp
files, old trash, a stale staging folder) and moves everything else that is
wrong into ``<stem>.d/.quarantine/``; it never deletes data. A folder is
checked and repaired under its key's cross-process lock, so a writer's
in-flight tmp file is never taken for an orphan.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat as stat_module
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from contextlib import AbstractContextManager, ExitStack, aclosing
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, Literal

import anyio
import msgspec

from . import _journal
from ._defaults import DEFAULT_LOCK_TIMEOUT, DEFAULT_MAX_ENTRY_BYTES, DEFAULT_TMP_MAX_AGE
from ._entry import DECODE_ERRORS, storable
from ._errors import (
    CorruptSessionError,
    FlushError,
    SessionStoreError,
    StoreFormatError,
    StoreIOError,
    io_error,
)
from ._fs import FileSystem, NotRegularFileError, TooLargeError, is_tmp_for, is_tmp_name
from ._journal import JOURNAL, parse
from ._layout import (
    FORMAT_FILE,
    FORMAT_MAX_BYTES,
    FORMAT_VERSION,
    KEY_FILE,
    LOCK_STRIPES,
    LOCKS,
    META,
    QUARANTINE,
    READABLE_VERSIONS,
    TRASH,
    StorePaths,
    blob_digest,
    blob_name,
    check_format,
    detect_mode,
    encode_format,
    exists,
    folder_key,
    format_version,
    is_session_name,
    old_blobs,
    old_tmp_files,
    old_trash,
    refuse_inside_store,
    stripe_name,
    stripe_of,
    unreferenced,
    walk,
)
from ._locks import store_lock
from ._migrate import _check_entries, _stamp, unreadable_error
from ._parts import join, references
from ._recency import bounded
from ._store import DELETE, _Delete, open_store
from .backends._directory import DirectoryBackend
from .backends._index import INDEX_DIR, check_index
from .backends._json import decode_legacy

__all__ = ["FsckProblem", "FsckReport", "PruneReport", "fsck", "plan_prune", "prune"]


# -- prune --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PruneReport:
    """What :func:`prune` removed (or, with ``dry_run``, would remove)."""

    #: The store (its ``<stem>.d`` folder or legacy file).
    path: str
    #: Sessions in the store before pruning.
    total: int
    #: Keys chosen because their ``updatedAt`` was older than the cutoff (those also in
    #: ``spared`` were kept).
    stale: tuple[str, ...]
    #: Keys chosen to bring the store down to ``max_entries``, oldest first (those also in
    #: ``spared`` were kept).
    capped: tuple[str, ...]
    #: Keys that were candidates but changed meanwhile (another process updated them): kept.
    spared: tuple[str, ...]
    #: Nothing was deleted.
    dry_run: bool
    #: Wall-clock seconds.
    seconds: float
    #: Keys whose entry could not be read (not a JSON object): left alone, neither counted in
    #: ``total`` nor removed (with ``skip_corrupt``, or in a dry run).
    unreadable: tuple[str, ...] = ()

    @property
    def removed(self) -> tuple[str, ...]:
        """Every key removed (stale first, then capped)."""
        return tuple(key for key in (*self.stale, *self.capped) if key not in self.spared)

    @property
    def kept(self) -> int:
        """Sessions left."""
        return self.total - len(self.removed)


def plan_prune(
    recency: Mapping[str, int | None], *, cutoff_ms: int | None, max_entries: int | None
) -> tuple[list[str], list[str]]:
    """Which keys prune removes: ``(stale, capped)``; pure, no I/O.

    ``recency`` maps each key to its ``updatedAt`` (None when absent or not an
    integer). Stale: ``updatedAt < cutoff_ms``. Then, of the rest, all but the
    ``max_entries`` newest are capped; an unknown ``updatedAt`` counts as
    oldest, and ties go by key so the result is deterministic. Capped keys are
    listed oldest first.
    """
    if max_entries is not None and max_entries < 0:
        raise ValueError(f"max_entries must be >= 0, not {max_entries!r}")
    stale = []
    rest = []
    for key, at in recency.items():
        if cutoff_ms is not None and at is not None and at < cutoff_ms:
            stale.append(key)
        else:
            rest.append(key)
    capped: list[str] = []
    if max_entries is not None and len(rest) > max_entries:
        newest_first = sorted(rest, key=lambda k: (-_age_rank(recency[k]), k))
        capped = sorted(newest_first[max_entries:], key=lambda k: (_age_rank(recency[k]), k))
    stale.sort(key=lambda k: (_age_rank(recency[k]), k))
    return stale, capped


def _age_rank(at: int | None) -> float:
    return float("-inf") if at is None else at


def _seconds(value: float | timedelta) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not seconds >= 0:
        raise ValueError(f"older_than must be a non-negative duration, not {value!r}")
    return seconds


async def prune(
    path: str | os.PathLike[str],
    *,
    older_than: float | timedelta | None = None,
    max_entries: int | None = None,
    dry_run: bool = False,
    skip_corrupt: bool = False,
    confirm: Callable[[PruneReport], Awaitable[bool]] | None = None,
    now: float | None = None,
    fsync: bool = True,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    filesystem: FileSystem | None = None,
) -> PruneReport:
    """Remove sessions not updated for ``older_than``, then all but the newest ``max_entries``.

    Works on both store kinds, through a store opened here (so locks and
    compare-and-swap apply); a JSON store is rewritten once.

    :param path: the store, either kind (``X/sessions.json`` or ``X/sessions.d``).
    :param older_than: seconds (or a ``timedelta``); None skips the age rule.
    :param max_entries: how many sessions to keep at most; None skips the cap.
    :param dry_run: only report what would go (and which sessions cannot be read);
        nothing is written, not even a lock file.
    :param skip_corrupt: leave sessions whose entry cannot be read alone (listed in
        the report's ``unreadable``) instead of refusing to prune.
    :param confirm: awaited with the plan (a dry-run report) once it is made and
        before anything is removed, when there is something to remove; if it
        returns False nothing is removed and the plan is returned (the command
        line asks a person at a terminal here).
    :param now: the current time in epoch seconds (default: the clock).
    :param fsync: make the deletions durable before returning.
    :param lock_timeout: seconds to wait for another process's lock.
    :param filesystem: the :class:`FileSystem` doing every blocking call.
    :raises StoreFormatError: there is no store at ``path``.
    :raises CorruptSessionError: entries cannot be read and neither ``skip_corrupt``
        nor ``dry_run`` was given; the message names them and nothing was removed.
    :raises StoreIOError: sessions could not be removed (a read-only store, a full
        disk); the message says how many were removed before and that the others
        are still in the store.
    """
    if older_than is None and max_entries is None:
        raise ValueError("prune needs older_than, max_entries or both")
    started = time.perf_counter()
    cutoff_ms = None
    if older_than is not None:
        cutoff_ms = int(((time.time() if now is None else now) - _seconds(older_than)) * 1000)
    fs = filesystem if filesystem is not None else FileSystem()
    paths = StorePaths.of(path)
    mode = await _require_store(paths, fs)
    target: Any = path
    options: dict[str, Any] = {
        "lock_timeout": lock_timeout,
        # A dry run writes nothing: not even the sweep of old tmp files.
        "tmp_max_age": float("inf") if dry_run else DEFAULT_TMP_MAX_AGE,
        "filesystem": fs,
    }
    if dry_run and mode == "directory":
        # Nor does it move a store of an earlier format version forward.
        target = DirectoryBackend(
            paths, fs, create=False, upgrade=False, lock_timeout=lock_timeout, tmp_max_age=float("inf")
        )
        options = {}
    where = str(path)
    recency: dict[str, int | None] = {}
    stale: list[str] = []
    capped: list[str] = []
    spared: list[str] = []
    unreadable: dict[str, CorruptSessionError] = {}

    def report(*, dry: bool) -> PruneReport:
        return PruneReport(
            path=where,
            total=len(recency),
            stale=tuple(stale),
            capped=tuple(capped),
            spared=tuple(dict.fromkeys(spared)),
            dry_run=dry,
            seconds=time.perf_counter() - started,
            unreadable=tuple(unreadable),
        )

    try:
        async with open_store(target, entry_type=dict, flush_interval=3600, fsync=fsync, **options) as store:
            where = store.path
            # From the store's index: no entry is read, but those without a recency (an
            # updatedAt that is not an integer, or an entry that cannot be read).
            after: tuple[str, int | None] | None = None
            while page := await store.newest(_PAGE, after=after):
                recency.update(page)
                after = page[-1]
            for key in [key for key, at in recency.items() if at is None]:
                try:
                    if await store.get(key) is None:
                        del recency[key]  # deleted meanwhile
                except CorruptSessionError as exc:
                    unreadable[key] = exc
                    del recency[key]
            if unreadable and not (skip_corrupt or dry_run):
                raise unreadable_error(list(unreadable.values()), "nothing was removed", "skip_corrupt=True")
            stale, capped = plan_prune(recency, cutoff_ms=cutoff_ms, max_entries=max_entries)
            asked = not dry_run and confirm is not None and bool(stale or capped)
            if asked and confirm is not None and not await confirm(report(dry=True)):
                return report(dry=True)  # declined: nothing removed
            if not dry_run:
                for key in stale:
                    await store.update(key, _drop_if(key, spared, _older_than(cutoff_ms)))
                for key in capped:
                    await store.update(key, _drop_if(key, spared, _unchanged(recency[key])))
                await store.flush()
    except FlushError as exc:
        # The store's words ("changes ... are lost") would say sessions were lost, when
        # the changes lost are deletions: the sessions they would have removed are still there.
        raise _not_removed(exc, where, len(stale) + len(capped) - len(set(spared))) from exc
    return report(dry=dry_run)


async def unreadable_sessions(
    store: Any, read: Collection[str], prefix: str = ""
) -> dict[str, CorruptSessionError]:
    """The sessions of ``store`` (whose key starts with ``prefix``) missing from ``read`` because
    their entry does not decode.

    ``read`` holds the keys ``items(prefix, skip_corrupt=True)`` yielded; each other key is
    read once more for the error that says why (``aiosessions ls`` names them).
    """
    found: dict[str, CorruptSessionError] = {}
    async for key in store.keys(prefix):
        if key in read:
            continue
        try:
            await store.get(key)  # a session created since the listing just reads
        except CorruptSessionError as exc:
            found[key] = exc
    return found


def _not_removed(exc: FlushError, where: str, chosen: int) -> StoreIOError:
    """The error of a prune whose deletions (some or all) could not be written."""
    left = max(exc.unwritten, len(exc.failures))
    first = next(iter(exc.failures.values()), None)
    reason = f": {first}" if first is not None else ""
    removed = max(0, chosen - left)
    return StoreIOError(
        exc.errno,
        f"prune could not remove {left} of the {chosen} session{'' if chosen == 1 else 's'} it chose "
        f"from {where}; {'they are' if left != 1 else 'it is'} still in the store, unchanged "
        f"({removed} removed){reason}",
        exc.filename,
        where=where,
    )


#: Sessions per page of the newest-first listing prune reads.
_PAGE = 4096


def _recency(entry: Mapping[str, Any]) -> int | None:
    return bounded(entry.get("updatedAt"))  # the rule of listings (aiosessions/_recency.py)


def _older_than(cutoff_ms: int | None) -> Callable[[int | None], bool]:
    return lambda at: at is not None and cutoff_ms is not None and at < cutoff_ms


def _unchanged(seen: int | None) -> Callable[[int | None], bool]:
    return lambda at: at == seen


def _drop_if(
    key: str, spared: list[str], still: Callable[[int | None], bool]
) -> Callable[[dict[str, Any] | None], dict[str, Any] | _Delete]:
    """An update function deleting the entry if ``still(updatedAt)`` holds when it is applied.

    It is applied again if another process changed the entry first, so the
    decision is made on the value actually replaced.
    """

    def fn(entry: dict[str, Any] | None) -> dict[str, Any] | _Delete:
        if entry is None or still(_recency(entry)):
            return DELETE
        spared.append(key)
        return entry

    return fn


async def _require_store(paths: StorePaths, fs: FileSystem) -> str:
    try:
        mode = await anyio.to_thread.run_sync(detect_mode, fs, paths)
    except OSError as exc:
        raise io_error(exc, f"opening {paths.file}", path=str(paths.file)) from exc
    if mode is None:
        raise StoreFormatError(
            f"no session store at {paths.file}: neither it nor {paths.directory.name}/ "
            "(with a FORMAT marker) exists"
        )
    return mode


# -- fsck ---------------------------------------------------------------------------------

Kind = Literal[
    "orphaned-tmp",
    "corrupt-entry",
    "missing-meta",
    "undecodable-name",
    "stray-file",
    "stale-trash",
    "missing-format",
    "bad-format",
    "stale-staging",
    "corrupt-legacy",
    "invalid-entry",
    "stale-legacy",
    "stale-index",
    "orphaned-blob",
    "old-format",
    "unreplayed-journal",
]


@dataclass(frozen=True)
class FsckProblem:
    """One thing :func:`fsck` found wrong."""

    #: What kind of problem (``orphaned-tmp``, ``corrupt-entry``, ``missing-format`` ...).
    kind: Kind
    #: The file or folder concerned.
    path: str
    #: What is wrong, in words.
    detail: str
    #: What ``repair`` did about it ("" when nothing was done).
    action: str = ""
    #: Whether ``repair=True`` can fix it; when not, ``detail`` says what to do instead.
    repairable: bool = True

    @property
    def repaired(self) -> bool:
        """Whether ``repair`` fixed it."""
        return bool(self.action)


@dataclass(frozen=True)
class FsckReport:
    """What :func:`fsck` checked and found."""

    #: The store checked (its ``<stem>.d`` folder or legacy file).
    path: str
    #: ``"directory"`` or ``"json"``.
    mode: str
    #: Healthy sessions seen.
    sessions: int
    #: Everything found wrong, repaired or not.
    problems: tuple[FsckProblem, ...]
    #: Whether repairs were asked for.
    repair: bool
    #: Wall-clock seconds.
    seconds: float

    @property
    def ok(self) -> bool:
        """No problems at all."""
        return not self.problems

    @property
    def unrepaired(self) -> tuple[FsckProblem, ...]:
        """Problems still there."""
        return tuple(problem for problem in self.problems if not problem.repaired)

    @property
    def repairable(self) -> tuple[FsckProblem, ...]:
        """Problems still there that a run with ``repair=True`` would fix."""
        return tuple(problem for problem in self.unrepaired if problem.repairable)


_object_decoder = msgspec.json.Decoder(dict[str, Any])


def _entry_problem(data: bytes, *, max_entry_bytes: int) -> str | None:
    """Why the store would not give these stored entry bytes back; None if it would.

    The reader's rules: what ``storable`` accepts (the function ``set()`` and the
    directory reader apply: size, nesting), and a JSON object that decodes.
    """
    problem = storable(data, max_entry_bytes)
    if problem is None:
        try:
            _object_decoder.decode(data)
        except DECODE_ERRORS as exc:
            problem = f"not a JSON object ({type(exc).__name__}: {exc})"
    return problem


class _Checker:
    """The blocking work of one fsck; each method runs in a worker thread.

    Writers may be running: every decision to remove or move something about a
    session is taken again under that session's lock stripe (all stripes for a
    shortened name whose key file is missing, since the key, and so its stripe,
    is unknown), on what is there then. A session being created or written is
    never taken for a broken one.
    """

    def __init__(
        self,
        paths: StorePaths,
        fs: FileSystem,
        *,
        repair: bool,
        lock_timeout: float,
        tmp_max_age: float,
        max_entry_bytes: int,
    ) -> None:
        self.paths = paths
        self.fs = fs
        self.repair = repair
        self.lock_timeout = lock_timeout
        self.max_entry_bytes = max_entry_bytes
        #: Tmp files and trash last changed before this (epoch seconds) are orphans.
        self.cutoff = time.time() - tmp_max_age
        self.problems: list[FsckProblem] = []
        self.sessions = 0
        self.parent = -1
        self.root = -1
        self.locks = -1
        self.quarantine = -1
        self.mode = "directory"
        #: The store's format version: 1 has no blobs (a ``$parts`` member is the entry's own).
        self.version = FORMAT_VERSION

    def add(
        self, kind: Kind, path: Path | str, detail: str, action: str = "", *, repairable: bool = True
    ) -> None:
        self.problems.append(FsckProblem(kind, str(path), detail, action, repairable))

    def close(self) -> None:
        for fd in (self.quarantine, self.locks, self.root, self.parent):
            if fd >= 0:
                try:
                    self.fs.close(fd)
                except OSError:
                    pass
        self.quarantine = self.locks = self.root = self.parent = -1

    # -- the store-level checks ------------------------------------------------------------

    def start(self) -> bool:
        """Check what lies beside the store and its marker; return whether to walk the folder."""
        fs, paths = self.fs, self.paths
        refuse_inside_store(fs, paths)
        try:
            self.parent = fs.open_dir(str(paths.file.parent))
        except FileNotFoundError:
            raise StoreFormatError(f"no session store at {paths.file}: its folder does not exist") from None
        self._check_staging()
        try:
            self.root = fs.open_dir(paths.directory.name, dir_fd=self.parent)
        except FileNotFoundError:
            if self._exists(paths.file.name):
                self.mode = "json"
                self._check_legacy()
                return False
            raise StoreFormatError(
                f"no session store at {paths.file}: neither it nor {paths.directory.name}/ exists"
            ) from None
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                raise StoreFormatError(f"{paths.directory} is not a folder: it is not a store") from None
            raise
        self._check_format()
        if self.mode == "json":
            return False
        self._check_journal()
        if self.repair:
            self.fs.ensure_dir(LOCKS, dir_fd=self.root)
        try:
            self.locks = self.fs.open_dir(LOCKS, dir_fd=self.root)
        except FileNotFoundError:
            pass  # not repairing, and nobody has ever written here
        return True

    def _exists(self, name: str) -> bool:
        return exists(self.fs, name, dir_fd=self.parent)

    def _check_journal(self) -> None:
        """Writes in the batch journal of the machine's previous start that no open replayed yet
        (``fsck --repair`` replays them before the check, as any program's open does)."""
        if self.version < 3:
            return
        found = self.fs.read_file(JOURNAL, dir_fd=self.root)
        boot, records = parse(found[0] if found is not None else b"")
        if records and boot != _journal.current_boot():
            writes = sum(len(record) for record in records)
            self.add(
                "unreplayed-journal",
                self.paths.directory / JOURNAL,
                f"{writes} write(s) of the machine's previous start, not replayed yet: until an "
                "open of the store replays them, the sessions they wrote may read as older or as "
                "corrupt (below)",
            )

    def _check_staging(self) -> None:
        name = self.paths.staging
        if not self._exists(name):
            return
        action = ""
        if self.repair:
            # The migration lock: a running migration holds it while it builds there.
            with self._store_lock():
                self.fs.remove_tree(name, dir_fd=self.parent)
            action = "removed (a re-run of migrate rebuilds it)"
        self.add(
            "stale-staging",
            self.paths.file.with_name(name),
            "the staging folder of an interrupted migration",
            action,
        )

    def _store_lock(self) -> AbstractContextManager[None]:
        """The store-wide lock (legacy writers, migration); see :meth:`_lock`."""
        return self._lock(self.paths.lock.name, self.parent, str(self.paths.lock))

    def _lock(self, name: str, dir_fd: int, what: str) -> AbstractContextManager[None]:
        """Hold a lock file's lock. A check without repair writes nothing (a read-only store
        can be checked): it takes only a lock file that exists, made by the first writer."""
        return store_lock(
            self.fs, name, dir_fd=dir_fd, timeout=self.lock_timeout, what=what, create=self.repair
        )

    def _check_legacy(self) -> None:
        """A legacy store: does it parse, would every entry migrate, are there orphaned tmp files?"""
        fs, paths = self.fs, self.paths
        # Under the store lock no legacy writer is mid-rewrite: every tmp file is an orphan.
        with self._store_lock():
            for name in old_tmp_files(fs, self.parent, match=partial(is_tmp_for, paths.file.name)):
                action = ""
                if self.repair:
                    fs.unlink(name, dir_fd=self.parent)
                    action = "removed"
                self.add("orphaned-tmp", paths.file.with_name(name), "left by a dead writer", action)
            found = fs.read_file(paths.file.name, dir_fd=self.parent)
        if found is None:
            return
        try:
            entries = decode_legacy(found[0], str(paths.file))
        except SessionStoreError as exc:
            self.add("corrupt-legacy", paths.file, f"{exc} (fsck never rewrites it)", repairable=False)
            return
        problems = _check_entries(entries)
        for key, reason in problems.items():
            self.add("invalid-entry", paths.file, f"{key!r}: {reason} (migrate refuses it)", repairable=False)
        self.sessions = len(entries) - len(problems)

    def _check_format(self) -> None:
        fs, paths = self.fs, self.paths
        where = paths.directory / FORMAT_FILE
        found = fs.read_file(FORMAT_FILE, dir_fd=self.root, max_bytes=FORMAT_MAX_BYTES)
        legacy = self._exists(paths.file.name)
        if found is None:
            if legacy:
                # A folder beside a legacy file, without marker: not (yet) a store. Leave it.
                self.add(
                    "missing-format",
                    where,
                    f"{paths.directory.name}/ has no FORMAT marker and {paths.file.name} is the "
                    "store; move the folder aside, or run migrate",
                    repairable=False,
                )
                self.mode = "json"
                self._check_legacy()
                return
            action = ""
            if self.repair:
                action = "written"
            self.add("missing-format", where, "the directory store has lost its FORMAT marker", action)
            return
        version = format_version(found[0])
        if version is not None and version > FORMAT_VERSION:
            check_format(found[0], where)  # raises: "upgrade aiosessions"
        if version is not None and version in READABLE_VERSIONS and version < FORMAT_VERSION:
            self.version = version
            self.add(
                "old-format",
                where,
                f"format version {version}: `aiosessions migrate` (or any program's open_store with "
                f"this release) moves it forward to version {FORMAT_VERSION}; its sessions were "
                "checked as they are",
                repairable=False,
            )
        if version is not None and version in READABLE_VERSIONS:
            if legacy:
                self.add(
                    "stale-legacy",
                    paths.file,
                    "left beside the complete directory store (a migration stopped before its "
                    "last step) and no longer read; run `aiosessions migrate` to move it aside",
                    repairable=False,
                )
            return
        action = ""
        if self.repair and not legacy:
            action = f"moved to {self._quarantine(FORMAT_FILE)}; a new marker written"
        detail = f"not a valid marker: {bytes(found[0][:80])!r}"
        if legacy:
            detail += f" ({paths.file.name} beside it is the store; move the folder aside, or run migrate)"
        self.add("bad-format", where, detail, action, repairable=not legacy)

    def finish(self) -> None:
        """Write a marker the checks found missing or bad (last, as at creation)."""
        if self.mode != "directory" or not self.repair:
            return
        if any(p.kind in ("missing-format", "bad-format") and p.repaired for p in self.problems):
            self.fs.write_atomic(FORMAT_FILE, encode_format(), dir_fd=self.root, durable=True)
            self.fs.fsync_dir(str(self.paths.directory.parent))

    def check_index(self) -> None:
        """The recency index against the session files (after the repairs above, which it
        notices); with ``repair`` a damaged or stale index is rebuilt (backends/_index.py)."""
        problems, rebuilt = check_index(
            self.paths.directory,
            self.fs,
            repair=self.repair,
            lock_timeout=self.lock_timeout,
            max_entry_bytes=self.max_entry_bytes,
        )
        for detail in problems:
            self.add("stale-index", self.paths.directory / INDEX_DIR, detail, "rebuilt" if rebuilt else "")

    # -- the per-name checks -----------------------------------------------------------------

    def scan(self, names: list[str]) -> None:
        for name in names:
            try:
                self._scan_one(name)
            except FileNotFoundError:
                continue  # deleted while we looked: not a problem

    def _scan_one(self, name: str) -> None:
        fs, directory = self.fs, self.paths.directory
        if name == TRASH:
            self._check_trash()
            return
        if is_tmp_name(name):
            # FORMAT and .swept are written at the top, by nobody under a lock: age tells.
            if fs.stat(name, dir_fd=self.root).st_mtime < self.cutoff:
                action = ""
                if self.repair:
                    fs.unlink(name, dir_fd=self.root)
                    action = "removed"
                self.add("orphaned-tmp", directory / name, "left by a dead writer", action)
            return
        if not is_session_name(name):
            return  # FORMAT, .locks, .migration.json ...: later versions may add dot-names
        st = fs.stat(name, dir_fd=self.root)
        if not stat_module.S_ISDIR(st.st_mode):
            kind = "a symlink" if stat_module.S_ISLNK(st.st_mode) else "a file"
            self._quarantine_problem("stray-file", name, f"{kind} where session folders live")
            return
        try:
            key = folder_key(fs, name, dir_fd=self.root)
        except ValueError as exc:
            # No writer makes such a name or key file: nothing live can be here.
            self._quarantine_problem("undecodable-name", name, str(exc))
            return
        if key is None:
            # A shortened name whose key file is missing: perhaps a session being created
            # this instant (its writer holds its stripe, which we cannot know): look again
            # holding every stripe.
            self._with_locks(range(LOCK_STRIPES), lambda: self._check_keyless(name))
            return
        if self._healthy(name, key):
            self.sessions += 1
            return
        # Something is off: look again under the key's lock, so that a writer in flight
        # is not mistaken for a dead one.
        self._with_locks([stripe_of(key)], lambda: self._check_folder(key, name))

    def _healthy(self, name: str, key: str) -> bool:
        """A complete session: a valid meta.json and nothing in flight (read without a lock)."""
        folder = self.fs.open_dir(name, dir_fd=self.root)
        try:
            inner = self.fs.listdir(folder)
        finally:
            self.fs.close(folder)
        return (
            META in inner
            and not any(is_tmp_name(n) for n in inner)
            and self._meta_problem(name) is None
            and not self._orphaned_blobs(name)
        )

    def _orphaned_blobs(self, name: str) -> list[str]:
        """The blobs of the session folder its meta.json does not name, older than the cutoff
        (younger ones may be read this instant by a reader of the meta.json before)."""
        if self.version < 2:
            return []
        folder = self.fs.open_dir(name, dir_fd=self.root)
        try:
            candidates = old_blobs(self.fs, folder, cutoff=self.cutoff)
            return (unreferenced(self.fs, folder, candidates) or []) if candidates else []
        finally:
            self.fs.close(folder)

    def _check_keyless(self, name: str) -> None:
        """A shortened folder without key file, looked at again under every stripe."""
        self.fs.stat(name, dir_fd=self.root)  # deleted before we held the stripes: nothing to do
        try:
            key = folder_key(self.fs, name, dir_fd=self.root)
        except ValueError as exc:
            self._quarantine_problem("undecodable-name", name, str(exc))
            return
        if key is not None:  # its creation finished meanwhile
            self._check_folder(key, name)
        else:
            self._quarantine_problem("undecodable-name", name, "a shortened name without its key file")

    def _meta_problem(self, name: str) -> str | None:
        """What is wrong with the session's meta.json for the reader; None if it reads back."""
        try:
            found = self.fs.read_dir_file(name, META, dir_fd=self.root, max_bytes=self.max_entry_bytes)
        except TooLargeError:
            return f"meta.json is larger than max_entry_bytes={self.max_entry_bytes}"
        except NotRegularFileError:
            return "meta.json is not a regular file"
        if found is None:
            return "meta.json is missing"
        data = found[0]
        if self.version >= 2:
            try:
                parts = references(data)
            except ValueError as exc:
                return f"meta.json: its '$parts' member does not name blobs ({exc})"
            if parts is not None:
                joined = self._joined(name, data, parts)
                if isinstance(joined, str):
                    return joined
                data = joined
        return _entry_problem(data, max_entry_bytes=self.max_entry_bytes)

    def _joined(self, name: str, meta: bytes, parts: list[tuple[str, int, str]]) -> bytes | str:
        """The whole entry of a split meta.json, or what is wrong with its blobs (each must be
        there, a regular file, and hold the bytes its name's digest says)."""
        fs = self.fs
        folder = fs.open_dir(name, dir_fd=self.root)
        try:
            blobs: dict[str, bytes] = {}
            for _, _, digest in parts:
                file = blob_name(digest)
                if blob_digest(file) != digest:
                    return f"meta.json: its '$parts' member names {digest!r}, not a SHA-256 digest"
                try:
                    found = fs.read_file(file, dir_fd=folder, max_bytes=self.max_entry_bytes)
                except TooLargeError:
                    return f"{file} is larger than max_entry_bytes={self.max_entry_bytes}"
                except NotRegularFileError:
                    return f"{file} is not a regular file"
                if found is None:
                    return f"{file} is missing (its meta.json names it)"
                if hashlib.sha256(found[0]).hexdigest() != digest:
                    return f"{file} does not hold the bytes its name says (its SHA-256 differs)"
                blobs[digest] = found[0]
        finally:
            fs.close(folder)
        try:
            return join(meta, blobs)
        except ValueError as exc:
            return f"meta.json: its '$parts' member does not name blobs ({exc})"

    def _check_folder(self, key: str, name: str) -> None:
        """Called under the key's stripe: what is wrong now is really wrong."""
        fs, directory = self.fs, self.paths.directory
        folder = fs.open_dir(name, dir_fd=self.root)
        try:
            tmp = old_tmp_files(fs, folder)  # the writers of this folder hold the stripe
            for each in tmp:
                action = ""
                if self.repair:
                    fs.unlink(each, dir_fd=folder)
                    action = "removed"
                self.add("orphaned-tmp", directory / name / each, "left by a dead writer", action)
            names = fs.listdir(folder)
            if self.version >= 2 and META not in names:
                # Blobs without a meta.json: a creation that died after writing them.
                orphans = [n for n in names if blob_digest(n) is not None]
            else:
                orphans = self._orphaned_blobs(name)
            for each in orphans:
                action = ""
                if self.repair:
                    fs.unlink(each, dir_fd=folder)
                    action = "removed"
                self.add(
                    "orphaned-blob",
                    directory / name / each,
                    "a large member its meta.json no longer names (superseded, or left by a dead writer)",
                    action,
                )
            rest = [n for n in names if n not in tmp and n not in orphans and n != KEY_FILE]
        finally:
            fs.close(folder)
        if META not in rest:
            if not rest and self.repair:
                # Nothing but (removed) tmp files and maybe a key file: a creation that died.
                fs.remove_tree(name, dir_fd=self.root)
                self.add("missing-meta", directory / name, f"session {key!r} has no meta.json", "removed")
            else:
                self._quarantine_problem("missing-meta", name, f"session {key!r} has no meta.json")
            return
        problem = self._meta_problem(name)
        if problem is None:
            self.sessions += 1
            return
        self._quarantine_problem("corrupt-entry", name, f"session {key!r}: {problem}")

    def _with_locks(self, stripes: Iterable[int], body: Callable[[], None]) -> None:
        """Run ``body`` holding the lock stripes (in ascending order: writers take one at a time)."""
        if self.locks < 0:
            body()  # no lock folder and not repairing: nobody has ever written here
            return
        with ExitStack() as held:
            for stripe in sorted(stripes):
                what = f"{self.paths.directory / LOCKS}/{stripe_name(stripe)}"
                held.enter_context(self._lock(stripe_name(stripe), self.locks, what))
            body()

    def _check_trash(self) -> None:
        fs = self.fs
        trash = fs.open_dir(TRASH, dir_fd=self.root)
        try:
            for name in old_trash(fs, trash, cutoff=self.cutoff):
                action = ""
                if self.repair:
                    fs.remove_tree(name, dir_fd=trash)
                    action = "removed"
                self.add("stale-trash", self.paths.directory / TRASH / name, "a deleted session left", action)
        finally:
            fs.close(trash)

    def _quarantine_problem(self, kind: Kind, name: str, detail: str) -> None:
        action = f"moved to {self._quarantine(name)}" if self.repair else ""
        self.add(kind, self.paths.directory / name, detail, action)

    def _quarantine(self, name: str) -> str:
        """Move ``name`` (one rename) into ``.quarantine/``; return where it went.

        :raises FileNotFoundError: ``name`` is gone (deleted meanwhile): nothing is made.
        """
        fs = self.fs
        fs.stat(name, dir_fd=self.root)  # gone since it was looked at: no .quarantine for nothing
        if self.quarantine < 0:
            fs.ensure_dir(QUARANTINE, dir_fd=self.root)
            self.quarantine = fs.open_dir(QUARANTINE, dir_fd=self.root)
        base = f"{name}.{_stamp()}"
        target, n = base, 0
        while True:
            try:
                fs.stat(target, dir_fd=self.quarantine)
            except FileNotFoundError:
                break
            n += 1
            target = f"{base}.{n}"
        fs.rename(name, target, src_dir_fd=self.root, dst_dir_fd=self.quarantine)
        fs.fsync(self.quarantine)
        fs.fsync(self.root)
        return str(self.paths.directory / QUARANTINE / target)


async def _replay_journal(paths: StorePaths, fs: FileSystem, lock_timeout: float) -> None:
    """Open and close the directory store at ``paths``, if it is one: an open replays a batch
    journal of the machine's previous start, which the check would take for corrupt sessions."""
    backend = DirectoryBackend(paths, fs, create=False, upgrade=False, lock_timeout=lock_timeout)
    try:
        await backend.open()
    except (SessionStoreError, OSError):
        return  # not a directory store, or not one this can open: the check says what it is
    await backend.aclose()


async def fsck(
    path: str | os.PathLike[str],
    *,
    repair: bool = False,
    tmp_max_age: float = DEFAULT_TMP_MAX_AGE,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
    filesystem: FileSystem | None = None,
) -> FsckReport:
    """Check every file of the store at ``path``; with ``repair``, fix what can be fixed safely.

    Repairs remove only garbage (orphaned tmp files, trash older than
    ``tmp_max_age``, a stale migration staging folder) and move everything else
    into ``<stem>.d/.quarantine/``; a missing or invalid FORMAT marker is
    rewritten only when no legacy ``sessions.json`` competes with the folder.
    A legacy store is checked too: it must parse, every entry must be
    migratable, and its orphaned tmp files are found (it is never rewritten).

    Safe beside running writers: whatever it removes or moves about a session is
    looked at again under the lock a writer of that session holds.

    :param path: the store, either kind (``X/sessions.json`` or ``X/sessions.d``).
    :param repair: fix what can be fixed safely (see above); without it nothing
        is changed.
    :param tmp_max_age: seconds after which a tmp file or a deleted session in
        ``.trash/`` is an orphan (younger ones may belong to a write in flight).
    :param lock_timeout: seconds to wait for a key's or the store's lock.
    :param max_entry_bytes: the ``max_entry_bytes`` of the stores that use it: an
        entry is valid when such a store gives it back (``storable``, and a JSON object).
    :param filesystem: the :class:`FileSystem` doing every blocking call.
    :raises StoreFormatError: there is no store at ``path``, or its marker is of
        a newer format version.
    :raises StoreIOError: the disk failed.
    """
    started = time.perf_counter()
    paths = StorePaths.of(path)
    fs = filesystem if filesystem is not None else FileSystem()
    if repair:
        await _replay_journal(paths, fs, lock_timeout)
    checker = _Checker(
        paths,
        fs,
        repair=repair,
        lock_timeout=lock_timeout,
        tmp_max_age=tmp_max_age,
        max_entry_bytes=max_entry_bytes,
    )
    try:
        try:
            if await anyio.to_thread.run_sync(checker.start):
                async with aclosing(walk(fs, checker.root, checker.scan)) as steps:
                    async for _ in steps:
                        pass
            await anyio.to_thread.run_sync(checker.finish)
            if checker.mode == "directory":
                await anyio.to_thread.run_sync(checker.check_index)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(checker.close)
    except OSError as exc:
        if isinstance(exc, SessionStoreError):
            raise
        raise io_error(exc, f"checking {paths.directory}", path=str(paths.directory)) from exc
    where = paths.file if checker.mode == "json" else paths.directory
    return FsckReport(
        path=str(where),
        mode=checker.mode,
        sessions=checker.sessions,
        problems=tuple(checker.problems),
        repair=repair,
        seconds=time.perf_counter() - started,
    )
