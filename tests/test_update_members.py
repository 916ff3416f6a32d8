"""update_members() on entry types that do not take any JSON object, and its member splits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aiosessions
from aiosessions._members import MemberSplits, changed, current, split

pytestmark = pytest.mark.anyio


class Strict(msgspec.Struct):
    sessionId: str
    updatedAt: int


async def test_a_member_that_breaks_a_strict_type_is_refused(tmp_path: Path) -> None:
    async with aiosessions.open_store(tmp_path / "sessions.json", entry_type=Strict, fsync=False) as store:
        await store.set("k", Strict("s", 1))
        assert await store.update_members("k", ["updatedAt"], lambda m: {"updatedAt": 2}) == {"updatedAt": 2}
        with pytest.raises(aiosessions.InvalidEntryError, match="it is not a Strict"):
            await store.update_members("k", ["updatedAt"], lambda m: {"updatedAt": "soon"})
        with pytest.raises(aiosessions.InvalidEntryError, match="it is not a Strict"):
            await store.update_members("k", ["sessionId"], lambda m: {})  # a required field removed
        assert await store.get("k") == Strict("s", 2)


def test_a_split_is_reused_only_for_equal_bytes() -> None:
    splits = MemberSplits(max_keys=2)
    entry, fresh = changed(split(b'{"a":1,"big":[1,2,3]}'), ["a"], {"a": 2})
    data = entry.data
    assert data == b'{"a":2,"big":[1,2,3]}' and fresh == [b"2"]
    splits.remember("k", entry)
    assert splits.of("k", data) is entry.members
    assert splits.of("k", bytes(bytearray(data))) is entry.members  # an equal copy (a backend's read)
    assert splits.of("k", b'{"a":3,"big":[]}') is not entry.members
    splits.remember("x", changed(None, ["a"], {"a": 1})[0])
    splits.remember("y", changed(None, ["a"], {"a": 1})[0])  # over max_keys: the least recently used goes
    assert splits.of("k", data) is not entry.members


def test_a_large_entry_is_joined_once_and_only_when_its_bytes_are_needed() -> None:
    entry, _ = changed(split(msgspec.json.encode({"a": 1, "big": "x" * 20_000})), ["a"], {"a": 2})
    assert entry.joined is None and entry.size == len(msgspec.json.encode({"a": 2, "big": "x" * 20_000}))
    splits = MemberSplits()
    splits.remember("k", entry)
    assert splits.of("k", msgspec.json.encode({"a": 2, "big": "x" * 20_000})) is not entry.members  # unjoined
    data = entry.data
    assert entry.data is data and entry.joined is data and len(data) == entry.size
    assert splits.of("k", data) is entry.members


_names = st.text(max_size=10)
_values = st.one_of(st.none(), st.integers(), st.text(max_size=20), st.lists(st.integers(), max_size=3))


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(_names, _values, max_size=8),
    st.dictionaries(_names, _values, max_size=3),
    st.sampled_from([0, 20_000]),
)
def test_a_changed_entry_is_what_the_encoder_writes_small_or_large(
    entry: dict[str, Any], new: dict[str, Any], padding: int
) -> None:
    """Large entries are joined from their pieces, small ones by the encoder: the same bytes
    either way (names needing escapes included), equal to encoding the changed entry."""
    if padding:
        entry = {**entry, '\u00e9"pad': "x" * padding}
    names = [*new, "gone"]
    changed_entry, fresh = changed(split(msgspec.json.encode(entry)), names, new)
    size, data, joined = changed_entry.size, changed_entry.data, changed_entry.members
    expected = {name: value for name, value in entry.items() if name != "gone"}
    expected.update(new)
    assert data == msgspec.json.encode(expected) and size == len(data)
    assert msgspec.json.decode(data) == expected
    assert fresh == [msgspec.json.encode(value) for value in new.values()]
    assert list(joined) == list(expected)


def _spy(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, seen: Callable[[Any], object]) -> None:
    """Replace the one-argument function ``module.name`` by one that shows ``seen`` its argument first."""
    real = getattr(module, name)

    def spy(argument: Any) -> Any:
        seen(argument)
        return real(argument)

    monkeypatch.setattr(module, name, spy)


async def _large_sessions_stored(path: Path, count: int, *, seed: int) -> dict[str, Any]:
    """``count`` sessions of 121 KB, written to a new store at ``path`` (stored split)."""
    from aiosessions._bench import sized_sessions

    sessions = sized_sessions(count, 121_000, seed=seed)
    async with aiosessions.open_store(path, entry_type=dict, fsync=False) as store:
        for key, entry in sessions.items():
            await store.set(key, entry)
    return sessions


def test_current_members() -> None:
    members: Any = split(b'{"a":{"b":[1]},"c":null}')
    assert current(members, ["a", "c", "missing"]) == {"a": {"b": [1]}, "c": None}
    assert current(None, ["a"]) is None


async def test_a_split_entry_is_changed_by_member_without_a_scan_of_the_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session stored split (format version 2) and read by a fresh store: update_members
    starts from the members the backend knows (meta.json and blobs), not from a scan of the
    121 KB entry, and changes it as a scan would."""
    from aiosessions import _members

    path = tmp_path / "sessions.json"
    sessions = await _large_sessions_stored(path, 3, seed=8)
    scanned: list[int] = []

    def counting_split(data: bytes) -> Any:
        scanned.append(len(data))
        return split(data)

    monkeypatch.setattr(_members, "split", counting_split)
    async with aiosessions.open_store(path, entry_type=dict, fsync=False, flush_interval=3600) as store:
        for n, (key, entry) in enumerate(sessions.items()):
            assert await store.get(key) == entry
            new = {"updatedAt": n, "totalTokens": 7}
            changed_to = await store.update_members(key, ["updatedAt", "totalTokens"], lambda m, new=new: new)
            assert changed_to == new
            entry.update(new)
            assert await store.get(key) == entry
            assert list(await store.get(key)) == list(entry)  # every member keeps its place
        # Written by set() (not by member) and flushed: the backend found the members as it wrote.
        for n, (key, entry) in enumerate(sessions.items()):
            entry["label"] = f"set {n}"
            await store.set(key, entry)
        await store.flush()
        for key, entry in sessions.items():
            await store.update_members(key, ["totalTokens"], lambda m: {"totalTokens": 8})
            entry["totalTokens"] = 8
            assert await store.get(key) == entry
    assert scanned == []
    async with aiosessions.open_store(path, entry_type=dict, fsync=False) as store:
        assert {key: await store.get(key) for key in sessions} == sessions


async def test_the_backend_knows_the_members_only_of_the_entry_it_last_read_or_wrote(
    tmp_path: Path,
) -> None:
    from aiosessions._bench import sized_sessions
    from aiosessions.backends import DirectoryBackend
    from aiosessions.backends._base import Write

    [(key, entry)] = sized_sessions(1, 121_000, seed=9).items()
    small_key, small = "small", {"a": 1}
    backend = DirectoryBackend(tmp_path / "sessions.d")
    await backend.open()
    try:
        data = msgspec.json.encode(entry)
        small_data = msgspec.json.encode(small)
        await backend.write_batch([Write(key, data), Write(small_key, small_data)], durable=False)
        assert backend.members_of(key, data) == split(data)
        assert list(backend.members_of(key, data) or ()) == list(entry)
        assert backend.members_of(key, bytes(bytearray(data))) == split(data)  # an equal copy
        assert backend.members_of(key, data.replace(b'"updatedAt":', b'"updatedAt": ')) is None
        assert backend.members_of(small_key, small_data) is None  # stored whole
        # Another writer (another backend on the same folder) changes the entry: once read
        # here, the members are those of the new bytes.
        other = DirectoryBackend(tmp_path / "sessions.d")
        await other.open()
        try:
            changed_data = msgspec.json.encode({**entry, "updatedAt": 1})
            await other.write_batch([Write(key, changed_data)], durable=False)
        finally:
            await other.aclose()
        assert await backend.read(key) == changed_data
        assert backend.members_of(key, data) is None
        assert backend.members_of(key, changed_data) == split(changed_data)
        await backend.write_batch([Write(key, None)], durable=False)
        assert backend.members_of(key, changed_data) is None
    finally:
        await backend.aclose()


@pytest.mark.parametrize("fsync", [False, True])
async def test_the_writer_takes_the_members_it_is_handed_instead_of_scanning_and_hashing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: bool
) -> None:
    """A change by member of a session stored split reaches the writer with its members: the
    121 KB entry is not scanned again there, and the large members it left alone are neither
    compared nor hashed (they are the very slices last stored). What lands is the same."""
    import hashlib

    from aiosessions import _parts

    path = tmp_path / "sessions.json"
    sessions = await _large_sessions_stored(path, 4, seed=10)
    scanned: list[int] = []
    hashed: list[int] = []
    _spy(monkeypatch, _parts, "members", lambda data: scanned.append(len(data)))
    monkeypatch.setattr(hashlib, "sha256", lambda b: hashed.append(len(b)) or hashlib.new("sha256", b))
    async with aiosessions.open_store(path, entry_type=dict, fsync=fsync) as store:
        for n, (key, entry) in enumerate(sessions.items()):
            await store.get(key)  # reading hashes the blobs read from disk: not counted below
            scanned.clear()
            hashed.clear()
            for turn in range(3):
                await store.update_members(key, ["updatedAt"], lambda m, t=turn: {"updatedAt": t})
                await store.flush()
            entry["updatedAt"] = 2
            assert hashed == []
            assert [size for size in scanned if size >= _parts.ENTRY_MIN] == [], n
    async with aiosessions.open_store(path, entry_type=dict) as store:
        assert {key: await store.get(key) for key in sessions} == sessions


async def test_changes_by_member_before_a_write_join_the_entry_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pending change by member is kept as members: further changes to it, and the write
    of them all, copy the 121 KB entry once (not once per change), and what lands is right."""
    from aiosessions import _parts

    path = tmp_path / "sessions.json"
    sessions = await _large_sessions_stored(path, 2, seed=11)
    joins: list[int] = []
    _spy(monkeypatch, _parts, "encode_members", lambda slices: joins.append(len(slices)))
    async with aiosessions.open_store(path, entry_type=dict, fsync=False, flush_interval=3600) as store:
        (key, entry), (read_key, read_entry) = sessions.items()
        await store.get(key)
        await store.get(read_key)
        joins.clear()  # reading a session stored split joins its meta.json and blobs
        for turn in range(5):
            await store.update_members(key, ["updatedAt"], lambda m, t=turn: {"updatedAt": t})
            await store.update_members(read_key, ["updatedAt"], lambda m, t=turn: {"updatedAt": t})
        assert joins == []
        entry["updatedAt"] = read_entry["updatedAt"] = 4
        assert await store.get(read_key) == read_entry  # a reader joins it, once for the write too
        assert len(joins) == 1
        await store.flush()
        assert len(joins) == 2
        assert store.statistics().pending_bytes == 0
        assert await store.get(key) == entry
    async with aiosessions.open_store(path, entry_type=dict, fsync=False) as store:
        assert {key: await store.get(key) for key in sessions} == sessions


async def test_a_batch_of_changes_by_member_is_joined_a_slice_of_the_loop_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flusher joins the large entries a batch writes with checkpoints in between:
    another task runs between joins, not after all of them."""
    from aiosessions import _parts, _writebehind

    path = tmp_path / "sessions.json"
    sessions = await _large_sessions_stored(path, 6, seed=12)
    events: list[str] = []
    _spy(monkeypatch, _parts, "encode_members", lambda slices: events.append("join"))
    monkeypatch.setattr(_writebehind, "_JOIN_SLICE", 1)  # a checkpoint after every entry
    async with aiosessions.open_store(path, entry_type=dict, fsync=False, flush_interval=3600) as store:
        for key in sessions:
            await store.update_members(key, ["updatedAt"], lambda m: {"updatedAt": 1})
        events.clear()  # reading a session stored split joins its meta.json and blobs
        stop = False

        async def ticker() -> None:
            while not stop:
                events.append("tick")
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            await store.flush()
            stop = True
        joins = [n for n, event in enumerate(events) if event == "join"]
        assert len(joins) == len(sessions)
        # Each join in a turn of its own: the ticker ticks in every turn between the first
        # and the last (trio shuffles the order of the tasks within a turn).
        assert events[joins[0] : joins[-1]].count("tick") >= len(joins) - 2, events
    async with aiosessions.open_store(path, entry_type=dict, fsync=False) as store:
        assert [(await store.get(key))["updatedAt"] for key in sessions] == [1] * len(sessions)
