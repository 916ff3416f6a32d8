"""The directory backend runs the backend contract (tests/contract.py), on asyncio and trio.

Below its fixtures are the tests only a folder of files can show: where the store
lives, how it is detected, and the ``meta.json`` files themselves.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import aiosessions
from aiosessions import SessionEntry, StoreFormatError
from aiosessions._fs import FILE_MODE, FileSystem, is_tmp_name
from aiosessions._keys import decode_name, encode_key
from aiosessions._layout import encode_format
from aiosessions.backends import Backend, DirectoryBackend
from tests.contract import KEY, BackendContract, Opener, Stored, all_keys


class BrokenKeyDisk(FileSystem):
    """A disk on which creating files in one session's folder fails (EIO): writes of that
    key fail while every other key's work, as when one folder sits on a bad sector."""

    def __init__(self) -> None:
        self.broken: str | None = None  # the folder name (encoded key) whose writes fail

    def open(self, path: str, flags: int, mode: int = FILE_MODE, *, dir_fd: int | None = None) -> int:
        if (
            self.broken is not None
            and flags & os.O_CREAT
            and is_tmp_name(path)
            and dir_fd is not None
            and os.path.basename(os.readlink(f"/proc/self/fd/{dir_fd}")) == self.broken
        ):
            raise OSError(errno.EIO, os.strerror(errno.EIO), path)
        return super().open(path, flags, mode, dir_fd=dir_fd)


def on_disk(store_path: Path) -> dict[str, Any]:
    """Every stored entry as JSON, read straight from the files (not through any backend)."""
    folder = store_path.with_name(store_path.stem + ".d")
    found: dict[str, Any] = {}
    for meta in folder.glob("*/meta.json"):
        key_file = meta.parent / "key"
        key = key_file.read_text("utf-8") if key_file.exists() else decode_name(meta.parent.name)
        found[key] = json.loads(meta.read_bytes())
    return found


class TestDirectoryContract(BackendContract):
    @pytest.fixture
    def disk(self) -> BrokenKeyDisk:
        return BrokenKeyDisk()

    @pytest.fixture
    def backend_factory(self, store_path: Path, disk: BrokenKeyDisk) -> Callable[[], Backend]:
        return lambda: DirectoryBackend(store_path, disk)

    @pytest.fixture
    def fail_writes(self, disk: BrokenKeyDisk) -> Callable[[str | None], None]:
        def fail(key: str | None) -> None:
            disk.broken = None if key is None else encode_key(key)

        return fail

    # -- the store's own lock table: not a backend's concern, so run on one backend ----------

    async def test_lock_table_is_empty_after_100k_distinct_keys(
        self, open_test_store: Opener, stored: Stored
    ) -> None:
        """Per-key locks exist only while used: 100,000 keys later the table is empty.

        All but 1,000 of the keys are deleted again before the one flush, which keeps
        the test about locks rather than about writing 100,000 entries.
        """
        count, kept = 100_000, 1_000
        async with open_test_store(entry_type=dict, max_pending_keys=200_000) as store:
            peak = 0

            async def worker(start: int) -> None:
                nonlocal peak
                for i in range(start, count, 50):
                    await store.update(f"k{i}", lambda e, i=i: {"i": i, "seen": e is not None})
                    peak = max(peak, len(store._locks))
                for i in range(start + kept, count, 50):
                    assert await store.delete(f"k{i}") is True

            async with anyio.create_task_group() as tg:
                for start in range(50):
                    tg.start_soon(worker, start)
            assert len(store._locks) == 0
            assert 0 < peak <= 50  # at most one lock per task at a time
            assert store.statistics().pending == count
            await store.flush()
            assert len(store._locks) == 0
            assert store.statistics().pending == 0
            assert await store.get("k999") == {"i": 999, "seen": False}
            assert await store.get("k1000") is None
            assert len(await all_keys(store)) == kept
        expected = {f"k{i}": {"i": i, "seen": False} for i in range(kept)}
        assert await stored() == expected

    # -- what only the directory store shows ---------------------------------------------

    async def test_entries_are_meta_json_files(
        self, open_test_store: Opener, store_path: Path, stored: Stored
    ) -> None:
        long_key = "agent:main:" + "x" * 300  # a shortened folder name, with its key file
        async with open_test_store(entry_type=dict) as store:
            await store.set("a", {"n": 1})
            await store.set(long_key, {"n": 2})
            assert on_disk(store_path) == {}
            await store.flush()
            assert json.loads((store_path.with_name("sessions.d") / "a" / "meta.json").read_bytes()) == {
                "n": 1
            }
            assert on_disk(store_path) == {"a": {"n": 1}, long_key: {"n": 2}}
            assert await stored() == on_disk(store_path)
            await store.delete("a")
            await store.flush()
            assert on_disk(store_path) == {long_key: {"n": 2}}
            assert not (store_path.with_name("sessions.d") / "a").exists()

    async def test_store_mode_and_path(self, open_test_store: Opener, store_path: Path) -> None:
        async with open_test_store() as store:
            assert store.mode == "directory"
            assert store.path == str(store_path.with_name("sessions.d"))
        # Reopened without a mode, the store is detected as what it is.
        async with aiosessions.open_store(store_path, flush_interval=3600, fsync=False) as store:
            assert store.mode == "directory"

    async def test_a_new_store_defaults_to_directory_mode(self, tmp_path: Path) -> None:
        path = tmp_path / "state" / "sessions.json"
        async with aiosessions.open_store(path, fsync=False) as store:
            assert store.mode == "directory"
            assert store.path == str(tmp_path / "state" / "sessions.d")
        assert not path.exists()
        assert (tmp_path / "state" / "sessions.d" / "FORMAT").read_bytes() == encode_format()

    async def test_write_through_and_open_store_default_detection(self, tmp_path: Path) -> None:
        path = tmp_path / "sessions.json"
        async with aiosessions.open_store(path, flush_interval=0, fsync=True) as store:
            await store.set("k", SessionEntry(session_id="durable"))
            assert store.statistics().pending == 0  # write-through: on disk when set() returned
            assert store.mode == "directory"
        assert on_disk(path) == {"k": {"sessionId": "durable"}}

    async def test_mode_json_on_a_directory_store_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "sessions.json"
        async with aiosessions.open_store(path, fsync=False) as store:
            await store.set(KEY, SessionEntry(session_id="d"))
        before = sorted(p.name for p in tmp_path.iterdir())
        with pytest.raises(StoreFormatError, match="migrated"):
            async with aiosessions.open_store(path, mode="json"):
                pytest.fail("opened a directory store as a legacy file")
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # no sessions.json appeared

    async def test_the_store_can_be_named_by_its_folder(self, tmp_path: Path) -> None:
        async with aiosessions.open_store(tmp_path / "sessions.json", fsync=False) as store:
            await store.set(KEY, SessionEntry(session_id="d"))
        async with aiosessions.open_store(tmp_path / "sessions.d", fsync=False) as store:
            assert store.mode == "directory"
            assert await store.get(KEY) == SessionEntry(session_id="d")

    async def test_the_opener_is_not_the_store(self, store_path: Path) -> None:
        opener = aiosessions.open_store(store_path)
        with pytest.raises(AttributeError, match=r"use `async with open_store\(...\) as store:`.*store.get"):
            opener.get("k")  # type: ignore[attr-defined]
        with pytest.raises(AttributeError, match="has no attribute 'nonsense'"):
            opener.nonsense  # type: ignore[attr-defined]  # noqa: B018
        assert not store_path.exists()
        assert list(store_path.parent.iterdir()) == []
