"""The legacy JSON store: OpenClaw's ``sessions.json`` kept the way OpenClaw keeps it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import anyio
import pytest

import aiosessions
from aiosessions import CorruptSessionError, FlushError, SessionEntry, StoreIOError

pytestmark = pytest.mark.asyncio

OPTIONS: dict[str, Any] = {"mode": "json", "flush_interval": 3600, "fsync": False}


def file_state(path: Path) -> tuple[bytes, int, int]:
    st = os.stat(path)
    return path.read_bytes(), st.st_ino, st.st_mtime_ns


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_the_file_is_indented_by_2_and_parses_with_json_load(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    entries = {
        "agent:main:a": {"sessionId": "a", "updatedAt": 1, "origin": {"label": "x", "to": ["y", None]}},
        "agent:main:é": {"sessionId": "é", "flags": [], "empty": {}},
    }
    async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as store:
        for key, value in entries.items():
            await store.set(key, value)
    with path.open(encoding="utf-8") as file:
        assert json.load(file) == entries
    text = path.read_text("utf-8")
    # What OpenClaw's JSON.stringify(store, null, 2) writes (non-ASCII kept as is).
    assert text == json.dumps(entries, indent=2, ensure_ascii=False) + "\n"
    assert text.splitlines()[1] == '  "agent:main:a": {'


async def test_entries_not_touched_are_kept_byte_for_byte(
    tmp_path: Path, openclaw_sessions_path: Path, openclaw_sessions: dict[str, Any]
) -> None:
    path = tmp_path / "sessions.json"
    shutil.copyfile(openclaw_sessions_path, path)
    keys = list(openclaw_sessions)
    changed, deleted, added = keys[3], keys[7], "agent:main:brand-new"
    async with aiosessions.open_store(path, **OPTIONS) as store:
        entry = await store.get(changed)
        assert entry is not None
        await store.set(changed, aiosessions.SessionEntry(**{**_fields(entry), "label": "renamed"}))
        await store.delete(deleted)
        await store.set(added, SessionEntry(session_id="new"))
    expected = dict(openclaw_sessions)
    expected[changed] = {**openclaw_sessions[changed], "label": "renamed"}
    del expected[deleted]
    expected[added] = {"sessionId": "new"}
    after = json.loads(path.read_bytes())
    assert after == expected
    assert list(after) == list(expected)  # the order of sessions is kept
    for key in keys:
        if key not in (changed, deleted):
            # Every untouched entry: the same members, in the same order, with the same values.
            assert json.dumps(after[key]) == json.dumps(openclaw_sessions[key])
    # The fixture is written as OpenClaw writes it, so the rewrite matches it byte for byte
    # (the changed entry aside: its members are written in the entry type's order).
    expected[changed] = after[changed]
    assert path.read_text("utf-8") == json.dumps(expected, indent=2, ensure_ascii=False) + "\n"


def _fields(entry: SessionEntry) -> dict[str, Any]:
    import msgspec

    return {f: getattr(entry, f) for f in entry.__struct_fields__ if getattr(entry, f) is not msgspec.UNSET}


@pytest.mark.parametrize(
    "content",
    [b"", b"   \n", b'{"agent:main:a": {"sessionId": "a"', b"[1, 2]", b'{"a": 1} trailing', b"\xff\xfe"],
    ids=["empty", "blank", "truncated", "array", "trailing", "binary"],
)
@pytest.mark.parametrize("mode", [None, "json"])
async def test_a_corrupt_legacy_file_is_an_error_and_left_alone(
    tmp_path: Path, content: bytes, mode: str | None
) -> None:
    path = tmp_path / "sessions.json"
    path.write_bytes(content)
    before = file_state(path)
    fds = open_fds()
    with pytest.raises(CorruptSessionError) as caught:
        async with aiosessions.open_store(path, mode=mode, flush_interval=3600, fsync=False):
            pytest.fail("opened a corrupt legacy file")
    assert str(path) in str(caught.value)
    assert caught.value.path == str(path)
    assert file_state(path) == before
    assert set(os.listdir(tmp_path)) <= {"sessions.json", ".sessions.lock"}
    assert open_fds() == fds, "a failed open leaked file descriptors"


async def test_a_file_corrupted_while_open_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    async with aiosessions.open_store(path, **OPTIONS) as store:
        await store.set("a", SessionEntry(session_id="a"))
        await store.flush()
    with pytest.raises(FlushError) as closing:
        async with aiosessions.open_store(path, **OPTIONS) as store:
            assert await store.get("a") == SessionEntry(session_id="a")
            path.write_bytes(b"")  # truncated to 0 bytes behind the store's back
            with pytest.raises(CorruptSessionError, match="empty"):
                await store.get("a")
            await store.set("b", SessionEntry(session_id="b"))
            with pytest.raises(FlushError) as caught:
                await store.flush()
            assert isinstance(caught.value.failures["b"], CorruptSessionError)
            assert path.read_bytes() == b""
    assert path.read_bytes() == b""
    assert "b" in closing.value.failures


async def test_mode_json_makes_a_new_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "new" / "sessions.json"
    async with aiosessions.open_store(path, **OPTIONS) as store:
        assert store.mode == "json"
        assert store.path == str(path)
        assert path.read_bytes().strip() == b"{}"
        assert [k async for k in store.keys()] == []
    with path.open(encoding="utf-8") as file:
        assert json.load(file) == {}
    assert sorted(os.listdir(path.parent)) == [".sessions.lock", "sessions.json"]
    # The next open detects it as a legacy store.
    async with aiosessions.open_store(path, flush_interval=3600, fsync=False) as store:
        assert store.mode == "json"


async def test_the_lock_file_is_the_only_extra_file(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    path.write_text("{}")
    async with aiosessions.open_store(path, flush_interval=0, fsync=True) as store:
        for i in range(10):
            await store.set(f"k{i}", SessionEntry(session_id=str(i)))
        assert sorted(os.listdir(tmp_path)) == [".sessions.lock", "sessions.json"]
    assert sorted(os.listdir(tmp_path)) == [".sessions.lock", "sessions.json"]


async def test_orphaned_tmp_files_of_the_legacy_file_are_swept(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    path.write_text("{}")
    old = tmp_path / ".sessions.json.4242-deadbeef.tmp"
    fresh = tmp_path / ".sessions.json.4243-cafebabe.tmp"
    other_store = tmp_path / ".other.json.4244-00000000.tmp"
    for tmp in (old, fresh, other_store):
        tmp.write_text('{"half": ')
    for tmp in (old, other_store):
        os.utime(tmp, (1_000_000_000, 1_000_000_000))
    async with aiosessions.open_store(path, tmp_max_age=3600, **OPTIONS) as store:
        with anyio.fail_after(30):
            while store.statistics().swept < 1:
                await anyio.sleep(0.001)
        assert store.statistics().swept == 1
    assert not old.exists()
    assert fresh.exists()
    assert other_store.exists()  # another store's file: not ours to sweep


async def test_a_file_that_disappears_is_never_recreated(tmp_path: Path) -> None:
    """Removed behind the store's back (not migrated): writes fail clearly, and keep failing."""
    path = tmp_path / "sessions.json"
    with pytest.raises(FlushError) as closing:
        async with aiosessions.open_store(path, **OPTIONS) as store:
            await store.set("a", SessionEntry(session_id="a"))
            await store.flush()
            path.unlink()
            with pytest.raises(StoreIOError, match="disappeared"):
                await store.set("b", SessionEntry(session_id="b"), durable=True)
            with pytest.raises(StoreIOError, match="disappeared"):
                await store.get("a")
            assert store.mode == "json"
            assert not path.exists()
    assert isinstance(closing.value.failures["b"], StoreIOError)
    assert sorted(os.listdir(tmp_path)) == [".sessions.lock"]


async def test_a_store_migrated_away_carries_on_in_the_directory_store(tmp_path: Path) -> None:
    """Another process migrates while this one is open in legacy mode: pending and later
    changes go to the directory store, and the legacy file is never recreated."""
    path = tmp_path / "sessions.json"
    path.write_text(json.dumps({"a": {"n": 1}, "gone": {"n": 0}}, indent=2))
    async with aiosessions.open_store(path, entry_type=dict, **OPTIONS) as store:
        # Pending, based on the file's bytes: the entry's slice of the indented file, which
        # the directory store holds compact; the write conflicts there and is applied again.
        await store.update("a", lambda e: {"n": e["n"] + 1})
        await store.delete("gone")  # pending too
        assert store.mode == "json"
        await aiosessions.migrate(path, fsync=False)
        assert not path.exists()
        # The next read of the disk finds the directory store, and carries on there.
        assert await store.contains("nope") is False
        assert store.mode == "directory"
        assert await store.get("a") == {"n": 2}  # pending, over what was migrated
        assert store.path == str(tmp_path / "sessions.d")
        await store.set("b", {"n": 3}, durable=True)
        await store.flush()
        assert sorted([key async for key in store.keys()]) == ["a", "b"]
        assert store.statistics().conflicts == 1
    assert not path.exists()
    async with aiosessions.open_store(path, entry_type=dict, **{**OPTIONS, "mode": None}) as store:
        assert store.mode == "directory"
        assert {key: entry async for key, entry in store.items()} == {"a": {"n": 2}, "b": {"n": 3}}
