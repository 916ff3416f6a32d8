"""The stores under test besides legacy JSON and aiosessions (those live in aiosessions/_bench.py).

Each is driven through the same small async interface (:class:`aiosessions._bench.Contender`)
and holds the same entries: JSON objects, encoded and decoded with msgspec.
Each gets its documented best settings; none is tuned down.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import msgspec

from aiosessions._bench import UpdateFn, _recency
from aiosessions._keys import encode_key

__all__ = ["AiofilesContender", "DiskcacheContender", "PhysicalLimit", "SqliteContender"]

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode

META = "meta.json"


class SqliteContender:
    """SQLite through aiosqlite: one row per session, as OpenClaw finally stored them.

    ``sessions(key TEXT PRIMARY KEY, updated_at INTEGER, json TEXT)`` with an
    index on ``updated_at``; WAL; ``synchronous=NORMAL`` without fsync (the
    setting SQLite documents for WAL) and ``FULL`` with it; a 64 MiB page cache,
    memory-mapped reads and a busy timeout. One connection (aiosqlite runs it in
    its own thread); an update is a ``BEGIN IMMEDIATE`` transaction (atomic
    across processes), serialised in this process by a lock because one
    connection cannot nest transactions.
    """

    whole_file = False

    def __init__(self, path: Path, *, fsync: bool, name: str | None = None) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.name = name or f"SQLite (aiosqlite, {'FULL' if fsync else 'NORMAL'})"
        self._db: Any = None
        self._write_lock = anyio.Lock()

    @staticmethod
    def build(path: Path, sessions: Mapping[str, dict[str, Any]]) -> None:
        """Create the database holding ``sessions`` (synchronously, before the runs)."""
        import sqlite3

        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS sessions "
                "(key TEXT PRIMARY KEY, updated_at INTEGER NOT NULL, json TEXT NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS sessions_updated_at ON sessions (updated_at)")
            db.executemany(
                "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?)",
                ((k, int(v.get("updatedAt") or 0), _encode(v).decode()) for k, v in sessions.items()),
            )
        db.close()

    async def open(self) -> None:
        import aiosqlite

        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        for pragma in (
            "PRAGMA journal_mode=WAL",
            f"PRAGMA synchronous={'FULL' if self.fsync else 'NORMAL'}",
            "PRAGMA cache_size=-65536",
            "PRAGMA mmap_size=268435456",
            "PRAGMA temp_store=MEMORY",
            "PRAGMA busy_timeout=5000",
        ):
            await self._db.execute(pragma)

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    async def get(self, key: str) -> Any:
        async with self._db.execute("SELECT json FROM sessions WHERE key = ?", (key,)) as cursor:
            row = await cursor.fetchone()
        return None if row is None else _decode(row[0])

    async def set(self, key: str, value: dict[str, Any]) -> None:
        await self._db.execute(
            "INSERT INTO sessions VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE "
            "SET updated_at = excluded.updated_at, json = excluded.json",
            (key, int(value.get("updatedAt") or 0), _encode(value).decode()),
        )

    async def update(self, key: str, fn: UpdateFn) -> Any:
        async with self._write_lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                async with self._db.execute("SELECT json FROM sessions WHERE key = ?", (key,)) as cursor:
                    row = await cursor.fetchone()
                result = fn(None if row is None else _decode(row[0]))
                if result is None:
                    await self._db.execute("DELETE FROM sessions WHERE key = ?", (key,))
                else:
                    await self._db.execute(
                        "INSERT INTO sessions VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE "
                        "SET updated_at = excluded.updated_at, json = excluded.json",
                        (key, int(result.get("updatedAt") or 0), _encode(result).decode()),
                    )
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")
        return result

    async def delete(self, key: str) -> bool:
        cursor = await self._db.execute("DELETE FROM sessions WHERE key = ?", (key,))
        return bool(cursor.rowcount)

    async def newest(self, n: int) -> list[str]:
        async with self._db.execute(
            "SELECT key FROM sessions ORDER BY updated_at DESC LIMIT ?", (n,)
        ) as cursor:
            return [row[0] for row in await cursor.fetchall()]

    async def flush(self) -> None:
        pass  # every statement committed before its call returned


class DiskcacheContender:
    """diskcache's ``Cache``: synchronous, so every call goes to a worker thread
    (``anyio.to_thread``), as its maintainer recommends for async code.

    Values are the entries' JSON bytes. Defaults otherwise (WAL, 64 MiB mmap);
    ``sqlite_synchronous=2`` (FULL) with fsync. Updates run ``get`` + ``set``
    inside ``cache.transact()`` in one thread hop. diskcache does not fsync the
    files it keeps values of 32 KB and more in, whatever ``sqlite_synchronous`` says.
    """

    whole_file = False

    def __init__(self, path: Path, *, fsync: bool, name: str | None = None) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.name = name or ("diskcache (FULL)" if fsync else "diskcache")
        self._cache: Any = None

    @staticmethod
    def build(path: Path, sessions: Mapping[str, dict[str, Any]]) -> None:
        import diskcache

        with diskcache.Cache(str(path)) as cache, cache.transact():
            for key, value in sessions.items():
                cache.set(key, _encode(value))

    async def open(self) -> None:
        import diskcache

        self._cache = await anyio.to_thread.run_sync(
            lambda: diskcache.Cache(str(self.path), sqlite_synchronous=2 if self.fsync else 1)
        )

    async def close(self) -> None:
        if self._cache is not None:
            cache, self._cache = self._cache, None
            await anyio.to_thread.run_sync(cache.close)

    async def get(self, key: str) -> Any:
        data = await anyio.to_thread.run_sync(self._cache.get, key)
        return None if data is None else _decode(data)

    async def set(self, key: str, value: dict[str, Any]) -> None:
        await anyio.to_thread.run_sync(self._cache.set, key, _encode(value))

    def _update_sync(self, key: str, fn: UpdateFn) -> Any:
        with self._cache.transact():
            data = self._cache.get(key)
            result = fn(None if data is None else _decode(data))
            if result is None:
                self._cache.delete(key)
            else:
                self._cache.set(key, _encode(result))
        return result

    async def update(self, key: str, fn: UpdateFn) -> Any:
        return await anyio.to_thread.run_sync(self._update_sync, key, fn)

    async def delete(self, key: str) -> bool:
        return bool(await anyio.to_thread.run_sync(self._cache.delete, key))

    def _newest_sync(self, n: int) -> list[str]:
        # No secondary index: read every value (diskcache orders by key or access only).
        items = [(key, _decode(self._cache.get(key))) for key in self._cache.iterkeys()]
        return [key for key, _ in sorted(items, key=_recency, reverse=True)[:n]]

    async def newest(self, n: int) -> list[str]:
        return await anyio.to_thread.run_sync(self._newest_sync, n)

    async def flush(self) -> None:
        pass


class AiofilesContender:
    """A naive directory store through aiofiles: what "async files" usually means.

    The same layout as aiosessions (``<name>/meta.json``, the same names), the
    same tmp + rename, per-key locks; but every file operation is its own
    worker-thread hop (open, read or write, close, rename, fsync ...), and there
    is no cache and no write-behind.
    """

    whole_file = False

    def __init__(self, folder: Path, *, fsync: bool, name: str | None = None) -> None:
        self.folder = Path(folder)
        self.fsync = fsync
        self.name = name or ("aiofiles directory (fsync)" if fsync else "aiofiles directory")
        self._locks: dict[str, anyio.Lock] = {}
        self._counter = 0

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def _meta(self, key: str) -> Path:
        return self.folder / encode_key(key) / META

    async def get(self, key: str) -> Any:
        import aiofiles

        try:
            async with aiofiles.open(self._meta(key), "rb") as f:
                data = await f.read()
        except FileNotFoundError:
            return None
        return _decode(data)

    async def _write(self, key: str, data: bytes) -> None:
        import aiofiles
        import aiofiles.os

        path = self._meta(key)
        await aiofiles.os.makedirs(path.parent, exist_ok=True)
        self._counter += 1
        tmp = path.with_name(f".{META}.{os.getpid()}-{self._counter}.tmp")
        async with aiofiles.open(tmp, "wb") as f:
            await f.write(data)
            if self.fsync:
                await f.flush()
                await aiofiles.os.wrap(os.fsync)(f.fileno())
        await aiofiles.os.replace(tmp, path)
        if self.fsync:
            await aiofiles.os.wrap(_fsync_dir)(path.parent)

    async def set(self, key: str, value: dict[str, Any]) -> None:
        await self._write(key, _encode(value))

    async def update(self, key: str, fn: UpdateFn) -> Any:
        lock = self._locks.setdefault(key, anyio.Lock())
        async with lock:
            result = fn(await self.get(key))
            if result is None:
                await self.delete(key)
            else:
                await self._write(key, _encode(result))
        if not lock.locked() and not lock.statistics().tasks_waiting:
            self._locks.pop(key, None)
        return result

    async def delete(self, key: str) -> bool:
        import aiofiles.os

        path = self._meta(key)
        try:
            await aiofiles.os.remove(path)
        except FileNotFoundError:
            return False
        await aiofiles.os.rmdir(path.parent)
        return True

    async def newest(self, n: int) -> list[str]:
        import aiofiles.os

        from aiosessions._keys import decode_name

        items = []
        for name in await aiofiles.os.listdir(self.folder):
            if name.startswith(".") or name == "FORMAT":
                continue
            try:
                key = decode_name(name)
            except ValueError:
                continue
            entry = await self.get(key)
            if entry is not None:
                items.append((key, entry))
        return [key for key, _ in sorted(items, key=_recency, reverse=True)[:n]]

    async def flush(self) -> None:
        pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PhysicalLimit:
    """What the disk and the kernel allow: plain synchronous calls, no JSON, no locks, no cache.

    A write is tmp file + rename (+ fsync of the file and its folder) of the
    entry's bytes as generated; a read is open + read + close. It blocks the
    event loop (it has no other way to be this fast), so its event-loop lag is
    not a comparison.
    """

    whole_file = False

    def __init__(
        self,
        folder: Path,
        payloads: Callable[[str], bytes],
        *,
        fsync: bool,
        name: str | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.fsync = fsync
        self.name = name or ("physical limit (fsync)" if fsync else "physical limit")
        self._payload = payloads
        self._counter = 0

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def _meta(self, key: str) -> Path:
        return self.folder / encode_key(key) / META

    async def get(self, key: str) -> Any:
        try:
            fd = os.open(self._meta(key), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            return os.read(fd, 1 << 24)
        finally:
            os.close(fd)

    def write(self, key: str, data: bytes) -> None:
        path = self._meta(key)
        self._counter += 1
        tmp = path.with_name(f".{META}.{self._counter}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileNotFoundError:
            path.parent.mkdir(mode=0o700)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if self.fsync:
            _fsync_dir(path.parent)

    async def set(self, key: str, value: dict[str, Any]) -> None:
        self.write(key, self._payload(key))

    async def update(self, key: str, fn: UpdateFn) -> Any:
        self.write(key, self._payload(key))

    async def delete(self, key: str) -> bool:
        path = self._meta(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        shutil.rmtree(path.parent, ignore_errors=True)
        return True

    async def newest(self, n: int) -> list[str]:
        raise NotImplementedError("not a store: no recency to sort by")

    async def flush(self) -> None:
        pass
