"""The directory store's recency index (backends/_index.py): never trusted when it cannot be.

Writers killed half-way (real processes, SIGKILL), other processes' writes, a log that
grows past compaction, and every way a hand or an older version can leave the index
stale or damaged: each listing must still say what the session files say.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest

import aiosessions
from aiosessions import migrate
from aiosessions._fs import FileSystem
from aiosessions._keys import encode_key
from aiosessions._recency import rank
from aiosessions.backends import DirectoryBackend, _directory, _index, _indexfiles
from aiosessions.backends._index import INDEX_DIR, check_index

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def truth(store_path: Path) -> list[tuple[str, int | None]]:
    """What the session files say, read with json and os only, in listing order."""
    found = {}
    folder = store_path.with_suffix(".d")
    for name in os.listdir(folder):
        meta = folder / name / "meta.json"
        if name.startswith(".") or not meta.is_file():
            continue
        key = (folder / name / "key").read_text() if "=" in name else name.replace("~", ":")
        value = json.loads(meta.read_bytes()).get("updatedAt")
        found[key] = value if type(value) is int and abs(value) <= 2**53 else None
    return sorted(found.items(), key=lambda item: (rank(item[1]), item[0]))


def open_store(path: Path, **options: Any) -> Any:
    settings: dict[str, Any] = {"entry_type": dict, "flush_interval": 0, "fsync": False}
    return aiosessions.open_store(path, **(settings | options))


async def listing(store: Any) -> list[tuple[str, int | None]]:
    pairs = await store.newest(10_000)
    assert await store.count() == len(pairs)
    assert sorted([k async for k in store.keys()]) == sorted(k for k, _ in pairs)
    return list(pairs)


async def fill(store: Any, n: int, base: int = 1000) -> None:
    for i in range(n):
        await store.set(f"agent:main:{i}", {"updatedAt": base + i * 37 % n})


async def test_a_store_without_an_index_gets_one(tmp_path: Path) -> None:
    legacy = tmp_path / "sessions.json"
    legacy.write_text(json.dumps({f"k:{i}": {"updatedAt": i % 7} for i in range(50)}))
    await migrate(legacy, fsync=False)
    path = tmp_path / "sessions.json"
    assert not (tmp_path / "sessions.d" / INDEX_DIR).exists()
    async with open_store(path) as store:
        assert await listing(store) == truth(path)
    assert (tmp_path / "sessions.d" / INDEX_DIR / "CURRENT").is_file()
    async with open_store(path) as store:
        assert await listing(store) == truth(path)


def damage_index(index: Path, damage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    current = json.loads((index / "CURRENT").read_text())
    log = index / current["log"]
    if damage == "remove-index":
        shutil.rmtree(index)
    elif damage == "junk-current":
        (index / "CURRENT").write_text("{junk")
    elif damage == "junk-db":
        (index / current["db"]).write_bytes(b"not a database" * 100)
    elif damage == "remove-log":
        log.unlink()
    elif damage == "torn-log":
        with log.open("ab") as file:
            file.write(b"\x40\x00\x00\x00\x01\x02")  # a record cut short, nobody appending
    elif damage == "junk-log":
        with log.open("r+b") as file:
            file.seek(20)
            file.write(b"\xff" * 8)
    elif damage == "reboot":
        monkeypatch.setattr(_indexfiles, "_boot", "another boot")


def edit_by_hand(store_path: Path, key: str, at: int) -> None:
    meta = store_path.with_suffix(".d") / encode_key(key) / "meta.json"
    meta.write_text(json.dumps({"updatedAt": at}))


@pytest.mark.parametrize("damage", ["remove-index", "junk-current", "remove-log", "torn-log"])
async def test_an_index_damaged_under_an_open_store_is_rebuilt(
    tmp_path: Path, damage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sessions.json"
    async with open_store(path) as store:
        await fill(store, 40)
        await listing(store)
        await store.set("agent:main:3", {"updatedAt": 99_999})  # in the log, not the database
        damage_index(tmp_path / "sessions.d" / INDEX_DIR, damage, monkeypatch)
        edit_by_hand(path, "agent:main:5", 123_456)  # a rebuild must read what changed
        assert await listing(store) == truth(path)
        assert await store.newest(2) == [("agent:main:5", 123_456), ("agent:main:3", 99_999)]
    async with open_store(path) as store:
        assert await listing(store) == truth(path)


@pytest.mark.parametrize(
    "damage", ["remove-index", "junk-current", "junk-db", "remove-log", "torn-log", "junk-log", "reboot"]
)
async def test_a_damaged_index_is_not_trusted_at_the_next_open(
    tmp_path: Path, damage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sessions.json"
    async with open_store(path) as store:
        await fill(store, 40)
        await listing(store)
        await store.set("agent:main:3", {"updatedAt": 99_999})
    damage_index(tmp_path / "sessions.d" / INDEX_DIR, damage, monkeypatch)
    edit_by_hand(path, "agent:main:5", 123_456)
    async with open_store(path) as store:
        assert await listing(store) == truth(path)
        assert await store.newest(2) == [("agent:main:5", 123_456), ("agent:main:3", 99_999)]


@pytest.mark.parametrize("change", ["remove", "add", "rename", "add-shortened"])
async def test_sessions_added_or_removed_by_hand_are_noticed(tmp_path: Path, change: str) -> None:
    path = tmp_path / "sessions.json"
    folder = tmp_path / "sessions.d"
    async with open_store(path) as store:
        await fill(store, 30)
        long_key = "agent:" + "x" * 200
        await store.set(long_key, {"updatedAt": 5})
        assert await listing(store) == truth(path)
        source = folder / encode_key("agent:main:7")
        if change == "remove":
            shutil.rmtree(source)
        elif change == "add":
            shutil.copytree(source, folder / encode_key("agent:hand:1"))
        elif change == "rename":
            source.rename(folder / encode_key("agent:hand:2"))
        elif change == "add-shortened":
            other = "agent:" + "y" * 200
            shutil.copytree(folder / encode_key(long_key), folder / encode_key(other))
            (folder / encode_key(other) / "key").write_text(other)
        assert await listing(store) == truth(path)


async def test_an_update_in_place_by_hand_is_found_by_fsck(tmp_path: Path) -> None:
    """An edit inside a session folder is invisible to the cheap checks (docs/design.md):
    fsck's check of the index finds it, and its repair rebuilds the index."""
    path = tmp_path / "sessions.json"
    folder = tmp_path / "sessions.d"

    def check(repair: bool) -> tuple[list[str], bool]:
        return check_index(folder, FileSystem(), repair=repair, lock_timeout=5, max_entry_bytes=2**20)

    async with open_store(path) as store:
        await fill(store, 20)
        assert await anyio.to_thread.run_sync(check, True) == ([], False)  # no index yet: nothing to do
        await listing(store)
        assert await anyio.to_thread.run_sync(check, False) == ([], False)
        edit_by_hand(path, "agent:main:4", 10**9)
        before = sorted(os.listdir(folder / INDEX_DIR))
        problems, repaired = await anyio.to_thread.run_sync(check, False)
        assert any("agent:main:4" in problem for problem in problems) and not repaired, problems
        assert sorted(os.listdir(folder / INDEX_DIR)) == before  # a check writes nothing
        problems, repaired = await anyio.to_thread.run_sync(check, True)
        assert problems and repaired
        assert await anyio.to_thread.run_sync(check, False) == ([], False)
        assert await store.newest(1) == [("agent:main:4", 10**9)]


async def test_the_check_beside_a_live_writer_finds_nothing_wrong(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    folder = tmp_path / "sessions.d"
    async with open_store(path) as store:
        await fill(store, 50)
        await listing(store)
        found: list[list[str]] = []

        async def writer() -> None:
            for i in range(400):
                await store.set(f"agent:main:{i % 70}", {"updatedAt": 5000 + i})
                if i % 9 == 0:
                    await store.delete(f"agent:main:{(i * 7) % 70}")

        async def checker() -> None:
            for _ in range(5):
                problems, _ = await anyio.to_thread.run_sync(
                    lambda: check_index(
                        folder, FileSystem(), repair=False, lock_timeout=5, max_entry_bytes=2**20
                    )
                )
                found.append(problems)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(writer)
            tasks.start_soon(checker)
        assert found == [[]] * 5
        assert await listing(store) == truth(path)


CHILD = textwrap.dedent(
    """
    import os, signal, sys, json
    import anyio, aiosessions
    from aiosessions._fs import FileSystem

    path, kill_key, when, actions = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])

    class Killer(FileSystem):
        # SIGKILL ourselves in the middle of writing kill_key: after (or before) its rename.
        target = None
        def rename(self, src, dst, *, src_dir_fd=None, dst_dir_fd=None):
            if dst == "meta.json" and self.target == "armed" and when == "before-rename":
                os.kill(os.getpid(), signal.SIGKILL)
            super().rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
            if dst == "meta.json" and self.target == "armed" and when == "after-rename":
                os.kill(os.getpid(), signal.SIGKILL)
        def mkdir(self, path, *, dir_fd=None):
            super().mkdir(path, dir_fd=dir_fd)
            if self.target == "armed" and when == "after-mkdir":
                os.kill(os.getpid(), signal.SIGKILL)

    fs = Killer()

    async def main():
        async with aiosessions.open_store(
            path, entry_type=dict, flush_interval=0, fsync=False, filesystem=fs
        ) as store:
            for key, value in actions:
                if key == kill_key:
                    fs.target = "armed"
                await store.set(key, value)

    anyio.run(main)
    """
)


@pytest.mark.parametrize("when", ["after-rename", "before-rename", "after-mkdir"])
async def test_a_writer_killed_half_way_never_leaves_the_listing_wrong(tmp_path: Path, when: str) -> None:
    path = tmp_path / "sessions.json"
    async with open_store(path) as store:
        await fill(store, 30)
        before = await listing(store)
        assert before == truth(path)
        victim = "agent:main:new" if when == "after-mkdir" else "agent:main:9"
        actions = [("agent:main:1", {"updatedAt": 5000}), (victim, {"updatedAt": 7000})]
        result = await anyio.run_process(
            [sys.executable, "-c", CHILD, str(path), victim, when, json.dumps(actions)], check=False
        )
        assert result.returncode == -signal.SIGKILL, result.stderr.decode()
        after = await listing(store)
        assert after == truth(path)
        assert ("agent:main:1", 5000) in after
        assert (("agent:main:9", 7000) in after) == (when == "after-rename")
        # The writer is gone: this process takes over the same keys and lists them.
        await store.set(victim, {"updatedAt": 8000})
        assert (victim, 8000) in await listing(store)
        assert await listing(store) == truth(path)
    async with open_store(path) as store:
        assert await listing(store) == truth(path)


WRITER = textwrap.dedent(
    """
    import sys
    import anyio, aiosessions
    from aiosessions.backends import _index

    _index.COMPACT_BYTES = 2048  # a log switch every few writes

    async def main():
        path, start, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
        async with aiosessions.open_store(path, entry_type=dict, flush_interval=0, fsync=False) as store:
            for i in range(start, start + count):
                key = f"agent:w:{i % 50}"
                if i % 7 == 0:
                    await store.delete(key)
                else:
                    await store.set(key, {"updatedAt": i})

    anyio.run(main)
    """
)


async def test_compaction_beside_readers_and_writers_of_other_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_index, "COMPACT_BYTES", 2048)
    path = tmp_path / "sessions.json"
    async with open_store(path) as store:
        await fill(store, 20)
        await listing(store)
        async with anyio.create_task_group() as tasks:
            for start in (0, 1000, 2000):
                tasks.start_soon(
                    lambda s=start: anyio.run_process(
                        [sys.executable, "-c", WRITER, str(path), str(s), "300"]
                    )
                )
            for i in range(200):  # our own writes and listings meanwhile
                await store.set(f"agent:main:{i % 20}", {"updatedAt": 10_000 + i})
                if i % 10 == 0:
                    await store.newest(5)
        assert await listing(store) == truth(path)
        assert store._backend._index.compactions > 0
        index = tmp_path / "sessions.d" / INDEX_DIR
        assert len([n for n in os.listdir(index) if n.endswith(".log")]) == 1
    async with open_store(path) as store:
        assert await listing(store) == truth(path)


class NoIndexFolder(FileSystem):
    """A filesystem where the index cannot be written (as on a read-only mount for it)."""

    def mkdir(self, path: str, *, dir_fd: int | None = None) -> None:
        if path.startswith(INDEX_DIR):
            raise OSError(errno.EROFS, "read-only file system", path)
        super().mkdir(path, dir_fd=dir_fd)


async def test_a_store_where_no_index_can_be_written_still_lists_right(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    async with open_store(path, filesystem=NoIndexFolder()) as store:
        await fill(store, 25)
        assert await listing(store) == truth(path)
        await store.delete("agent:main:3")
        await store.set("agent:main:4", {"updatedAt": 10**6})
        assert await listing(store) == truth(path)
        edit_by_hand(path, "agent:main:5", 10**7)  # as another process without an index would
        assert await store.newest(1) == [("agent:main:5", 10**7)]
        assert await listing(store) == truth(path)
    assert not (tmp_path / "sessions.d" / INDEX_DIR).exists()


class FailingLog(FileSystem):
    """Every write to an index log fails (a full disk for it), session files are fine."""

    def __init__(self) -> None:
        self.logs: set[int] = set()

    def open(self, path: str, flags: int, mode: int = 0o600, *, dir_fd: int | None = None) -> int:
        fd = super().open(path, flags, mode, dir_fd=dir_fd)
        if path.endswith(".log") and flags & os.O_APPEND:
            self.logs.add(fd)
        return fd

    def close(self, fd: int) -> None:
        self.logs.discard(fd)
        super().close(fd)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if fd in self.logs:
            raise OSError(errno.ENOSPC, "no space left on device")
        return super().write(fd, data)


async def test_the_index_failing_never_fails_a_write(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    async with open_store(path) as store:
        await fill(store, 10)
        await listing(store)
    async with open_store(path, filesystem=FailingLog()) as store:
        await store.set("agent:main:2", {"updatedAt": 77_777}, durable=True)
        await store.delete("agent:main:3", durable=True)
        assert await listing(store) == truth(path)
    async with open_store(path) as store:
        assert await listing(store) == truth(path)


@pytest.mark.parametrize("barrier", ["syncfs", "fsync", "journal"])
async def test_durable_batches_are_in_the_listing_whichever_barrier(
    tmp_path: Path, barrier: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A durable batch of many keys may be written behind one syncfs barrier (stage, sync,
    rename, sync) or through the journal (stage, append, rename) instead of fsyncs per file:
    its intents and ends are logged the same way."""
    monkeypatch.setattr(_directory, "BARRIER", "syncfs" if barrier == "journal" else barrier)
    monkeypatch.setattr(_directory, "JOURNAL_MODE", "on" if barrier == "journal" else "off")
    staged: list[int] = []
    stage = DirectoryBackend._stage_sync
    monkeypatch.setattr(
        DirectoryBackend,
        "_stage_sync",
        lambda self, groups, **options: staged.append(1) or stage(self, groups, **options),
    )
    path = tmp_path / "sessions.json"
    async with open_store(path, flush_interval=3600, fsync=True) as store:
        await fill(store, 30)
        await store.flush()
        await listing(store)
        for i in range(40):  # updates, new sessions and deletes in one durable batch
            if i % 5 == 0:
                await store.delete(f"agent:main:{i}")
            else:
                await store.set(f"agent:main:{i}", {"updatedAt": 50_000 + i})
        await store.flush()
        other = DirectoryBackend(path)  # another process's view of the store
        await other.open()
        try:
            assert await other.newest(1000) == truth(path)
            assert await other.count() == len(truth(path))
        finally:
            await other.aclose()
        assert await listing(store) == truth(path)
    assert bool(staged) == (barrier != "fsync")
