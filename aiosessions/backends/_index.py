"""The directory store's recency index: the newest sessions, key prefixes and a count
without reading every session (docs/design.md, "Listings", says why it is built so).

It lives in ``<stem>.d/.index/``; the session folders stay the truth and the index
is rebuilt from them whenever it cannot be trusted::

    CURRENT          {"db": "<id>.db" or null while a rebuild runs, "log": "<id>.log", "boot": ...}
    <id>.db          SQLite: one row per session (key, rank, meta.json's inode/size/mtime)
    <id>.log         records appended since the database was last brought up to date
    append.lock      flock: appenders hold it shared for one append, a log switch exclusively
    build.lock       flock: a rebuild or a compaction holds it exclusively

Writers append an intent (``b``) before changing the keys of a lock stripe and its end
(``e``, the new states) before releasing the stripe, so the log never misses a change of
a writer of this version; a reader applies the records after the database's. An intent
without its end whose stripe is free belongs to a writer that died (or failed to append):
the reader reads those sessions' files under the stripe's lock and appends a fix. The
store folder's signature before and after each change that adds or removes a session
folder is logged too, so a folder added, removed or renamed by hand (or by an older
version) is noticed by one ``stat``; so is a reboot (a log's unsynced tail may be lost).
Either makes a reader rebuild: a scan of every session, stripe by stripe under the
stripe's lock, re-reading only the files whose signature changed. When the log grows
past :data:`COMPACT_BYTES`, a writer applies it to the database and starts a new one.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import msgspec

from .._errors import LockTimeoutError, StoreIOError, io_error
from .._fs import FileSystem, Signature
from .._keys import encode_key, lock_stripe
from .._layout import LOCKS, stripe_name
from .._recency import Position, recency_of_encoded, recency_of_rank
from ._base import BatchResult, Write
from ._indexfiles import (
    APPEND_LOCK,
    BUILD_LOCK,
    CURRENT,
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_DIR,
    RANK_INDEX,
    SCHEMA,
    Current,
    IndexUnusable,
    Sessions,
    apply_states,
    boot_id,
    close_quietly,
    connect,
    create_file,
    flock,
    folder_sig,
    list_folders,
    read_current,
    read_from,
    read_meta,
    remove_orphans,
    seal,
    session_state,
    try_flock,
    write_current,
)
from ._indexlog import (
    LOG_VERSION,
    STRIPES,
    UNKNOWN,
    FolderSig,
    LogDamaged,
    State,
    Tail,
    encode_record,
    is_unknown,
    parse_records,
    wire,
)
from ._indexview import Need, View

__all__ = ["COMPACT_BYTES", "INDEX_DIR", "RecencyIndex", "check_index"]

#: A writer brings the database up to date and starts a new log past this size.
COMPACT_BYTES = 1024 * 1024

#: Keys per chunk of a listing (one query each).
CHUNK = 512

#: Store-folder signatures a database remembers as explained by logged changes.
EXPLAINED_KEPT = 64

NO_INDEX = "there is no index yet"

#: How long a listing waits for another process's rebuild before giving up.
BUILD_WAIT = 600.0


@dataclass
class Intent:
    """What :meth:`RecencyIndex.begin` hands to :meth:`RecencyIndex.end`."""

    seq: int
    before: FolderSig
    writes: Sequence[Write]
    result: BatchResult
    landed_from: int
    changed: list[str]
    changed_from: int
    failed_from: int
    #: The caller did not say which keys changed the namespace, and some may have.
    may_change: bool


class RecencyIndex:
    """The recency index of one open directory store (see the module docstring)."""

    def __init__(self, directory: Path, fs: FileSystem, *, lock_timeout: float, max_entry_bytes: int) -> None:
        self.directory = directory
        #: For messages (built once: a flock is taken on every write).
        self.append_lock_path = str(directory / INDEX_DIR / APPEND_LOCK)
        self._fs = fs
        self._lock_timeout = lock_timeout
        self._max_entry_bytes = max_entry_bytes
        self._root = -1
        self._locks_dir = -1
        self._closed = False
        #: Each thread appends through descriptors of its own (flock belongs to the open
        #: file description: threads sharing one would release each other's locks).
        self._appenders = threading.local()
        self._all_appenders: list[_Appender] = []
        self._appenders_mutex = threading.Lock()
        #: The longest log an appender of ours has seen (a writer compacts past COMPACT_BYTES).
        self._log_size = 0
        self._invalidate = False
        self._writer = secrets.randbits(62)
        self._seq = itertools.count(1)  # next() is atomic under the GIL
        #: One rebuild or compaction at a time in this process, and stripe locks of our own.
        self._build_mutex = threading.Lock()
        self._stripes_mutex = threading.Lock()
        self._build_fd = -1
        self._stripe_fds: dict[int, int] = {}
        self._view: View | None = None
        self._listing = anyio.Lock()
        self.rebuilds = 0
        self.compactions = 0

    # -- lifecycle --------------------------------------------------------------------------

    def attach(self, root: int, locks_dir: int) -> None:
        """Use the store folder's descriptors (the backend's); nothing is read yet."""
        self._root, self._locks_dir = root, locks_dir

    def close(self) -> None:
        self._closed = True
        with self._appenders_mutex:
            for appender in self._all_appenders:
                appender.close()
            self._all_appenders.clear()
        with self._build_mutex, self._stripes_mutex:
            fds = [*self._stripe_fds.values(), self._build_fd]
            self._stripe_fds.clear()
            self._build_fd = -1
            if self._view is not None:
                self._view.close()
                self._view = None
        for fd in fds:
            self._close_fd(fd)

    def _close_fd(self, fd: int) -> None:
        if fd >= 0:
            try:
                self._fs.close(fd)
            except OSError:
                pass

    def _appender(self) -> _Appender:
        """This thread's appender."""
        appender: _Appender | None = getattr(self._appenders, "appender", None)
        if appender is None:
            appender = self._appenders.appender = _Appender(self)
            with self._appenders_mutex:
                self._all_appenders.append(appender)
        return appender

    def _sessions(self) -> Sessions:
        return Sessions(self._fs, self._root, self._max_entry_bytes)

    # -- writers: intents and their ends ----------------------------------------------------

    def begin(
        self, stripe: int, writes: Sequence[Write], result: BatchResult, changed: list[str] | None
    ) -> Intent | None:
        """Log that the keys of ``writes`` (one lock stripe, whose lock the caller holds) may
        change; None if there is no index to keep. Never raises: a failure invalidates the
        index instead (every reader then rebuilds it from the sessions).

        ``changed`` is the caller's list of keys whose write added or removed a session folder
        (None: the caller does not say, so a folder missing now, or a delete, counts as a change).
        """
        try:
            if self._invalidate:
                self._make_unusable()
            if not self._appender().ready():
                return None
            before = folder_sig(self._fs.stat(".", dir_fd=self._root))
            may_change = changed is None and any(
                write.data is None or not self._folder_exists(write.key) for write in writes
            )
            seq = next(self._seq)
            if not self._append(["b", self._writer, seq, stripe, [write.key for write in writes]]):
                return None
        except (OSError, LockTimeoutError):
            self._invalidate = True
            try:
                self._make_unusable()
            except OSError:
                pass  # tried again at the next intent
            return None
        return Intent(
            seq,
            before,
            writes,
            result,
            len(result.landed),
            changed if changed is not None else [],
            len(changed) if changed is not None else 0,
            len(result.failed),
            may_change,
        )

    def end(
        self, intent: Intent | None, signatures: dict[str, Signature], result: BatchResult | None = None
    ) -> None:
        """Log the states the writes of ``intent`` left (before the stripe's lock is released).

        ``result``: where the writes' outcomes are, if not in the result given to
        :meth:`begin`. If this fails, the intent stays open in the log and readers read
        those sessions' files.
        """
        if intent is None:
            return
        try:
            landed_in = result if result is not None else intent.result
            landed = set(landed_in.landed[0 if result is not None else intent.landed_from :])
            outcomes = (intent.result, landed_in)
            states: list[list[Any]] = []
            for write in intent.writes:
                key = write.key
                if any(key in r.conflicts for r in outcomes):
                    continue  # not written: its state is what it was
                unsure = any(key in r.failed or key in r.unsynced for r in outcomes)
                if key in landed and not unsure:
                    signature = signatures.get(key)
                    if write.data is None:
                        states.append([key, None])
                    elif signature is None:
                        states.append([key, UNKNOWN])
                    else:
                        states.append([key, list(session_state(recency_of_encoded(write.data), signature))])
                elif key in landed or unsure:
                    states.append([key, UNKNOWN])  # a failure half-way: readers read the file
            folder = None
            if (
                intent.may_change
                or len(intent.changed) > intent.changed_from
                or len(intent.result.failed) > intent.failed_from
                or (result is not None and result.failed)
            ):
                after = folder_sig(self._fs.stat(".", dir_fd=self._root))
                if after != intent.before:
                    folder = [list(intent.before), list(after)]
            self._append(["e", self._writer, intent.seq, states, folder])
        except (OSError, LockTimeoutError):
            pass

    def _folder_exists(self, key: str) -> bool:
        try:
            self._fs.stat(encode_key(key), dir_fd=self._root)
        except FileNotFoundError:
            return False
        return True

    def _append(self, record: list[Any]) -> bool:
        """Append one record to the current log; False if there is no index to keep."""
        appender = self._appender()
        if not appender.hold():
            return False
        try:
            appender.write(record)
        finally:
            appender.release()
        return True

    def _make_unusable(self) -> None:
        """Remove CURRENT: every process then treats the index as missing (and rebuilds it)."""
        try:
            self._fs.unlink(f"{INDEX_DIR}/{CURRENT}", dir_fd=self._root)
        except FileNotFoundError:
            pass
        self._invalidate = False

    def append_fix(self, intents: list[tuple[int, int]], states: list[tuple[str, State]]) -> None:
        """Log what a reader found in the files (the stripe's lock held); best effort."""
        try:
            self._append(["f", [list(i) for i in intents], [[k, wire(s)] for k, s in states]])
        except (OSError, LockTimeoutError):
            pass  # our view is right; other readers verify for themselves

    @contextmanager
    def _appends_stopped(self, folder: int) -> Iterator[None]:
        """Hold the append lock exclusively: no process appends to any log meanwhile."""
        fs = self._fs
        lock = fs.open_lock_file(APPEND_LOCK, dir_fd=folder)
        try:
            flock(fs, lock, fcntl.LOCK_EX, timeout=self._lock_timeout, what=self._what(APPEND_LOCK))
            try:
                yield
            finally:
                try:
                    fs.flock(lock, fcntl.LOCK_UN)
                except OSError:
                    pass  # closing the descriptor releases it too
        finally:
            close_quietly(fs, lock)

    def _what(self, name: str) -> str:
        return str(self.directory / INDEX_DIR / name)

    def after_batch(self) -> None:
        """Bring the database up to date when the log has grown long (a writer thread, no lock held)."""
        if self._log_size < COMPACT_BYTES or self._closed:
            return
        if not self._build_mutex.acquire(blocking=False):
            return
        try:
            fd = self._build_lock_fd()
            if fd < 0 or not try_flock(self._fs, fd, fcntl.LOCK_EX):
                return
            try:
                self._compact()
            except (IndexUnusable, LogDamaged):
                self._make_unusable()  # readers will rebuild it; until then no writer keeps it
            finally:
                self._fs.flock(fd, fcntl.LOCK_UN)
        except (OSError, sqlite3.Error, LockTimeoutError):
            pass  # tried again after the next batch; a long log only costs readers time
        finally:
            self._build_mutex.release()

    def _build_lock_fd(self) -> int:
        if self._build_fd < 0:
            self._fs.ensure_dir(INDEX_DIR, dir_fd=self._root)
            self._build_fd = self._fs.open_lock_file(f"{INDEX_DIR}/{BUILD_LOCK}", dir_fd=self._root)
        return self._build_fd

    def _compact(self) -> None:
        """Apply the log to the database and switch to a new log (build lock held)."""
        fs = self._fs
        folder = fs.open_dir(INDEX_DIR, dir_fd=self._root)
        try:
            current = read_current(fs, folder)
            if current is None or current.db is None or current.boot != boot_id():
                return
            remove_orphans(fs, folder, current)
            db = connect(str(self.directory / INDEX_DIR / current.db))
            try:
                self._compact_into(db, folder, current)
            finally:
                db.close()
        finally:
            close_quietly(fs, folder)

    def _compact_into(self, db: sqlite3.Connection, folder: int, current: Current) -> None:
        fs = self._fs
        meta = read_meta(db)
        if meta.get("log") != current.log:
            raise IndexUnusable("the database does not match CURRENT")
        new_log = f"{secrets.token_hex(8)}.log"
        with self._appends_stopped(folder):
            old = fs.open(current.log, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
            try:
                data = read_from(fs, old)
                records, end = parse_records(data)
                if end != len(data):
                    raise LogDamaged("a torn record at the end of the log")
                tail = Tail()
                for record in records:
                    tail.apply(record)
                # What the database cannot hold yet goes on in the new log: intents in
                # flight (or of a dead writer) and unknown states, for readers to resolve.
                carried = [encode_record(["h", LOG_VERSION, new_log])]
                carried += [encode_record(record) for _, _, record in tail.intents.values()]
                unknown = [[key, UNKNOWN] for key, state in tail.states.items() if is_unknown(state)]
                if unknown:
                    carried.append(encode_record(["f", [], unknown]))
                create_file(fs, folder, new_log, b"".join(carried))
                explained = [tuple(sig) for sig in msgspec.json.decode(meta["explained"])]
                explained += [sig for sig in tail.afters if sig not in explained]  # in log order
                known = set(explained)
                suspect = meta.get("suspect") or (
                    "the store folder changed outside aiosessions"
                    if not tail.intents and any(sig not in known for sig in tail.befores)
                    else None
                )
                db.execute("BEGIN IMMEDIATE")
                try:
                    apply_states(db, ((k, s) for k, s in tail.states.items() if not is_unknown(s)))
                    count = db.execute("SELECT count(*) FROM sessions").fetchone()[0]
                    db.executemany(
                        "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                        [
                            ("log", new_log),
                            ("applied", 0),
                            ("count", count),
                            ("explained", msgspec.json.encode(explained[-EXPLAINED_KEPT:]).decode()),
                            ("suspect", suspect),
                        ],
                    )
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                # Sealed first: an appender that still finds the old log must not write to it.
                seal(fs, folder, current.log)
                write_current(fs, folder, Current(current.db, new_log, current.boot))
            finally:
                close_quietly(fs, old)
        try:
            fs.unlink(current.log, dir_fd=folder)
        except OSError:
            pass
        self._log_size = 0
        self.compactions += 1

    # -- readers ------------------------------------------------------------------------------

    async def newest(self, limit: int, start: Position) -> list[tuple[str, int | None]]:
        result: list[tuple[str, int | None]] = await self._query(lambda view: view.newest(limit, start))
        return result

    async def count(self) -> int:
        result: int = await self._query(lambda view: view.count())
        return result

    async def key_chunks(self, prefix: str = "") -> AsyncIterator[list[str]]:
        last: str | None = None
        while True:
            after = last
            chunk: list[str] = await self._query(
                lambda view: view.keys_after(prefix, after, CHUNK),  # noqa: B023 (called at once)
                first=after is None,
            )
            if chunk:
                yield chunk
                last = chunk[-1]
            if len(chunk) < CHUNK:
                return

    async def _query(self, ask: Callable[[View], Any], *, first: bool = True) -> Any:
        """``ask`` a view that answers for the store as it is now; ``first``: the first question
        of a listing (a private view is scanned again for each listing, not for each chunk)."""
        async with self._listing:
            if first and self._view is not None:
                self._view.checked = False
            for _ in range(8):
                view = await self._ready()
                try:
                    return ask(view)
                except IndexUnusable:
                    view.moved_on = True  # a compaction committed between the check and the query
                except sqlite3.Error:
                    view.moved_on = True
        raise StoreIOError(None, "the index keeps changing under this listing; try again", self._what(""))

    async def _ready(self) -> View:
        """A view that answers for the store as it is now (``_listing`` held)."""
        for _ in range(8):
            if self._closed:
                raise StoreIOError(None, "the store is closed", str(self.directory))
            view = self._view
            if view is None:
                need: Need = Need("load")
            else:
                need = view.check()
            if need.what == "ok":
                assert view is not None
                return view
            try:
                await anyio.to_thread.run_sync(self._resolve, need)
            except OSError as exc:
                raise io_error(exc, "listing", path=str(self.directory)) from exc
        raise StoreIOError(
            None, "the index keeps changing under this listing; try again", str(self.directory)
        )

    def _resolve(self, need: Need) -> None:
        """Do in a worker thread what :meth:`View.check` said the view needs."""
        if need.what == "catch-up" and self._view is not None:
            try:
                self._view.catch_up()
                return
            except (IndexUnusable, LogDamaged, sqlite3.Error):
                need = Need("load")
        if need.what == "verify" and self._view is not None:
            self._verify(need.stripes)
            return
        if need.what != "rebuild":
            try:
                self._load()
                return
            except (IndexUnusable, LogDamaged, sqlite3.Error) as exc:
                need = Need("rebuild", reason=str(exc))
        self._rebuild(need.reason)

    def _load(self, *, wait: bool = True) -> None:
        """Open the index as CURRENT names it (waiting for another process's rebuild in flight).

        :raises IndexUnusable: there is none, or it cannot be trusted.
        """
        fs = self._fs
        if self._view is not None:
            self._view.close()
            self._view = None
        try:
            folder = fs.open_dir(INDEX_DIR, dir_fd=self._root)
        except FileNotFoundError:
            raise IndexUnusable(NO_INDEX) from None
        try:
            current = read_current(fs, folder)
            if current is not None and current.db is None and wait:
                self._wait_for_build()
                current = read_current(fs, folder)
            if current is None or current.db is None:
                raise IndexUnusable(NO_INDEX)
            if current.boot != boot_id():
                raise IndexUnusable("the machine rebooted since the index was written")
            view = View(self, folder, current)
            folder = -1  # the view owns it now
        finally:
            if folder >= 0:
                close_quietly(fs, folder)
        try:
            view.load()
        except BaseException:
            view.close()
            raise
        self._view = view

    def _wait_for_build(self) -> None:
        """Wait (shared) until another process's rebuild is over."""
        with self._build_mutex:
            fd = self._build_lock_fd()
            flock(self._fs, fd, fcntl.LOCK_SH, timeout=BUILD_WAIT, what=self._what(BUILD_LOCK))
            self._fs.flock(fd, fcntl.LOCK_UN)

    def _stripe_fd(self, stripe: int) -> int:
        fd = self._stripe_fds.get(stripe)
        if fd is None:
            fd = self._stripe_fds[stripe] = self._fs.open_lock_file(
                stripe_name(stripe), dir_fd=self._locks_dir
            )
        return fd

    def _verify(self, stripes: Iterable[int]) -> None:
        """Read the sessions of dead intents and unknown states, stripe by stripe, under the lock."""
        view = self._view
        assert view is not None
        sessions = self._sessions()
        with self._stripes_mutex:
            for stripe in sorted(stripes):
                fd = self._stripe_fd(stripe)
                flock(
                    self._fs, fd, fcntl.LOCK_EX, timeout=self._lock_timeout, what=f"lock stripe {stripe:02x}"
                )
                try:
                    view.catch_up()  # the records appended until now, ends included
                    intents, keys = view.unresolved(stripe)
                    if not intents and not keys:
                        continue
                    states = [(key, sessions.state(key, view.base(key))) for key in sorted(keys)]
                    view.fix(intents, states)
                    if view.shared:
                        self.append_fix(intents, states)
                finally:
                    self._fs.flock(fd, fcntl.LOCK_UN)

    def _rebuild(self, reason: str | None) -> None:
        """Scan every session and write a new index (or keep one in memory if we cannot write)."""
        sessions = self._sessions()
        fs = self._fs
        with self._build_mutex:
            try:
                fd = self._build_lock_fd()
            except OSError:
                fd = -1
            if fd >= 0:
                flock(fs, fd, fcntl.LOCK_EX, timeout=BUILD_WAIT, what=self._what(BUILD_LOCK))
            try:
                # What the old index said: a file whose signature did not change is not read again.
                base = self._view.all_states() if self._view is not None else self._old_states()
                if fd >= 0 and reason != "repair":
                    # Another process may have rebuilt it while we waited.
                    try:
                        self._load(wait=False)
                        if self._view is not None and self._view.check().what == "ok":
                            return
                    except (IndexUnusable, LogDamaged, sqlite3.Error, OSError):
                        pass
                if self._view is not None:
                    self._view.close()
                    self._view = None
                if fd >= 0:
                    try:
                        self._rebuild_shared(sessions, base)
                        return
                    except (OSError, sqlite3.Error):
                        pass  # say, a full disk: this process keeps an index of its own
                self._view = View.private(self, _scan(self, sessions, base, locked=fd >= 0))
            finally:
                if fd >= 0:
                    fs.flock(fd, fcntl.LOCK_UN)
        self.rebuilds += 1

    def _old_states(self) -> dict[str, State]:
        """The rows of the database CURRENT names, however stale (empty if it cannot be read)."""
        fs = self._fs
        try:
            folder = fs.open_dir(INDEX_DIR, dir_fd=self._root)
        except OSError:
            return {}
        try:
            current = read_current(fs, folder)
            if current is None or current.db is None:
                return {}
            db = connect(str(self.directory / INDEX_DIR / current.db), readonly=True)
            try:
                rows = db.execute("SELECT key, rank, ino, size, mtime FROM sessions").fetchall()
            finally:
                db.close()
            return {key: (r, ino, size, mtime) for key, r, ino, size, mtime in rows}
        except (OSError, IndexUnusable, sqlite3.Error):
            return {}
        finally:
            close_quietly(fs, folder)

    def _rebuild_shared(self, sessions: Sessions, base: dict[str, State]) -> None:
        fs = self._fs
        folder = fs.open_dir(INDEX_DIR, dir_fd=self._root)
        try:
            remove_orphans(fs, folder, None)
            token = secrets.token_hex(8)
            db_name, log_name = f"{token}.db", f"{token}.log"
            create_file(fs, folder, log_name, encode_record(["h", LOG_VERSION, log_name]))
            with self._appends_stopped(folder):
                # From here on writers log into the new log: every older one is sealed first.
                for name in fs.listdir(folder):
                    if name.endswith(".log") and name != log_name:
                        seal(fs, folder, name)
                write_current(fs, folder, Current(None, log_name, boot_id()))
            baseline = folder_sig(fs.stat(".", dir_fd=self._root))
            states = _scan(self, sessions, base, locked=True)
            path = str(self.directory / INDEX_DIR / db_name)
            create_file(fs, folder, db_name, b"")
            db = connect(path)
            try:
                db.executescript(SCHEMA.replace(RANK_INDEX, ""))  # (executescript commits first)
                db.execute("BEGIN")
                rows = sorted((key, *state) for key, state in states.items() if isinstance(state, tuple))
                db.executemany(
                    "INSERT INTO sessions (key, rank, ino, size, mtime) VALUES (?, ?, ?, ?, ?)", rows
                )
                db.execute(RANK_INDEX)  # built once, after the rows: faster than row by row
                db.executemany(
                    "INSERT INTO meta (name, value) VALUES (?, ?)",
                    [
                        ("format", FORMAT_NAME),
                        ("version", FORMAT_VERSION),
                        ("log", log_name),
                        ("count", sum(1 for s in states.values() if isinstance(s, tuple))),
                        ("explained", msgspec.json.encode([baseline]).decode()),
                        ("suspect", None),
                        ("built", int(time.time() * 1000)),
                    ],
                )
                db.execute("COMMIT")
            finally:
                db.close()
            current = Current(db_name, log_name, boot_id())
            with self._appends_stopped(folder):
                write_current(fs, folder, current)
            remove_orphans(fs, folder, current)
        finally:
            close_quietly(fs, folder)
        self._load(wait=False)

    # -- fsck -------------------------------------------------------------------------------------

    def check_sync(self) -> list[str]:
        """What is wrong with the index, compared with the session files (a worker thread).

        Each stripe is compared under its lock, after reading the log up to then, so writers
        may run meanwhile. Nothing is written (:meth:`rebuild_sync` repairs).
        """
        try:
            self._load()
        except (IndexUnusable, LogDamaged, sqlite3.Error) as exc:
            if isinstance(exc, IndexUnusable) and str(exc) == NO_INDEX:
                return []  # built by the first listing; nothing to check
            if isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc):
                return []  # a store we may only read: listings keep an index in memory
            return [f"the index cannot be used ({exc})"]
        view = self._view
        assert view is not None
        need = view.check()
        if need.what in ("rebuild", "load"):
            return [f"the index is stale ({need.reason or 'it changed while checked'})"]
        sessions = self._sessions()
        keys: dict[int, set[str]] = {}
        for key in view.all_states():
            keys.setdefault(lock_stripe(key, STRIPES), set()).add(key)
        for name in list_folders(self._fs, self._root):
            found = sessions.key_of(name)
            if found is not None:
                keys.setdefault(lock_stripe(found, STRIPES), set()).add(found)
        problems: list[str] = []
        with self._stripes_mutex:
            for stripe in sorted(keys):
                fd = self._stripe_fd(stripe)
                flock(
                    self._fs, fd, fcntl.LOCK_EX, timeout=self._lock_timeout, what=f"lock stripe {stripe:02x}"
                )
                try:
                    view.catch_up()
                    for key in sorted(keys[stripe] | view.tail_keys(stripe)):
                        mine, truth = view.base(key), sessions.state(key)
                        if is_unknown(mine) or _same(mine, truth):
                            continue
                        problems.append(
                            f"the index says {key!r} is {_describe(mine)}, its files say {_describe(truth)}"
                        )
                finally:
                    self._fs.flock(fd, fcntl.LOCK_UN)
        return problems

    def rebuild_sync(self) -> None:
        """Rebuild the index from the sessions (``fsck --repair``; a worker thread)."""
        self._rebuild("repair")


def _same(mine: State, truth: State) -> bool:
    if mine is None or truth is None:
        return mine is truth
    return isinstance(mine, tuple) and isinstance(truth, tuple) and mine[0] == truth[0]


def _describe(state: State) -> str:
    if state is None:
        return "absent"
    if isinstance(state, tuple):
        return f"updated at {recency_of_rank(state[0])}"
    return "unknown"


def _scan(
    index: RecencyIndex, sessions: Sessions, base: dict[str, State], *, locked: bool
) -> dict[str, State]:
    """Every session's state, stripe by stripe under the stripe's lock when ``locked`` (a file is
    read only when its signature differs from ``base``)."""
    fs = sessions.fs
    by_stripe: dict[int, list[tuple[str, str]]] = {}
    for name in list_folders(fs, sessions.root):
        key = sessions.key_of(name)
        if key is not None:
            by_stripe.setdefault(lock_stripe(key, STRIPES), []).append((key, name))
    states: dict[str, State] = {}
    with index._stripes_mutex:
        for stripe in sorted(by_stripe):
            fd = -1
            if locked:
                try:
                    fd = index._stripe_fd(stripe)
                except OSError:
                    fd = -1  # a read-only store: nobody writes it
                if fd >= 0:
                    flock(
                        fs, fd, fcntl.LOCK_EX, timeout=index._lock_timeout, what=f"lock stripe {stripe:02x}"
                    )
            try:
                for key, name in by_stripe[stripe]:
                    state = sessions.state(key, base.get(key), listed=name)
                    if state is not None:
                        states[key] = state
            finally:
                if fd >= 0:
                    fs.flock(fd, fcntl.LOCK_UN)
    return states


class _Appender:
    """One thread's descriptors for appending to the log CURRENT names."""

    def __init__(self, index: RecencyIndex) -> None:
        self.index = index
        self.folder = -1  # .index
        self.lock = -1  # append.lock
        self.log = -1
        self.held = False
        #: CURRENT as seen when there was no index to keep (inode, mtime), to notice a new one.
        self.no_index_since: tuple[int, int] | None = None

    def close(self) -> None:
        fs = self.index._fs
        for fd in (self.log, self.lock, self.folder):
            close_quietly(fs, fd)
        self.log = self.lock = self.folder = -1
        self.held = False

    def ready(self) -> bool:
        """Whether there is an index to keep (its log open)."""
        return self.log >= 0 or self._open_log()

    def hold(self) -> bool:
        """Hold the append lock shared with the current log open; False: no index to keep."""
        fs, index = self.index._fs, self.index
        for _ in range(5):
            if self.log < 0 and not self._open_log():
                return False
            flock(fs, self.lock, fcntl.LOCK_SH, timeout=index._lock_timeout, what=index.append_lock_path)
            st = fs.fstat(self.log)
            if st.st_nlink > 0 and st.st_mode & 0o200:
                self.held = True
                index._log_size = max(index._log_size, st.st_size)
                return True
            # Sealed by a switch to a new log, or removed: follow CURRENT.
            fs.flock(self.lock, fcntl.LOCK_UN)
            log, self.log = self.log, -1
            close_quietly(fs, log)
        raise OSError(errno.EAGAIN, "the index log keeps being switched", index._what(CURRENT))

    def write(self, record: list[Any]) -> None:
        data = encode_record(record)
        self.index._fs.write_all(self.log, data)
        self.index._log_size += len(data)

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                self.index._fs.flock(self.lock, fcntl.LOCK_UN)
            except OSError:
                self.close()  # closing the descriptor releases the lock

    def _open_log(self) -> bool:
        """Open the log CURRENT names; False if there is no index to keep."""
        fs, index = self.index._fs, self.index
        if self.no_index_since is not None:
            try:
                found = fs.stat(f"{INDEX_DIR}/{CURRENT}", dir_fd=index._root)
            except FileNotFoundError:
                return False
            if (found.st_ino, found.st_mtime_ns) == self.no_index_since:
                return False
        for _ in range(5):
            if self.folder < 0:
                try:
                    self.folder = fs.open_dir(INDEX_DIR, dir_fd=index._root)
                except FileNotFoundError:
                    self.no_index_since = (0, 0)
                    return False
            st: os.stat_result | None
            try:
                current = read_current(fs, self.folder)
                st = fs.stat(CURRENT, dir_fd=self.folder) if current is not None else None
            except (IndexUnusable, FileNotFoundError):
                current = st = None
            if current is None or st is None or current.boot != boot_id():
                # No index, or one of an earlier boot that readers will rebuild: nothing to keep
                # (a rebuild scans each stripe under its lock, so no change of ours is missed).
                self.close()
                self.no_index_since = (st.st_ino, st.st_mtime_ns) if st is not None else (0, 0)
                return False
            self.no_index_since = None
            if self.lock < 0:
                self.lock = fs.open_lock_file(APPEND_LOCK, dir_fd=self.folder)
            try:
                self.log = fs.open(
                    current.log, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.folder
                )
            except FileNotFoundError:
                continue  # switched (and removed) since we read CURRENT: read it again
            return True
        raise FileNotFoundError(errno.ENOENT, "CURRENT names a log that is not there", index._what(CURRENT))


def check_index(
    directory: Path, fs: FileSystem, *, repair: bool, lock_timeout: float, max_entry_bytes: int
) -> tuple[list[str], bool]:
    """``fsck``'s check of a directory store's recency index (blocking: a worker thread).

    Returns what is wrong with it (compared with the session files, stripe by stripe under
    each stripe's lock) and whether it was rebuilt: with ``repair``, a damaged or stale
    index is rebuilt. Without ``repair`` nothing is written. A store without an index has
    nothing to check (its first listing builds one).
    """
    root = fs.open_dir(str(directory))
    locks = -1
    index = RecencyIndex(directory, fs, lock_timeout=lock_timeout, max_entry_bytes=max_entry_bytes)
    try:
        try:
            locks = fs.open_dir(LOCKS, dir_fd=root)
        except FileNotFoundError:
            return [], False  # nobody ever wrote here
        index.attach(root, locks)
        problems = index.check_sync()
        if problems and repair:
            index.rebuild_sync()
            return problems, True
        return problems, False
    finally:
        index.close()
        close_quietly(fs, locks)
        close_quietly(fs, root)
