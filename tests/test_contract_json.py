"""The legacy JSON backend runs the backend contract (tests/contract.py), on asyncio and trio.

One promise differs by the nature of the format: the legacy store is one file,
rewritten whole by every batch, so a failed rewrite fails every write of its batch
(none lands, all stay queued) where other backends fail the broken write alone.
Below the fixtures are that version of the two tests, and the tests only the
legacy file itself can show.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

import aiosessions
from aiosessions import FlushError, SessionEntry, StoreFormatError, StoreIOError
from aiosessions._fs import FileSystem
from aiosessions.backends import Backend, JsonBackend, Write
from tests.contract import KEY, BackendContract, Opener, Stored, opened, values, write


class FailingDisk(FileSystem):
    """A disk whose writes fail (EIO) while ``failing`` is set."""

    def __init__(self) -> None:
        self.failing = False

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if self.failing:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return super().write(fd, data)


class TestJsonContract(BackendContract):
    @pytest.fixture
    def disk(self) -> FailingDisk:
        return FailingDisk()

    @pytest.fixture
    def backend_factory(self, store_path: Path, disk: FailingDisk) -> Callable[[], Backend]:
        return lambda: JsonBackend(store_path, disk)

    # -- one file: a failed rewrite fails its whole batch ------------------------------------

    async def test_a_batch_lands_around_a_failing_write(
        self, open_test_store: Opener, stored: Stored, disk: FailingDisk
    ) -> None:
        async with open_test_store(entry_type=dict) as store:
            for key in ("a", "b", "c"):
                await store.set(key, {"v": 1})
            await store.flush()
            disk.failing = True
            for key in ("a", "b", "c"):
                await store.set(key, {"v": 2})
            with pytest.raises(FlushError) as caught:
                await store.flush()
            assert set(caught.value.failures) == {"a", "b", "c"}
            assert all(isinstance(error, StoreIOError) for error in caught.value.failures.values())
            assert await stored() == {"a": {"v": 1}, "b": {"v": 1}, "c": {"v": 1}}
            stats = store.statistics()
            assert stats.pending == 3 and stats.failures >= 3
            assert await store.get("b") == {"v": 2}  # kept, and still what this process reads
            disk.failing = False
            await store.flush()
            assert store.statistics().pending == 0
            assert await stored() == {"a": {"v": 2}, "b": {"v": 2}, "c": {"v": 2}}

    async def test_backend_batch_lands_around_a_failing_write(
        self, backend_factory: Callable[[], Backend], disk: FailingDisk
    ) -> None:
        async with opened(backend_factory) as backend:
            await write(backend, Write("a", b"1"), Write("b", b"1"))
            disk.failing = True
            result = await write(backend, Write("a", b"2"), Write("b", b"2"))
            assert result.landed == [] and set(result.failed) == {"a", "b"}
            assert all(isinstance(error, StoreIOError) for error in result.failed.values())
            assert [values(each) for each in await backend.read_many(["a", "b"])] == [1, 1]
            disk.failing = False
            assert sorted((await write(backend, Write("a", b"2"), Write("b", b"2"))).landed) == ["a", "b"]
            assert [values(each) for each in await backend.read_many(["a", "b"])] == [2, 2]

    # -- what only the legacy file shows ------------------------------------------------------

    async def test_entries_live_in_the_legacy_file(
        self, open_test_store: Opener, store_path: Path, stored: Stored
    ) -> None:
        async with open_test_store(entry_type=dict) as store:
            await store.set("a", {"n": 1})
            await store.set("b", {"n": 2})
            assert json.loads(store_path.read_bytes()) == {}
            await store.flush()
            assert json.loads(store_path.read_bytes()) == {"a": {"n": 1}, "b": {"n": 2}}
            assert await stored() == json.loads(store_path.read_bytes())
            await store.delete("a")
            await store.flush()
            assert json.loads(store_path.read_bytes()) == {"b": {"n": 2}}
        assert not store_path.with_name("sessions.d").exists()

    async def test_store_mode_and_path(self, open_test_store: Opener, store_path: Path) -> None:
        async with open_test_store() as store:
            assert store.mode == "json"
            assert store.path == str(store_path)
        # Reopened without a mode, the store is detected as what it is.
        async with aiosessions.open_store(store_path, flush_interval=3600, fsync=False) as store:
            assert store.mode == "json"

    async def test_an_existing_legacy_file_opens_in_json_mode(self, tmp_path: Path) -> None:
        path = tmp_path / "sessions.json"
        path.write_text(json.dumps({KEY: {"sessionId": "legacy"}}, indent=2), "utf-8")
        async with aiosessions.open_store(path, fsync=False) as store:
            assert store.mode == "json"
            assert await store.get(KEY) == SessionEntry(session_id="legacy")
        assert not (tmp_path / "sessions.d").exists()

    async def test_mode_directory_on_a_legacy_file_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "sessions.json"
        path.write_text("{}", "utf-8")
        with pytest.raises(StoreFormatError, match="migrate"):
            async with aiosessions.open_store(path, mode="directory"):
                pytest.fail("opened a legacy file as a directory store")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["sessions.json"]
