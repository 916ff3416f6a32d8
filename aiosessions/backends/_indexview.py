"""One process's view of the recency index: the database plus the log records after it.

:meth:`View.check` runs on the event loop at the start of every listing: a few system
calls tell whether the view still answers for the store (and read a small log growth
inline); anything more is done in a worker thread by the index (``_index.py``).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from .._keys import lock_stripe
from .._recency import Position, prefix_end, recency_of_rank
from ._indexfiles import (
    APPEND_LOCK,
    CURRENT,
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_DIR,
    SCHEMA,
    Current,
    IndexUnusable,
    apply_states,
    close_quietly,
    connect,
    folder_sig,
    read_meta,
    try_flock,
)
from ._indexlog import STRIPES, FolderSig, LogDamaged, State, Tail, parse_records

if TYPE_CHECKING:
    from ._index import RecencyIndex

__all__ = ["Need", "View"]

#: Log growth read on the event loop; more is read in a worker thread.
INLINE_CATCH_UP = 16 * 1024


@dataclass
class Need:
    what: str  # "ok", "catch-up", "verify", "load", "rebuild"
    reason: str | None = None
    stripes: set[int] = field(default_factory=set)


class View:
    """This process's picture of the index: the database plus the records after it."""

    def __init__(self, index: RecencyIndex, folder: int, current: Current | None) -> None:
        self.index = index
        self.fs = index._fs
        self.folder = folder
        self.current = current
        self.shared = current is not None
        self.current_sig: tuple[int, int, int] | None = None
        self.db: sqlite3.Connection | None = None
        self.log = -1
        self.log_pos = 0
        self.buffer = b""
        self.tail = Tail()
        #: Present keys of the tail, as (rank, key) and by key, both sorted.
        self.ranked: list[tuple[int, str]] = []
        self.names: list[str] = []
        self._ranked_of: dict[str, int] = {}
        self.in_db: dict[str, bool] = {}
        self.db_count = 0
        self.explained: set[FolderSig] = set()
        self.suspect: str | None = None
        #: The database changed since this view was loaded: load it again.
        self.moved_on = False
        #: A private view was scanned for the listing in progress (see :meth:`private`).
        self.checked = False

    @classmethod
    def private(cls, index: RecencyIndex, states: dict[str, State]) -> View:
        """A view of our own, in memory, for a store we cannot write an index into.

        Nothing tells it of other processes' changes: it is built again (a scan that
        re-reads only the files whose signature changed) at the start of every listing.
        """
        view = cls(index, -1, None)
        db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        db.executescript(SCHEMA)
        db.execute("BEGIN")
        apply_states(db, states.items())
        db.execute("COMMIT")
        view.db = db
        view.db_count = len(states)
        view.explained = {folder_sig(index._fs.stat(".", dir_fd=index._root))}
        view.checked = True
        return view

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
        for fd in (self.log, self.folder):
            close_quietly(self.fs, fd)
        self.log = self.folder = -1

    # -- loading and catching up ------------------------------------------------------------

    def load(self) -> None:
        fs, current = self.fs, self.current
        assert current is not None and current.db is not None
        st = fs.stat(CURRENT, dir_fd=self.folder)
        self.current_sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        try:
            fd = fs.open(current.db, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.folder)
            close_quietly(fs, fd)
        except FileNotFoundError:
            raise IndexUnusable(f"{current.db} is missing") from None
        self.db = connect(str(self.index.directory / INDEX_DIR / current.db), readonly=True)
        meta = read_meta(self.db)
        if meta.get("format") != FORMAT_NAME or meta.get("version") != FORMAT_VERSION:
            raise IndexUnusable(f"{current.db} is not an index of this version")
        if meta.get("log") != current.log:
            raise IndexUnusable("the database and CURRENT disagree")
        self.db_count = int(meta["count"])
        self.explained = {tuple(sig) for sig in msgspec.json.decode(meta["explained"])}
        self.suspect = meta.get("suspect")
        try:
            self.log = fs.open(current.log, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.folder)
        except FileNotFoundError:
            raise IndexUnusable(f"{current.log} is missing") from None
        self.log_pos = 0
        self.catch_up()

    def catch_up(self) -> None:
        """Read and apply what was appended to the log since we last looked.

        :raises LogDamaged: a record that is not what was appended.
        """
        self._read_more()
        if self.buffer and not self._append_in_flight():
            raise LogDamaged("a torn record at the end of the log")

    def _read_more(self) -> None:
        chunks = [self.buffer]
        while True:
            chunk = self.fs.read(self.log, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            self.log_pos += len(chunk)
        data = b"".join(chunks)
        records, used = parse_records(data)
        self.buffer = data[used:]
        for record in records:
            for key in self.tail.apply(record):
                self._track(key)

    def _append_in_flight(self) -> bool:
        """Whether a process is appending right now (else an incomplete record is torn)."""
        fs = self.fs
        try:
            fd = fs.open_lock_file(APPEND_LOCK, dir_fd=self.folder)
        except OSError:
            return True
        try:
            if try_flock(fs, fd, fcntl.LOCK_EX):
                # Nobody appends: read once more (an append may have ended just before).
                self._read_more()
                return not self.buffer
            return True
        finally:
            close_quietly(fs, fd)

    def _track(self, key: str) -> None:
        """Keep the sorted lists and the count in step with ``key``'s new tail state."""
        state = self.tail.states[key]
        old_rank = self._ranked_of.get(key)
        if old_rank is not None:
            at = bisect_left(self.ranked, (old_rank, key))
            del self.ranked[at]
            at = bisect_left(self.names, key)
            del self.names[at]
            del self._ranked_of[key]
        if key not in self.in_db:
            self.in_db[key] = self._in_db(key)
        if isinstance(state, tuple):
            insort(self.ranked, (state[0], key))
            insort(self.names, key)
            self._ranked_of[key] = state[0]

    def _in_db(self, key: str) -> bool:
        assert self.db is not None
        return self.db.execute("SELECT 1 FROM sessions WHERE key = ?", (key,)).fetchone() is not None

    def base(self, key: str) -> State:
        """What the index says of ``key`` (for re-reading a file only when it changed)."""
        if key in self.tail.states:
            return self.tail.states[key]
        assert self.db is not None
        row = self.db.execute("SELECT rank, ino, size, mtime FROM sessions WHERE key = ?", (key,)).fetchone()
        return None if row is None else (row[0], row[1], row[2], row[3])

    def tail_keys(self, stripe: int) -> set[str]:
        """The keys of ``stripe`` the log past the database touched."""
        return {key for key in self.tail.states if lock_stripe(key, STRIPES) == stripe}

    def all_states(self) -> dict[str, State]:
        if self.db is None:
            return {}
        out: dict[str, State] = {
            key: (r, ino, size, mtime)
            for key, r, ino, size, mtime in self.db.execute(
                "SELECT key, rank, ino, size, mtime FROM sessions"
            )
        }
        for key, state in self.tail.states.items():
            if state is None:
                out.pop(key, None)
            else:
                out[key] = state
        return out

    def unresolved(self, stripe: int) -> tuple[list[tuple[int, int]], set[str]]:
        """The intents of ``stripe`` still open and the keys to read for it (stripe lock held)."""
        intents = [i for i, (s, _, _) in self.tail.intents.items() if s == stripe]
        keys = {key for i in intents for key in self.tail.intents[i][1]}
        keys |= self.tail.unknown_by_stripe().get(stripe, set())
        return intents, keys

    def fix(self, intents: list[tuple[int, int]], states: list[tuple[str, State]]) -> None:
        for intent in intents:
            self.tail.intents.pop(intent, None)
        for key, state in states:
            self.tail.states[key] = state
            self._track(key)

    # -- checks (on the event loop: a few system calls) -------------------------------------

    def check(self) -> Need:
        fs, index = self.fs, self.index
        try:
            folder = folder_sig(fs.stat(".", dir_fd=index._root))
            if self.moved_on:
                return Need("load")
            if not self.shared:
                if self.checked and folder in self.explained:
                    return Need("ok")
                return Need("rebuild", reason="a view of our own is scanned again for each listing")
            try:
                st = fs.stat(CURRENT, dir_fd=self.folder)
            except FileNotFoundError:
                return Need("rebuild", reason="the index was removed")
            if (st.st_ino, st.st_mtime_ns, st.st_size) != self.current_sig:
                return Need("load")
            log = fs.fstat(self.log)
            if log.st_nlink == 0:
                return Need("load")
            pending = log.st_size - self.log_pos
            if pending > INLINE_CATCH_UP:
                return Need("catch-up")
            if pending > 0 or self.buffer:
                self.catch_up()
        except (LogDamaged, IndexUnusable) as exc:
            return Need("rebuild", reason=str(exc))
        except sqlite3.Error as exc:
            return Need("rebuild", reason=f"the index database failed: {exc}")
        except OSError as exc:
            return Need("rebuild", reason=f"reading the index failed: {exc}")
        if self.suspect:
            return Need("rebuild", reason=self.suspect)
        tail = self.tail
        in_flight = bool(tail.intents)
        explained = self.explained | tail.afters.keys()
        if not in_flight and (folder not in explained or any(sig not in explained for sig in tail.befores)):
            return Need("rebuild", reason="the store folder changed outside aiosessions")
        stripes = set(tail.unknown_by_stripe())
        if tail.intents and index._stripes_mutex.acquire(blocking=False):
            try:
                for stripe, _, _ in tail.intents.values():
                    if stripe in stripes:
                        continue
                    try:
                        fd = index._stripe_fd(stripe)
                        if try_flock(fs, fd, fcntl.LOCK_EX):
                            fs.flock(fd, fcntl.LOCK_UN)
                            stripes.add(stripe)  # free, yet the intent is open: its writer died
                    except OSError:
                        stripes.add(stripe)
            finally:
                index._stripes_mutex.release()
        if stripes:
            return Need("verify", stripes=stripes)
        return Need("ok")

    # -- queries -----------------------------------------------------------------------------------

    def _in_db_txn(self, body: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``body`` in one read transaction whose database is the one the tail follows."""
        db = self.db
        assert db is not None
        if not self.shared:
            return body(db)
        db.execute("BEGIN")
        try:
            row = db.execute("SELECT value FROM meta WHERE name = 'log'").fetchone()
            assert self.current is not None
            if row is None or row[0] != self.current.log:
                raise IndexUnusable("the database moved on")
            return body(db)
        finally:
            db.execute("COMMIT")

    def newest(self, limit: int, start: Position) -> list[tuple[str, int | None]]:
        if limit <= 0:
            return []
        tail = self.tail.states

        def stored(db: sqlite3.Connection) -> list[tuple[int, str]]:
            rows: list[tuple[int, str]] = []
            cursor = db.execute(
                "SELECT rank, key FROM sessions WHERE (rank, key) > (?, ?) ORDER BY rank, key LIMIT ?",
                (start[0], start[1], limit + len(tail)),
            )
            for r, key in cursor:
                if key not in tail:
                    rows.append((r, key))
                    if len(rows) >= limit:
                        break
            cursor.close()
            return rows

        rows = self._in_db_txn(stored)
        at = bisect_right(self.ranked, start)
        rows += self.ranked[at : at + limit]
        rows.sort()
        return [(key, recency_of_rank(r)) for r, key in rows[:limit]]

    def count(self) -> int:
        def counted(db: sqlite3.Connection) -> int:
            total = self.db_count
            for key, state in self.tail.states.items():
                total += isinstance(state, tuple) - self.in_db.get(key, False)
            return total

        result: int = self._in_db_txn(counted)
        return result

    def keys_after(self, prefix: str, last: str | None, limit: int) -> list[str]:
        """Up to ``limit`` keys starting with ``prefix``, in key order, after ``last``."""
        high = prefix_end(prefix)
        tail = self.tail.states
        if last is None:
            condition, low, at = "key >= ?", prefix, bisect_left(self.names, prefix)
        else:
            condition, low, at = "key > ?", last, bisect_right(self.names, last)

        def stored(db: sqlite3.Connection) -> list[str]:
            sql = f"SELECT key FROM sessions WHERE {condition}"
            args: list[Any] = [low]
            if high is not None:
                sql += " AND key < ?"
                args.append(high)
            args.append(limit + len(tail))
            keys = []
            cursor = db.execute(sql + " ORDER BY key LIMIT ?", args)
            for (key,) in cursor:
                if key not in tail:
                    keys.append(key)
                    if len(keys) >= limit:
                        break
            cursor.close()
            return keys

        keys: list[str] = self._in_db_txn(stored)
        for key in self.names[at : at + limit]:
            if high is not None and key >= high:
                break
            keys.append(key)
        keys.sort()
        return keys[:limit]
