"""The store contract: every test here runs once per backend (the ``mode`` fixture).

A new backend is one fixture parameter away from this whole suite. Tests open the
store inside their body through ``open_test_store`` (write-behind on, fsync off,
no timer flushes), so what is on disk changes only at an explicit ``flush()``.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

import aiosessions
from aiosessions import (
    CorruptSessionError,
    SessionEntry,
    StoreClosedError,
    StoreFormatError,
    StoreStatistics,
)
from aiosessions._keys import decode_name
from aiosessions._layout import encode_format

pytestmark = pytest.mark.asyncio

Opener = Callable[..., Any]
KEY = "agent:main:telegram:direct:james"


class Note(msgspec.Struct):
    """A user's own entry type: a plain msgspec Struct (msgspec's rules apply)."""

    text: str
    count: int = 0
    tags: list[str] = []


def on_disk(store_path: Path, mode: str) -> dict[str, Any]:
    """Every stored entry as JSON, read straight from the files (not through the store)."""
    if mode == "json":
        data: dict[str, Any] = json.loads(store_path.read_text("utf-8"))
        return data
    folder = store_path.with_name(store_path.stem + ".d")
    found: dict[str, Any] = {}
    for meta in folder.glob("*/meta.json"):
        name = meta.parent.name
        key_file = meta.parent / "key"
        key = key_file.read_text("utf-8") if key_file.exists() else decode_name(name)
        found[key] = json.loads(meta.read_bytes())
    return found


async def all_keys(store: aiosessions.SessionStore[Any]) -> list[str]:
    return sorted([key async for key in store.keys()])


async def all_items(store: aiosessions.SessionStore[Any], **options: Any) -> dict[str, Any]:
    return {key: entry async for key, entry in store.items(**options)}


# -- get / set / delete / contains / updated_at -------------------------------------------


async def test_get_missing_is_none(open_test_store: Opener) -> None:
    async with open_test_store() as store:
        assert await store.get(KEY) is None
        assert await store.updated_at(KEY) is None
        assert await store.contains(KEY) is False
        assert await store.delete(KEY) is False
        assert await all_keys(store) == []


async def test_set_then_get_returns_an_equal_entry(
    open_test_store: Opener, store_path: Path, mode: str
) -> None:
    entry = SessionEntry(session_id="s1", updated_at=1_700_000_000_000, channel="telegram", label=None)
    async with open_test_store() as store:
        await store.set(KEY, entry)
        assert await store.get(KEY) == entry
        assert await store.contains(KEY) is True
        assert await store.updated_at(KEY) == 1_700_000_000_000
        await store.flush()
    # Presence survives: label=None is written as null, unset fields are absent.
    assert on_disk(store_path, mode)[KEY] == {
        "sessionId": "s1",
        "updatedAt": 1_700_000_000_000,
        "channel": "telegram",
        "label": None,
    }
    async with open_test_store() as store:
        assert await store.get(KEY) == entry


async def test_set_overwrites(open_test_store: Opener) -> None:
    async with open_test_store() as store:
        await store.set(KEY, SessionEntry(session_id="old", updated_at=1))
        await store.flush()
        await store.set(KEY, SessionEntry(session_id="new"))
        assert await store.get(KEY) == SessionEntry(session_id="new")
        await store.flush()
        # The second set replaced the whole entry: updatedAt is gone.
        assert await store.updated_at(KEY) is None
    async with open_test_store() as store:
        assert await store.get(KEY) == SessionEntry(session_id="new")


async def test_delete_returns_whether_it_existed(
    open_test_store: Opener, store_path: Path, mode: str
) -> None:
    async with open_test_store() as store:
        await store.set("a", SessionEntry(session_id="a"))
        await store.set("b", SessionEntry(session_id="b"))
        await store.flush()
        assert await store.delete("a") is True
        assert await store.delete("a") is False
        assert await store.get("a") is None
        assert await store.contains("a") is False
        assert await store.updated_at("a") is None
        assert "a" in on_disk(store_path, mode)  # not flushed yet
        await store.flush()
        assert on_disk(store_path, mode) == {"b": {"sessionId": "b"}}


async def test_delete_of_a_never_flushed_key(open_test_store: Opener, store_path: Path, mode: str) -> None:
    async with open_test_store() as store:
        await store.set("fresh", SessionEntry(session_id="x"))
        assert await store.delete("fresh") is True
        assert await store.delete("fresh") is False
        await store.flush()
        assert await store.get("fresh") is None
    assert on_disk(store_path, mode) == {}


async def test_updated_at_reads_only_the_recency_field(open_test_store: Opener, plant: Any) -> None:
    async with open_test_store(entry_type=dict) as store:
        await store.set("int", {"updatedAt": 42, "other": [1, 2]})
        await store.set("none", {"sessionId": "no recency"})
        await store.set("str", {"updatedAt": "1700000000000"})
        await store.set("bool", {"updatedAt": True})
        await store.flush()
        assert await store.updated_at("int") == 42
        assert await store.updated_at("none") is None
        assert await store.updated_at("str") is None
        assert await store.updated_at("bool") is None
        assert await store.updated_at("missing") is None
    # An oddly typed member elsewhere does not stop updated_at (nor get) from working.
    plant("odd", b'{"updatedAt": 7, "inputTokens": "many"}')
    async with open_test_store() as store:
        assert await store.updated_at("odd") == 7
        entry = await store.get("odd")
        assert entry is not None and entry.updated_at == 7 and entry.input_tokens is msgspec.UNSET


# -- update ------------------------------------------------------------------------------


async def test_update_returns_the_result_of_fn(open_test_store: Opener) -> None:
    seen: list[SessionEntry | None] = []

    def bump(entry: SessionEntry | None) -> SessionEntry:
        seen.append(entry)
        count = 0 if entry is None else entry.extra.get("count", 0)
        return SessionEntry(session_id="s", updated_at=count + 1, extra={"count": count + 1})

    async with open_test_store() as store:
        first = await store.update(KEY, bump)
        assert first == SessionEntry(session_id="s", updated_at=1, extra={"count": 1})
        await store.flush()
        second = await store.update(KEY, bump)
        assert second is not None and second.updated_at == 2
        assert await store.get(KEY) == second
        assert seen == [None, first]
    async with open_test_store() as store:
        assert await store.get(KEY) == second


async def test_update_returning_none_deletes(open_test_store: Opener, store_path: Path, mode: str) -> None:
    async with open_test_store() as store:
        await store.set(KEY, SessionEntry(session_id="s"))
        await store.flush()
        assert await store.update(KEY, lambda entry: None) is None
        assert await store.get(KEY) is None
        assert await store.contains(KEY) is False
        await store.flush()
        assert KEY not in on_disk(store_path, mode)
        # On an absent key, None stays None and nothing is written.
        assert await store.update("absent", lambda entry: None) is None
        await store.flush()
        assert on_disk(store_path, mode) == {}


@pytest.mark.parametrize("flush_interval", [3600, 0], ids=["write-behind", "write-through"])
async def test_update_is_atomic_per_key_under_200_tasks(
    open_test_store: Opener, store_path: Path, mode: str, flush_interval: float
) -> None:
    """200 concurrent increments per key end exact, with flushes racing them.

    With write-through every update reads the entry from disk (an await inside the
    key's critical section), so an unlocked update would lose increments.
    """
    keys = [f"counter:{i}" for i in range(3)]

    def increment(entry: dict[str, Any] | None) -> dict[str, Any]:
        return {"n": (0 if entry is None else entry["n"]) + 1}

    async with open_test_store(entry_type=dict, flush_interval=flush_interval) as store:

        async def worker(key: str) -> None:
            await store.update(key, increment)

        async def flusher(done: anyio.Event) -> None:
            while not done.is_set():
                await store.flush()
                await anyio.sleep(0)

        done = anyio.Event()
        async with anyio.create_task_group() as outer:
            outer.start_soon(flusher, done)
            async with anyio.create_task_group() as tg:
                for _ in range(200):
                    for key in keys:
                        tg.start_soon(worker, key)
            done.set()
        for key in keys:
            assert await store.get(key) == {"n": 200}
        await store.flush()
        assert len(store._locks) == 0
    assert on_disk(store_path, mode) == {key: {"n": 200} for key in keys}


# -- read-your-writes, keys() and items() --------------------------------------------------


async def test_reads_see_own_writes_before_flush(
    open_test_store: Opener, store_path: Path, mode: str
) -> None:
    async with open_test_store() as store:
        await store.set("a", SessionEntry(session_id="a1", updated_at=1))
        await store.flush()
        await store.set("a", SessionEntry(session_id="a2", updated_at=2))
        await store.set("b", SessionEntry(session_id="b1"))
        await store.update("b", lambda e: SessionEntry(session_id="b2") if e else None)
        assert store.statistics().pending == 2
        # Nothing of it is on disk yet ...
        assert on_disk(store_path, mode) == {"a": {"sessionId": "a1", "updatedAt": 1}}
        # ... yet every read of this process sees it.
        assert await store.get("a") == SessionEntry(session_id="a2", updated_at=2)
        assert await store.updated_at("a") == 2
        assert await store.get("b") == SessionEntry(session_id="b2")
        assert await store.contains("b") is True
        assert await all_keys(store) == ["a", "b"]
        assert await all_items(store) == {
            "a": SessionEntry(session_id="a2", updated_at=2),
            "b": SessionEntry(session_id="b2"),
        }


async def test_keys_and_items_merge_pending_and_stored(open_test_store: Opener) -> None:
    async with open_test_store() as store:
        for name in ("keep", "change", "drop"):
            await store.set(name, SessionEntry(session_id=f"{name}-stored"))
        await store.flush()
        await store.delete("drop")  # pending delete: hidden
        await store.set("change", SessionEntry(session_id="change-pending"))  # pending change
        await store.set("new", SessionEntry(session_id="new-pending"))  # pending new key: shown
        await store.set("ghost", SessionEntry(session_id="ghost"))
        await store.delete("ghost")  # new and deleted before any flush: never shown
        expected = {
            "keep": SessionEntry(session_id="keep-stored"),
            "change": SessionEntry(session_id="change-pending"),
            "new": SessionEntry(session_id="new-pending"),
        }
        assert await all_keys(store) == sorted(expected)
        assert await all_items(store) == expected
        await store.flush()
        assert await all_keys(store) == sorted(expected)
        assert await all_items(store) == expected
    async with open_test_store() as store:
        assert await all_items(store) == expected


async def test_keys_lists_each_key_once(open_test_store: Opener) -> None:
    """A key both stored and pending is listed once, over several listing chunks."""
    names = [f"agent:main:chat:{i}" for i in range(1300)]
    async with open_test_store(entry_type=dict) as store:
        for name in names:
            await store.set(name, {"i": name})
        await store.flush()
        for name in names[::3]:
            await store.set(name, {"i": name, "again": True})
        listed = [key async for key in store.keys()]
        assert sorted(listed) == sorted(names)
        items = [item async for item in store.items()]
        assert len(items) == len(names)
        assert all(entry["i"] == key for key, entry in items)
        assert sum(1 for _, entry in items if entry.get("again")) == len(names[::3])


async def test_items_skip_corrupt(open_test_store: Opener, plant: Any) -> None:
    async with open_test_store() as store:
        await store.set("good", SessionEntry(session_id="good"))
        await store.set("bad", SessionEntry(session_id="bad"))
        await store.flush()
    plant("bad", b"[1, 2, 3]")  # JSON, but not an entry
    async with open_test_store() as store:
        assert await all_keys(store) == ["bad", "good"]
        assert await all_items(store, skip_corrupt=True) == {"good": SessionEntry(session_id="good")}
        with pytest.raises(CorruptSessionError) as caught:
            await all_items(store)
        assert caught.value.key == "bad"
        # A pending change replaces the corrupt entry for this process's reads.
        await store.set("bad", SessionEntry(session_id="fixed"))
        assert await all_items(store) == {
            "good": SessionEntry(session_id="good"),
            "bad": SessionEntry(session_id="fixed"),
        }


# -- entry types -------------------------------------------------------------------------


async def test_dict_entries(open_test_store: Opener, store_path: Path, mode: str) -> None:
    value = {"sessionId": "d", "updatedAt": 5, "nested": {"a": [1, None, "x"]}, "flag": False}
    async with open_test_store(entry_type=dict) as store:
        assert store.entry_type is dict
        await store.set(KEY, value)
        got = await store.get(KEY)
        assert got == value and isinstance(got, dict)
        assert await store.updated_at(KEY) == 5
        assert await store.update(KEY, lambda e: {**e, "flag": True}) == {**value, "flag": True}
        await store.flush()
    assert on_disk(store_path, mode) == {KEY: {**value, "flag": True}}


async def test_custom_struct_entries(open_test_store: Opener, store_path: Path, mode: str) -> None:
    async with open_test_store(entry_type=Note) as store:
        assert store.entry_type is Note
        await store.set("n1", Note(text="hello", tags=["a"]))
        assert await store.get("n1") == Note(text="hello", tags=["a"])
        updated = await store.update("n1", lambda n: msgspec.structs.replace(n, count=n.count + 1))
        assert updated == Note(text="hello", count=1, tags=["a"])
        await store.flush()
        assert [item async for item in store.items()] == [("n1", updated)]
    assert on_disk(store_path, mode) == {"n1": {"text": "hello", "count": 1, "tags": ["a"]}}
    async with open_test_store(entry_type=Note) as store:
        assert await store.get("n1") == updated


# -- statistics, flush, aclose --------------------------------------------------------------


async def test_statistics(open_test_store: Opener) -> None:
    async with open_test_store() as store:
        stats = store.statistics()
        assert isinstance(stats, StoreStatistics)
        assert (stats.pending, stats.pending_bytes, stats.writes, stats.coalesced) == (0, 0, 0, 0)
        assert (stats.failures, stats.conflicts, stats.oldest_pending_age) == (0, 0, 0.0)
        with pytest.raises(dataclasses.FrozenInstanceError):
            stats.pending = 5  # type: ignore[misc]

        for i in range(3):
            await store.set("a", SessionEntry(session_id=f"a{i}"))
        await store.set("b", SessionEntry(session_id="b"))
        stats = store.statistics()
        assert stats.pending == 2
        assert stats.coalesced == 2  # two of the three changes to "a" will never be written
        assert stats.pending_bytes == len(b'{"sessionId":"a2"}') + len(b'{"sessionId":"b"}')
        assert stats.writes == 0 and stats.flushes == 0
        assert stats.oldest_pending_age >= 0.0

        await store.flush()
        stats = store.statistics()
        assert (stats.pending, stats.pending_bytes, stats.writes, stats.coalesced) == (0, 0, 2, 2)
        assert stats.flushes >= 1 and stats.failures == 0 and stats.oldest_pending_age == 0.0
        # Flushing with nothing pending writes nothing.
        await store.flush()
        assert store.statistics().writes == 2


async def test_flush_puts_changes_on_disk(open_test_store: Opener, store_path: Path, mode: str) -> None:
    async with open_test_store() as store:
        await store.set("a", SessionEntry(session_id="a"))
        assert "a" not in on_disk(store_path, mode)
        await store.flush()
        assert on_disk(store_path, mode) == {"a": {"sessionId": "a"}}


async def test_aclose_flushes_and_is_idempotent(open_test_store: Opener, store_path: Path, mode: str) -> None:
    async with open_test_store() as store:
        await store.set("a", SessionEntry(session_id="a"))
        await store.aclose()
        assert store.closed
        assert on_disk(store_path, mode) == {"a": {"sessionId": "a"}}
        await store.aclose()  # again: a no-op
    await store.aclose()  # and after the context left
    # Leaving the block flushes too.
    async with open_test_store() as store:
        await store.set("b", SessionEntry(session_id="b"))
    assert on_disk(store_path, mode) == {"a": {"sessionId": "a"}, "b": {"sessionId": "b"}}


async def test_closed_store_raises_store_closed_error(open_test_store: Opener) -> None:
    async with open_test_store() as store:
        await store.set("a", SessionEntry(session_id="a"))
    calls: list[Callable[[], Any]] = [
        lambda: store.get("a"),
        lambda: store.set("a", SessionEntry(session_id="x")),
        lambda: store.update("a", lambda e: e),
        lambda: store.delete("a"),
        lambda: store.updated_at("a"),
        lambda: store.contains("a"),
        lambda: store.flush(),
        lambda: all_keys(store),
        lambda: all_items(store),
    ]
    for call in calls:
        with pytest.raises(StoreClosedError, match="closed"):
            await call()
    assert "closed" in repr(store)


async def test_open_store_must_be_used_with_async_with(store_path: Path) -> None:
    with pytest.raises(TypeError, match="async with"):
        await aiosessions.open_store(store_path)  # type: ignore[misc]
    assert not store_path.exists()
    assert list(store_path.parent.iterdir()) == []


async def test_closed_store_does_not_warn(open_test_store: Opener) -> None:
    async with open_test_store() as store:
        await store.set("a", SessionEntry(session_id="a"))
        with warnings.catch_warnings(record=True) as open_warnings:
            warnings.simplefilter("always")
            store.__del__()  # what the garbage collector would do to an open store
        assert [w.category for w in open_warnings] == [ResourceWarning]
        assert store.path in str(open_warnings[0].message)
        del open_warnings  # its record refers to the store (the warning's source)
    where, collected = store.path, weakref.ref(store)
    with warnings.catch_warnings(record=True) as closed_warnings:
        warnings.simplefilter("always")
        del store
        gc.collect()
    assert collected() is None, "the closed store was not garbage collected"
    assert [str(w.message) for w in closed_warnings if where in str(w.message)] == []


# -- modes and paths -----------------------------------------------------------------------


async def test_store_mode_and_path(open_test_store: Opener, store_path: Path, mode: str) -> None:
    async with open_test_store() as store:
        assert store.mode == mode
        if mode == "directory":
            assert store.path == str(store_path.with_name("sessions.d"))
        else:
            assert store.path == str(store_path)
    # Reopened without a mode, each store is detected as what it is.
    async with aiosessions.open_store(store_path, flush_interval=3600, fsync=False) as store:
        assert store.mode == mode


async def test_a_new_store_defaults_to_directory_mode(tmp_path: Path) -> None:
    path = tmp_path / "state" / "sessions.json"
    async with aiosessions.open_store(path, fsync=False) as store:
        assert store.mode == "directory"
        assert store.path == str(tmp_path / "state" / "sessions.d")
    assert not path.exists()
    assert (tmp_path / "state" / "sessions.d" / "FORMAT").read_bytes() == encode_format()


async def test_an_existing_legacy_file_opens_in_json_mode(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    path.write_text(json.dumps({KEY: {"sessionId": "legacy"}}, indent=2), "utf-8")
    async with aiosessions.open_store(path, fsync=False) as store:
        assert store.mode == "json"
        assert await store.get(KEY) == SessionEntry(session_id="legacy")
    assert not (tmp_path / "sessions.d").exists()


async def test_mode_json_on_a_directory_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    async with aiosessions.open_store(path, fsync=False) as store:
        await store.set(KEY, SessionEntry(session_id="d"))
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(StoreFormatError, match="migrated"):
        async with aiosessions.open_store(path, mode="json"):
            pytest.fail("opened a directory store as a legacy file")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no sessions.json appeared


async def test_mode_directory_on_a_legacy_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    path.write_text("{}", "utf-8")
    with pytest.raises(StoreFormatError, match="migrate"):
        async with aiosessions.open_store(path, mode="directory"):
            pytest.fail("opened a legacy file as a directory store")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sessions.json"]


async def test_the_store_can_be_named_by_its_folder(tmp_path: Path) -> None:
    async with aiosessions.open_store(tmp_path / "sessions.json", fsync=False) as store:
        await store.set(KEY, SessionEntry(session_id="d"))
    async with aiosessions.open_store(tmp_path / "sessions.d", fsync=False) as store:
        assert store.mode == "directory"
        assert await store.get(KEY) == SessionEntry(session_id="d")


# -- per-key locks -----------------------------------------------------------------------


async def test_lock_table_is_empty_after_100k_distinct_keys(
    open_test_store: Opener, store_path: Path, mode: str
) -> None:
    """Per-key locks exist only while used: 100,000 keys later the table is empty.

    All but 1,000 of the keys are deleted again before the one flush, which keeps
    the test about locks rather than about writing 100,000 files.
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
    assert on_disk(store_path, mode) == expected


class _TurnCounter:
    """Counts the turns a busy task gets while the body of ``async with`` runs."""

    def __init__(self) -> None:
        self.turns = 0

    async def _spin(self) -> None:
        while True:
            self.turns += 1
            await anyio.sleep(0)

    async def __aenter__(self) -> _TurnCounter:
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        self._group.start_soon(self._spin)
        await anyio.sleep(0)
        self.turns = 0
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self._group.cancel_scope.cancel()
        await self._group.__aexit__(None, None, None)


async def test_writes_are_checkpoints_so_a_busy_writer_cannot_starve_other_tasks(
    open_test_store: Callable[..., Any],
) -> None:
    """A write whose entry is pending touches no disk; it must still let other tasks run.

    The per-key lock's acquire is the scheduling point: a lock that skipped it when
    free (anyio's fast_acquire) would let this loop run to the end before the other
    task gets a single turn.
    """
    async with open_test_store(entry_type=dict) as store:
        await store.set("k", {"n": 0})
        async with _TurnCounter() as other:
            for _ in range(50):
                await store.update("k", lambda e: {"n": e["n"] + 1})
            assert other.turns >= 25, "update() never yielded to the other task"
        assert (await store.get("k")) == {"n": 50}


async def test_reads_are_checkpoints_even_when_the_entry_is_in_memory(
    open_test_store: Callable[..., Any],
) -> None:
    """get(), updated_at() and contains() of a pending (in-memory) entry still let other tasks run."""
    async with open_test_store(entry_type=dict) as store:
        await store.set("k", {"updatedAt": 1})
        async with _TurnCounter() as other:
            for _ in range(20):
                await store.get("k")
                await store.updated_at("k")
                await store.contains("k")
            assert other.turns >= 30, "reads never yielded to the other task"
