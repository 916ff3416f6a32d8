"""The directory store on disk: what it writes, where, with which permissions, and what it refuses."""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

import aiosessions
from aiosessions import SessionEntry, StoreFormatError, StoreIOError
from aiosessions._keys import encode_key
from aiosessions._layout import encode_format

pytestmark = pytest.mark.asyncio

OPTIONS: dict[str, Any] = {"flush_interval": 3600, "fsync": False}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """``(inode, mtime_ns)`` of every file under ``root`` (directories excluded)."""
    found: dict[str, tuple[int, int]] = {}
    for folder, _, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(folder, name))
            found[os.path.relpath(os.path.join(folder, name), root)] = (st.st_ino, st.st_mtime_ns)
    return found


def everything_under(root: Path) -> list[Path]:
    return [Path(folder) / name for folder, dirs, files in os.walk(root) for name in (*dirs, *files)]


async def wait_until(condition: Any, what: str, deadline: float = 30.0) -> None:
    """Poll ``condition()`` on the event loop until it holds (bounded, not a timing assertion)."""
    with anyio.fail_after(deadline):
        while not condition():
            await anyio.sleep(0.001)


# -- one write touches one file ------------------------------------------------------------


async def test_updating_one_of_1000_sessions_rewrites_one_file(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    keys = [f"agent:main:telegram:direct:user{i}" for i in range(1000)]
    async with aiosessions.open_store(path, **OPTIONS) as store:
        for i, key in enumerate(keys):
            await store.set(key, SessionEntry(session_id=f"s{i}", updated_at=i))
    root = tmp_path / "sessions.d"
    before = snapshot(root)
    contents = {p: (root / p).read_bytes() for p in before}
    assert sum(p.endswith("meta.json") for p in before) == 1000

    target = keys[500]
    changed = f"{encode_key(target)}/meta.json"
    async with aiosessions.open_store(path, **OPTIONS) as store:
        result = await store.update(target, lambda e: SessionEntry(session_id=e.session_id, updated_at=-1))
        assert result == SessionEntry(session_id="s500", updated_at=-1)
        # Reads of other sessions write nothing.
        assert await store.get(keys[0]) == SessionEntry(session_id="s0", updated_at=0)
        assert await store.updated_at(keys[999]) == 999
        await store.flush()
    after = snapshot(root)

    assert sorted(after) == sorted(before), "a file appeared or disappeared (a tmp file left behind?)"
    differ = sorted(p for p in before if before[p] != after[p])
    assert differ == [changed]
    assert after[changed][0] != before[changed][0]  # replaced by rename: a new inode
    for p in before:
        if p != changed:
            assert (root / p).read_bytes() == contents[p]
    assert json.loads((root / changed).read_bytes()) == {"sessionId": "s500", "updatedAt": -1}


# -- stores in one folder -------------------------------------------------------------------


async def test_two_stores_in_one_folder_stay_apart(tmp_path: Path) -> None:
    async with (
        aiosessions.open_store(tmp_path / "a.json", entry_type=dict, **OPTIONS) as a,
        aiosessions.open_store(tmp_path / "b.json", entry_type=dict, **OPTIONS) as b,
    ):
        assert a.path == str(tmp_path / "a.d") and b.path == str(tmp_path / "b.d")
        await a.set("shared:key", {"store": "a"})
        await a.set("only:a", {"store": "a"})
        await b.set("shared:key", {"store": "b"})
        await b.set("only:b", {"store": "b"})
        await a.flush()
        await b.flush()
        assert sorted([k async for k in a.keys()]) == ["only:a", "shared:key"]
        assert sorted([k async for k in b.keys()]) == ["only:b", "shared:key"]
        assert await a.get("shared:key") == {"store": "a"}
        assert await b.get("shared:key") == {"store": "b"}
        await a.delete("shared:key")
        await a.flush()
        assert await b.get("shared:key") == {"store": "b"}
    assert sorted(os.listdir(tmp_path)) == ["a.d", "b.d"]
    a_files = {p.relative_to(tmp_path / "a.d") for p in everything_under(tmp_path / "a.d")}
    b_files = {p.relative_to(tmp_path / "b.d") for p in everything_under(tmp_path / "b.d")}
    assert Path(encode_key("only:a")) in a_files and Path(encode_key("only:a")) not in b_files
    assert Path(encode_key("only:b")) in b_files and Path(encode_key("only:b")) not in a_files
    assert Path(encode_key("shared:key")) in b_files and Path(encode_key("shared:key")) not in a_files
    a_inodes = {os.lstat(p).st_ino for p in everything_under(tmp_path / "a.d")}
    b_inodes = {os.lstat(p).st_ino for p in everything_under(tmp_path / "b.d")}
    assert not a_inodes & b_inodes
    # Reopened, each finds only its own sessions.
    async with aiosessions.open_store(tmp_path / "b.json", entry_type=dict, **OPTIONS) as b:
        assert {k: v async for k, v in b.items()} == {"shared:key": {"store": "b"}, "only:b": {"store": "b"}}


async def test_a_directory_store_beside_a_json_store(tmp_path: Path) -> None:
    async with (
        aiosessions.open_store(tmp_path / "a.json", entry_type=dict, **OPTIONS) as a,
        aiosessions.open_store(tmp_path / "b.json", entry_type=dict, mode="json", **OPTIONS) as b,
    ):
        await a.set("k", {"store": "a"})
        await b.set("k", {"store": "b"})
    assert sorted(os.listdir(tmp_path)) == [".b.lock", "a.d", "b.json"]
    assert json.loads((tmp_path / "b.json").read_bytes()) == {"k": {"store": "b"}}
    assert json.loads((tmp_path / "a.d" / "k" / "meta.json").read_bytes()) == {"store": "a"}


@pytest.mark.parametrize("mode", ["directory", "json"])
async def test_nothing_else_appears_in_the_users_folder(tmp_path: Path, mode: str) -> None:
    (tmp_path / "notes.txt").write_text("the user's own file")
    async with aiosessions.open_store(tmp_path / "sessions.json", mode=mode, **OPTIONS) as store:
        for i in range(20):
            await store.set(f"k{i}", SessionEntry(session_id=str(i)))
            if i % 5 == 0:
                await store.flush()
        await store.delete("k3")
        await store.set("x" * 500, SessionEntry(session_id="long"))
    expected = (
        ["notes.txt", "sessions.d"]
        if mode == "directory"
        else [".sessions.lock", "notes.txt", "sessions.json"]
    )
    assert sorted(os.listdir(tmp_path)) == expected
    assert (tmp_path / "notes.txt").read_text() == "the user's own file"


@pytest.mark.parametrize("mode", ["directory", "json"])
async def test_files_are_0600_and_directories_0700(tmp_path: Path, mode: str) -> None:
    base = tmp_path / "state" / "deeper"  # made by the store
    async with aiosessions.open_store(base / "sessions.json", mode=mode, fsync=True) as store:
        await store.set("agent:main:x", SessionEntry(session_id="a"))
        await store.set("é" * 200, SessionEntry(session_id="long key: a key file too"))
        await store.set("doomed", SessionEntry(session_id="d"))
        await store.flush()
        await store.delete("doomed")
    created = [tmp_path / "state", base, *everything_under(base)]
    if mode == "directory":
        assert (base / "sessions.d" / encode_key("é" * 200) / "key").is_file()
    assert len(created) > 3
    for path in created:
        mode_bits = stat.S_IMODE(os.lstat(path).st_mode)
        if path.is_dir():
            assert mode_bits == 0o700, f"{path} is {oct(mode_bits)}"
        else:
            assert path.is_file() and not path.is_symlink()
            assert mode_bits == 0o600, f"{path} is {oct(mode_bits)}"


# -- the FORMAT marker ---------------------------------------------------------------------


async def test_format_marker(tmp_path: Path) -> None:
    async with aiosessions.open_store(tmp_path / "sessions.json", **OPTIONS):
        pass
    marker = tmp_path / "sessions.d" / "FORMAT"
    assert marker.read_bytes() == encode_format()
    assert json.loads(marker.read_bytes()) == {"format": "aiosessions.directory", "version": 3}


async def test_a_folder_without_marker_is_not_trusted(tmp_path: Path) -> None:
    folder = tmp_path / "sessions.d"
    (folder / "someone").mkdir(parents=True)
    (folder / "someone" / "meta.json").write_text('{"sessionId": "half-migrated"}')
    before = sorted(str(p) for p in everything_under(tmp_path))
    for mode in (None, "directory"):
        with pytest.raises(StoreFormatError, match="FORMAT"):
            async with aiosessions.open_store(tmp_path / "sessions.json", mode=mode, **OPTIONS):
                pytest.fail("trusted a folder without a FORMAT marker")
    assert sorted(str(p) for p in everything_under(tmp_path)) == before
    assert not (folder / "FORMAT").exists()


async def test_a_folder_without_marker_beside_a_legacy_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "sessions.d" / "stray").mkdir(parents=True)
    (tmp_path / "sessions.json").write_text('{"k": {"sessionId": "legacy"}}')
    async with aiosessions.open_store(tmp_path / "sessions.json", **OPTIONS) as store:
        assert store.mode == "json"
        assert await store.get("k") == SessionEntry(session_id="legacy")
    assert not (tmp_path / "sessions.d" / "FORMAT").exists()


async def test_an_empty_folder_without_marker_becomes_the_store(tmp_path: Path) -> None:
    (tmp_path / "sessions.d").mkdir()
    async with aiosessions.open_store(tmp_path / "sessions.json", **OPTIONS) as store:
        assert store.mode == "directory"
        await store.set("k", SessionEntry(session_id="new"))
    assert (tmp_path / "sessions.d" / "FORMAT").read_bytes() == encode_format()


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        (b'{"format": "aiosessions.directory", "version": 4}', "version 4"),
        (b'{"format": "aiosessions.directory", "version": 0}', "version 0"),
        (b'{"format": "something.else", "version": 1}', "something.else"),
        (b"not json", "not a valid"),
        (b"", "not a valid"),
    ],
)
async def test_a_wrong_format_marker_is_refused(tmp_path: Path, marker: bytes, message: str) -> None:
    async with aiosessions.open_store(tmp_path / "sessions.json", **OPTIONS) as store:
        await store.set("k", SessionEntry(session_id="x"))
    (tmp_path / "sessions.d" / "FORMAT").write_bytes(marker)
    for mode in (None, "directory", "json"):
        with pytest.raises(StoreFormatError, match=message) as caught:
            async with aiosessions.open_store(tmp_path / "sessions.json", mode=mode, **OPTIONS):
                pytest.fail("opened a store with a wrong FORMAT marker")
        assert "FORMAT" in str(caught.value)
        if message == "not a valid":
            assert isinstance(caught.value.__cause__, msgspec.DecodeError)
    assert (tmp_path / "sessions.d" / "FORMAT").read_bytes() == marker
    assert not (tmp_path / "sessions.json").exists()


# -- the orphaned-tmp sweep ----------------------------------------------------------------


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


async def test_orphaned_tmp_files_are_swept_after_open(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    async with aiosessions.open_store(path, **OPTIONS) as store:
        await store.set("a", SessionEntry(session_id="a"))
        await store.set("b", SessionEntry(session_id="b"))
    root = tmp_path / "sessions.d"
    orphans = [
        root / "a" / ".meta.json.4242-deadbeef.tmp",
        root / "b" / ".meta.json.4243-cafebabe.tmp",
        root / ".FORMAT.99-00000000.tmp",
    ]
    for orphan in orphans:
        orphan.write_bytes(b'{"half":')
        age(orphan, 3600)
    trash = root / ".trash" / "0123456789abcdef"
    (trash / "x").mkdir(parents=True)
    (trash / "x" / "meta.json").write_text("{}")
    age(trash, 3600)

    async with aiosessions.open_store(path, tmp_max_age=0, **OPTIONS) as store:
        await wait_until(lambda: store.statistics().swept >= 4, "the sweep")
        assert store.statistics().swept == 4
        assert await store.get("a") == SessionEntry(session_id="a")
    for orphan in orphans:
        assert not orphan.exists()
    assert os.listdir(root / ".trash") == []
    assert (root / "a" / "meta.json").exists() and (root / "b" / "meta.json").exists()


async def test_fresh_tmp_files_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    async with aiosessions.open_store(path, **OPTIONS) as store:
        await store.set("a", SessionEntry(session_id="a"))
    folder = tmp_path / "sessions.d" / "a"
    old = folder / ".meta.json.1-00000001.tmp"
    fresh = folder / ".meta.json.2-00000002.tmp"  # another process is writing it right now
    not_ours = folder / "notes.tmp"  # not a name the library makes
    for tmp in (old, fresh, not_ours):
        tmp.write_bytes(b"{}")
    age(old, 7200)
    age(not_ours, 7200)
    age(tmp_path / "sessions.d" / ".swept", 7200)  # the last sweep began two hours ago
    async with aiosessions.open_store(path, tmp_max_age=3600, **OPTIONS) as store:
        await wait_until(lambda: store.statistics().swept >= 1, "the sweep")
        # Both tmp files sit in one folder, which one sweep step handles whole.
        assert store.statistics().swept == 1
    assert not old.exists()
    assert fresh.exists() and not_ours.exists()


class _CountingFS(aiosessions.FileSystem):
    """Counts the folders listed (a sweep lists every session folder)."""

    def __init__(self) -> None:
        self.listed = 0

    def listdir(self, fd: int) -> list[str]:
        self.listed += 1
        return super().listdir(fd)

    def scandir(self, fd: int) -> Any:
        self.listed += 1
        return super().scandir(fd)


async def test_an_open_soon_after_a_sweep_visits_no_session_folder(tmp_path: Path) -> None:
    """Issue 9.9: a sweep runs when the store's last one began tmp_max_age ago, not at every open."""
    path = tmp_path / "sessions.json"
    async with aiosessions.open_store(path, **OPTIONS) as store:
        for i in range(50):
            await store.set(f"agent:main:{i}", SessionEntry(session_id=str(i)))
    stamp = tmp_path / "sessions.d" / ".swept"
    assert stamp.exists()  # made with the store: a new store has nothing to sweep
    age(stamp, 7200)
    fs = _CountingFS()
    async with aiosessions.open_store(path, tmp_max_age=3600, filesystem=fs, **OPTIONS) as store:
        await wait_until(lambda: fs.listed >= 51, "the sweep")  # the store folder and 50 sessions
    assert time.time() - stamp.stat().st_mtime < 600  # the stamp of that sweep
    for _ in range(3):
        fs = _CountingFS()
        async with aiosessions.open_store(path, tmp_max_age=3600, filesystem=fs, **OPTIONS) as store:
            assert await store.get("agent:main:7") == SessionEntry(session_id="7")
            for _ in range(20):
                await anyio.sleep(0.001)  # give a sweep every chance to start
        assert fs.listed == 0


async def test_a_store_left_open_sweeps_again(tmp_path: Path) -> None:
    """Orphans of a writer that died after the store was opened are found while it stays open."""
    path = tmp_path / "sessions.json"
    async with aiosessions.open_store(path, tmp_max_age=0, **OPTIONS) as store:
        await store.set("a", SessionEntry(session_id="a"))
        await store.flush()
        orphan = tmp_path / "sessions.d" / "a" / ".meta.json.4242-deadbeef.tmp"
        orphan.write_bytes(b'{"half":')
        age(orphan, 60)
        await wait_until(lambda: store.statistics().swept >= 1, "the next sweep")
        assert not orphan.exists()


# -- symlinks ------------------------------------------------------------------------------


async def test_a_planted_symlink_is_never_followed_out_of_the_store(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    key = "agent:main:victim"
    async with aiosessions.open_store(path, **OPTIONS) as store:
        await store.set("other", SessionEntry(session_id="o"))
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "meta.json"
    secret.write_text('{"sessionId": "secret"}')
    os.chmod(secret, 0o644)
    (tmp_path / "sessions.d" / encode_key(key)).symlink_to(outside, target_is_directory=True)
    before = (secret.read_bytes(), os.stat(secret).st_ino, os.stat(secret).st_mtime_ns)

    async with aiosessions.open_store(path, **OPTIONS) as store:
        with pytest.raises(StoreIOError) as caught:
            await store.get(key)
        assert caught.value.key == key
        # Not even its existence is taken from outside the store.
        assert await store.contains(key) is False
        assert [k async for k in store.keys()] == ["other"]
        assert [k async for k, _ in store.items()] == ["other"]
        with pytest.raises(StoreIOError):
            await store.set(key, SessionEntry(session_id="written through"), durable=True)
        assert secret.read_bytes() == before[0]
        # Deleting the key removes the planted link, never what it points at.
        assert await store.delete(key) is True
        await store.flush()
        assert await store.get("other") == SessionEntry(session_id="o")
    assert (secret.read_bytes(), os.stat(secret).st_ino, os.stat(secret).st_mtime_ns) == before
    assert sorted(os.listdir(outside)) == ["meta.json"]
    assert not (tmp_path / "sessions.d" / encode_key(key)).is_symlink()


# -- delete --------------------------------------------------------------------------------


async def test_delete_removes_the_folder_and_leaves_no_trash(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    long_key = "agent:main:" + "z" * 300
    async with aiosessions.open_store(path, **OPTIONS) as store:
        for key in ("a", "b", long_key):
            await store.set(key, SessionEntry(session_id=key[:5]))
        await store.flush()
        root = tmp_path / "sessions.d"
        (root / "a" / "attachment.bin").write_bytes(b"left by a newer release")
        assert await store.delete("a") is True
        assert await store.delete(long_key) is True
        assert (root / "a").exists()  # still queued
        await store.flush()
        assert not (root / "a").exists()
        assert not (root / encode_key(long_key)).exists()
        assert os.listdir(root / ".trash") == []
        assert (root / "b" / "meta.json").exists()
        assert sorted([k async for k in store.keys()]) == ["b"]


# -- long keys -----------------------------------------------------------------------------


async def test_long_keys_work_end_to_end(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    prefix = "agent:main:telegram:group:-100123:topic:"
    keys = [
        prefix + "a" * 300,
        prefix + "a" * 299 + "b",  # shares a 339-character prefix with the first
        prefix + "A" * 300,  # differs from the first only by case
        "ключ:" * 800,  # 4 KiB of Cyrillic and colons
        "🙂" * 1024,  # 4 KiB of astral-plane characters
    ]
    names = [encode_key(key) for key in keys]
    assert len(set(names)) == len(keys)
    assert all("=" in name and len(name.encode()) <= 255 for name in names)
    async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as store:
        for i, key in enumerate(keys):
            await store.set(key, {"i": i})
        await store.flush()
        assert sorted([k async for k in store.keys()]) == sorted(keys)
    root = tmp_path / "sessions.d"
    for i, (key, name) in enumerate(zip(keys, names, strict=True)):
        assert (root / name / "key").read_bytes() == key.encode("utf-8")
        assert json.loads((root / name / "meta.json").read_bytes()) == {"i": i}
    async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as store:
        listed = [k async for k in store.keys()]
        assert sorted(listed) == sorted(keys)
        assert {k: v async for k, v in store.items()} == {key: {"i": i} for i, key in enumerate(keys)}
        assert await store.update(keys[0], lambda e: {"i": e["i"] + 100}) == {"i": 100}
        assert await store.delete(keys[1]) is True
        await store.flush()
        assert sorted([k async for k in store.keys()]) == sorted([keys[0], *keys[2:]])
        assert await store.get(keys[0]) == {"i": 100}


# -- freshness between stores --------------------------------------------------------------


async def test_another_stores_write_is_seen_on_the_next_get(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    key = "agent:main:k"
    async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as reader:
        await reader.set(key, {"v": 1})
        await reader.flush()
        assert await reader.get(key) == {"v": 1}  # read, and cached
        async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as writer:
            await writer.set(key, {"v": 2})  # same size as {"v": 1}
            await writer.set("new", {"v": 0})
            await writer.flush()
            assert await reader.get(key) == {"v": 2}
            assert await reader.updated_at(key) is None
            assert sorted([k async for k in reader.keys()]) == [key, "new"]
            for v in range(3, 10):  # several same-size rewrites in a row
                await writer.set(key, {"v": v})
                await writer.flush()
                assert await reader.get(key) == {"v": v}
            assert await writer.delete(key) is True
            await writer.flush()
            assert await reader.get(key) is None
            assert await reader.contains(key) is False
            assert [k async for k in reader.keys()] == ["new"]
            await writer.set(key, {"v": "back"})
            await writer.flush()
            assert await reader.get(key) == {"v": "back"}


@pytest.mark.parametrize("ttl", [60.0, 0.0], ids=["base-known", "base-expired"])
async def test_an_update_from_a_stale_base_loses_no_other_stores_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ttl: float
) -> None:
    """A write-behind update starts from the bytes read a moment ago without a stat
    (``read_base``); another store's write since then is still counted: the compare-and-swap
    finds it and the function is applied again to it. Past ``BASE_TTL`` the base is read."""
    from aiosessions.backends import _directory

    monkeypatch.setattr(_directory, "BASE_TTL", ttl)
    path = tmp_path / "sessions.json"
    key = "agent:main:k"
    seen: list[int] = []

    def add_one(entry: dict[str, int] | None) -> dict[str, int]:
        assert entry is not None
        seen.append(entry["n"])
        return {"n": entry["n"] + 1}

    async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as ours:
        await ours.set(key, {"n": 0})
        await ours.flush()
        assert await ours.get(key) == {"n": 0}
        async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as theirs:
            await theirs.update(key, add_one, durable=True)  # n = 1, on disk
        seen.clear()
        await ours.update(key, add_one)
        await ours.flush()
        assert await ours.get(key) == {"n": 2}
    # Known base: applied to the stale 0, then again to the 1 found; expired: read afresh.
    assert seen == ([0, 1] if ttl else [1])
    async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as again:
        assert await again.get(key) == {"n": 2}


# -- parallel writer threads keep their own outcome ----------------------------------------------


class _OneRootFsyncFails(aiosessions.FileSystem):
    """The store folder's fsyncs of one batch run together; the first of them fails (EIO).

    The others reach the disk at the same moment but return only after the failing thread has
    finished its part of the batch: the order in which a slow thread's success would wipe out
    a fast thread's failure. Later fsyncs of the store folder succeed and are counted.
    """

    def __init__(self, root: Path, together: int) -> None:
        self._root = root
        self._barrier = threading.Barrier(together)
        self._lock = threading.Lock()
        self._failing: int | None = None
        self.armed = False
        self.root_fsyncs_after = 0

    def fsync(self, fd: int) -> None:
        if not self._is_root(fd):
            return super().fsync(fd)
        if not self.armed:
            with self._lock:
                self.root_fsyncs_after += self._failing is not None
            return super().fsync(fd)
        self._barrier.wait(timeout=30)
        with self._lock:
            if self._failing is None:
                self._failing = threading.get_ident()
                self.armed = False
                raise OSError(errno.EIO, "injected", "sessions.d")
        super().fsync(fd)
        self._wait_until_out_of_the_library(self._failing)

    def _is_root(self, fd: int) -> bool:
        st = os.fstat(fd)
        return stat.S_ISDIR(st.st_mode) and os.path.samestat(st, os.stat(self._root))

    @staticmethod
    def _wait_until_out_of_the_library(ident: int) -> None:
        """Until the failing thread has left aiosessions (its batch part is done), bounded."""
        package = os.path.dirname(aiosessions.__file__)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            frame = sys._current_frames().get(ident)
            inside = False
            while frame is not None:
                inside = inside or frame.f_code.co_filename.startswith(package)
                frame = frame.f_back
            if not inside:
                return
            time.sleep(0.001)


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.anyio
async def test_a_failed_folder_fsync_is_not_cleared_by_another_threads_success(
    tmp_path: Path, anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 9.8: one writer thread's EIO on fsyncing the store folder must survive the other
    threads' successful fsyncs, so that the new session folders of the failed part get their
    directory entries fsynced when they are written again (per-file fsyncs: with the
    syncfs barrier a batch has no per-thread folder fsyncs)."""
    from aiosessions._keys import lock_stripe
    from aiosessions.backends import _directory

    monkeypatch.setattr(_directory, "BARRIER", "fsync")

    path = tmp_path / "sessions.json"
    keys: dict[int, str] = {}
    i = 0
    while len(keys) < 16:  # 16 stripes: the batch is split over the 4 writer threads
        keys.setdefault(lock_stripe(f"agent:main:new:{i}", 64), f"agent:main:new:{i}")
        i += 1
    fs = _OneRootFsyncFails(tmp_path / "sessions.d", together=4)
    async with aiosessions.open_store(path, flush_interval=3600, entry_type=dict, filesystem=fs) as store:
        for key in keys.values():
            await store.set(key, {"sessionId": key})
        fs.armed = True
        with pytest.raises(aiosessions.FlushError):
            await store.flush()  # every new folder is created; one thread's store fsync fails
        assert not fs.armed
        await store.flush()  # the failed part is written again: its folders already exist
        assert fs.root_fsyncs_after >= 1, "the store folder was never fsynced again after the EIO"
    for key in keys.values():
        assert json.loads((tmp_path / "sessions.d" / encode_key(key) / "meta.json").read_bytes()) == {
            "sessionId": key
        }


# -- a broken session can be deleted (issue 15.6) -------------------------------------------------


def _break_meta(meta: Path, how: str, outside: Path) -> None:
    meta.unlink()
    if how == "directory":
        meta.mkdir()
        (meta / "inner.json").write_text("{}")
    elif how == "fifo":
        os.mkfifo(meta)
    else:
        os.symlink(outside, meta)


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.parametrize("how", ["directory", "fifo", "symlink"])
@pytest.mark.anyio
async def test_a_session_whose_meta_json_is_not_a_file_can_be_deleted(
    tmp_path: Path, how: str, anyio_backend: str
) -> None:
    """get() says CorruptSessionError; delete() removes the session, never following a link out."""
    path = tmp_path / "sessions.json"
    outside = tmp_path / "outside.json"
    outside.write_text('{"sessionId": "not the store\'s"}')
    keys = ["agent:main:broken", "agent:main:" + "long" * 40]  # a plain name and a shortened one
    async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as store:
        for key in keys:
            await store.set(key, {"sessionId": key})
        await store.set("agent:main:fine", {"sessionId": "fine"})
    for key in keys:
        _break_meta(tmp_path / "sessions.d" / encode_key(key) / "meta.json", how, outside)
    async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as store:
        for key in keys:
            with pytest.raises(aiosessions.CorruptSessionError):
                await store.get(key)
            assert await store.contains(key)
            assert await store.delete(key, durable=True) is True
            assert await store.get(key) is None
            assert not await store.contains(key)
            assert await store.delete(key) is False
        assert [key async for key in store.keys()] == ["agent:main:fine"]
    for key in keys:
        assert not (tmp_path / "sessions.d" / encode_key(key)).exists()
    assert outside.read_text() == '{"sessionId": "not the store\'s"}'
    assert os.listdir(tmp_path / "sessions.d" / ".trash") == []


async def test_a_deleted_sessions_meta_json_goes_before_its_other_files(tmp_path: Path) -> None:
    """Until a delete's rename into the trash is durable, a power cut may bring the folder back
    with some of its removals durable: meta.json goes first, so it is whole or absent, never a
    meta.json without its key file (a power-loss run found one on the barrier path)."""
    from aiosessions._fs import FileSystem

    removed: list[str] = []

    class Recording(FileSystem):
        def unlink(self, path: str, *, dir_fd: int | None = None) -> None:
            removed.append(path)
            super().unlink(path, dir_fd=dir_fd)

    key = "agent:main:telegram:group:" + "x" * 300  # a shortened name: a key file beside meta.json
    path = tmp_path / "sessions.json"
    async with aiosessions.open_store(path, filesystem=Recording(), fsync=False, entry_type=dict) as store:
        await store.set(key, {"sessionId": "s", "blob": "b" * 20_000})  # and a blob file
        await store.flush()
        removed.clear()
        await store.delete(key)
        await store.flush()
    in_folder = [name for name in removed if not name.startswith(".")]
    assert in_folder[0] == "meta.json" and "key" in in_folder
    assert any(name.startswith("blob-") for name in in_folder)
