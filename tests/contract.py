"""The backend contract: every test a backend must pass, on asyncio and on trio.

A backend runs the whole suite by subclassing :class:`BackendContract` in a test
module and providing one fixture, ``backend_factory``: a callable that returns a
new, unopened backend object for the test's own (initially empty) store. Every
call returns another object for the *same* store, the way another process would
open it; the suite uses those second objects to play the other writer (``plant``)
and to read what is stored (``stored``) without going through the store under
test. A new backend writes::

    # tests/test_contract_mine.py
    import pytest

    from aiosessions.backends import MyBackend
    from tests.contract import BackendContract


    class TestMyBackendContract(BackendContract):
        @pytest.fixture
        def backend_factory(self, tmp_path):
            return lambda: MyBackend(tmp_path / "store")  # the fixture cleans up after itself

One more fixture is optional: ``fail_writes``, to make the writes of one key fail
as a broken disk or server would (without it, the two tests that need it fail and
say so). A backend whose nature makes a promise different (the legacy JSON file is
rewritten whole, so one failing write fails its whole batch) overrides that test
with its own, documented version. Tests of the backend's own storage (paths,
files, server keys) belong in its own module, beside its subclass of
:class:`BackendContract`.

Stores are opened inside each test body through ``open_test_store(**options)``,
which is ``open_store(backend_factory(), ...)`` with write-behind on, fsync off and
no timer flushes, so what is stored changes only at an explicit ``flush()`` or a
``durable=True`` call.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import random
import warnings
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
import pytest

import aiosessions
from aiosessions import (
    CorruptSessionError,
    FlushError,
    SessionEntry,
    SessionStoreError,
    StoreClosedError,
    StoreStatistics,
)
from aiosessions.backends import Backend, BatchResult, Write

__all__ = [
    "KEY",
    "BackendContract",
    "BackendFactory",
    "Note",
    "Opener",
    "Plant",
    "Stored",
    "all_items",
    "all_keys",
    "cas",
    "check_listings",
    "opened",
    "values",
    "write",
]

Opener = Callable[..., Any]
BackendFactory = Callable[[], Backend]
Plant = Callable[[str, "bytes | None"], Awaitable[None]]
Stored = Callable[[], Awaitable[dict[str, Any]]]
KEY = "agent:main:telegram:direct:james"


class Note(msgspec.Struct):
    """A user's own entry type: a plain msgspec Struct (msgspec's rules apply)."""

    text: str
    count: int = 0
    tags: list[str] = []


async def all_keys(store: aiosessions.SessionStore[Any]) -> list[str]:
    return sorted([key async for key in store.keys()])


async def all_items(store: aiosessions.SessionStore[Any], **options: Any) -> dict[str, Any]:
    return {key: entry async for key, entry in store.items(**options)}


@asynccontextmanager
async def opened(backend_factory: BackendFactory) -> AsyncIterator[Backend]:
    """A second backend object of the test's store, opened: another process's view of it."""
    backend = backend_factory()
    await backend.open()
    try:
        yield backend
    finally:
        await backend.aclose()


async def listed(backend: Backend, prefix: str = "") -> list[str]:
    """Every key ``backend.key_chunks(prefix)`` yields, in order, duplicates kept."""
    keys: list[str] = []
    async for chunk in backend.key_chunks(prefix):
        assert isinstance(chunk, list) and all(isinstance(key, str) for key in chunk), chunk
        keys += chunk
    return keys


async def write(backend: Backend, *writes: Write, durable: bool = False) -> BatchResult:
    result = await backend.write_batch(list(writes), durable=durable)
    assert isinstance(result, BatchResult)
    # Each write has exactly one outcome.
    outcomes = [*result.landed, *result.conflicts, *result.failed, *result.unsynced]
    assert sorted(outcomes) == sorted(w.key for w in writes), result
    return result


def values(data: bytes | BaseException | None) -> Any:
    """The JSON value of stored bytes (None: absent); a read error is raised."""
    if isinstance(data, BaseException):
        raise data
    return None if data is None else json.loads(data)


def cas(key: str, data: bytes | None, expected: bytes | None) -> Write:
    """A compare-and-swap write: lands only if ``key`` still holds ``expected`` (None: absent)."""
    return Write(key, data, expected, blind=False)


class Watched:
    """A backend object wrapped to see what the store asks of it, and to hold its batches.

    ``hold()`` makes the next batches wait (``entered`` is set once one is waiting)
    until ``release()``: a write in flight, as long as the test needs.
    """

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.batches: list[tuple[list[Write], bool]] = []  # (writes, durable) of each batch
        self.acknowledged: list[BatchResult] = []
        self._gate: anyio.Event | None = None
        self.entered = anyio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def hold(self) -> None:
        self._gate, self.entered = anyio.Event(), anyio.Event()

    def release(self) -> None:
        assert self._gate is not None
        self._gate.set()

    async def write_batch(self, writes: list[Write], *, durable: bool) -> BatchResult:
        self.batches.append((list(writes), durable))
        if self._gate is not None:
            self.entered.set()
            await self._gate.wait()
        result = await self.inner.write_batch(writes, durable=durable)
        self.acknowledged.append(result)
        return result


async def turns(count: int = 50) -> None:
    """Let every other task run for a while."""
    for _ in range(count):
        await anyio.sleep(0)


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


class BackendContract:
    """What every backend guarantees, tested through the store and through the protocol."""

    pytestmark = pytest.mark.anyio

    # -- the fixtures ------------------------------------------------------------------

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> str:
        """Every test runs on both event loops (named, so a missing trio fails, not skips)."""
        return str(request.param)

    @pytest.fixture
    def backend_factory(self) -> BackendFactory:
        """Provided by the backend's test module: see this module's docstring."""
        pytest.fail(f"{type(self).__name__} must provide the backend_factory fixture")

    @pytest.fixture
    def open_test_store(self, backend_factory: BackendFactory) -> Opener:
        """``open_test_store(**options)``: a store over a new backend object of the test's
        store: write-behind, fsync off, no timer flushes; options override."""

        def opener(**options: Any) -> Any:
            settings: dict[str, Any] = {"flush_interval": 3600, "fsync": False}
            return aiosessions.open_store(backend_factory(), **{**settings, **options})

        return opener

    @pytest.fixture
    def fail_writes(self) -> Callable[[str | None], None]:
        """``fail_writes(key)``: from now on every write of ``key`` fails (as a broken disk or
        server fails it), while other keys' writes work; ``fail_writes(None)`` heals it."""
        pytest.fail(
            f"{type(self).__name__} provides no fail_writes fixture: provide one, or override "
            "the tests that use it with what holds for this backend"
        )

    @pytest.fixture
    def plant(self, backend_factory: BackendFactory) -> Plant:
        """``await plant(key, raw)``: store ``raw`` (None deletes) as another writer would."""

        async def planter(key: str, raw: bytes | None) -> None:
            async with opened(backend_factory) as other:
                result = await write(other, Write(key, raw))
                assert result.landed == [key], f"planting {key!r} failed: {result}"

        return planter

    @pytest.fixture
    def stored(self, backend_factory: BackendFactory) -> Stored:
        """``await stored()``: every stored entry as parsed JSON, read by another backend object."""

        async def reader() -> dict[str, Any]:
            async with opened(backend_factory) as other:
                keys = await listed(other)
                assert len(keys) == len(set(keys)), f"key_chunks() listed keys twice: {keys}"
                found: dict[str, Any] = {}
                for key, data in zip(keys, await other.read_many(keys), strict=True):
                    if isinstance(data, BaseException):
                        raise data
                    if data is not None:
                        found[key] = json.loads(data)
                return found

        return reader

    # -- get / set / delete / contains / updated_at -------------------------------------

    async def test_get_missing_is_none(self, open_test_store: Opener) -> None:
        async with open_test_store() as store:
            assert await store.get(KEY) is None
            assert await store.updated_at(KEY) is None
            assert await store.contains(KEY) is False
            assert await store.delete(KEY) is False
            assert await all_keys(store) == []

    async def test_set_then_get_returns_an_equal_entry(self, open_test_store: Opener, stored: Stored) -> None:
        entry = SessionEntry(session_id="s1", updated_at=1_700_000_000_000, channel="telegram", label=None)
        async with open_test_store() as store:
            await store.set(KEY, entry)
            assert await store.get(KEY) == entry
            assert await store.contains(KEY) is True
            assert await store.updated_at(KEY) == 1_700_000_000_000
            await store.flush()
        # Presence survives: label=None is written as null, unset fields are absent.
        assert (await stored())[KEY] == {
            "sessionId": "s1",
            "updatedAt": 1_700_000_000_000,
            "channel": "telegram",
            "label": None,
        }
        async with open_test_store() as store:
            assert await store.get(KEY) == entry

    async def test_set_overwrites(self, open_test_store: Opener) -> None:
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

    async def test_delete_returns_whether_it_existed(self, open_test_store: Opener, stored: Stored) -> None:
        async with open_test_store() as store:
            await store.set("a", SessionEntry(session_id="a"))
            await store.set("b", SessionEntry(session_id="b"))
            await store.flush()
            assert await store.delete("a") is True
            assert await store.delete("a") is False
            assert await store.get("a") is None
            assert await store.contains("a") is False
            assert await store.updated_at("a") is None
            assert "a" in await stored()  # not flushed yet
            await store.flush()
            assert await stored() == {"b": {"sessionId": "b"}}

    async def test_delete_of_a_never_flushed_key(self, open_test_store: Opener, stored: Stored) -> None:
        async with open_test_store() as store:
            await store.set("fresh", SessionEntry(session_id="x"))
            assert await store.delete("fresh") is True
            assert await store.delete("fresh") is False
            await store.flush()
            assert await store.get("fresh") is None
        assert await stored() == {}

    async def test_updated_at_reads_only_the_recency_field(
        self, open_test_store: Opener, plant: Plant
    ) -> None:
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
        await plant("odd", b'{"updatedAt": 7, "inputTokens": "many"}')
        async with open_test_store() as store:
            assert await store.updated_at("odd") == 7
            entry = await store.get("odd")
            assert entry is not None and entry.updated_at == 7 and entry.input_tokens is msgspec.UNSET

    async def test_contains_and_updated_at_see_another_writers_changes(
        self, open_test_store: Opener, plant: Plant
    ) -> None:
        """Answers about stored keys are fresh on every call: nothing stale is served."""
        async with open_test_store() as store:
            await store.set("mine", SessionEntry(session_id="m", updated_at=1))
            await store.flush()
            assert await store.contains("theirs") is False
            await plant("theirs", b'{"sessionId":"t","updatedAt":10}')
            assert await store.contains("theirs") is True
            assert await store.updated_at("theirs") == 10
            await plant("theirs", b'{"sessionId":"t","updatedAt":11}')
            assert await store.updated_at("theirs") == 11
            assert await store.get("theirs") == SessionEntry(session_id="t", updated_at=11)
            await plant("theirs", None)
            assert await store.contains("theirs") is False
            assert await store.updated_at("theirs") is None
            assert await store.get("theirs") is None
            # The store's own flushed key, changed and then removed by the other writer.
            assert await store.updated_at("mine") == 1
            await plant("mine", b'{"sessionId":"m","updatedAt":2}')
            assert await store.updated_at("mine") == 2
            await plant("mine", None)
            assert await store.contains("mine") is False
            assert await all_keys(store) == []

    # -- update --------------------------------------------------------------------------

    async def test_update_returns_the_result_of_fn(self, open_test_store: Opener) -> None:
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

    async def test_update_returning_delete_deletes(self, open_test_store: Opener, stored: Stored) -> None:
        async with open_test_store() as store:
            await store.set(KEY, SessionEntry(session_id="s"))
            await store.flush()
            assert await store.update(KEY, lambda entry: aiosessions.DELETE) is None
            assert await store.get(KEY) is None
            assert await store.contains(KEY) is False
            await store.flush()
            assert KEY not in await stored()
            # On an absent key, the function receives None; deleting it writes nothing.
            seen: list[object] = []
            assert await store.update("absent", lambda e: seen.append(e) or aiosessions.DELETE) is None
            assert seen == [None]
            await store.flush()
            assert await stored() == {}

    async def test_update_returning_none_is_refused(self, open_test_store: Opener, stored: Stored) -> None:
        """A function that changes the entry in place and forgets `return` must not delete it."""

        def forgets_return(entry: Any) -> Any:
            entry["n"] = 2

        async with open_test_store(entry_type=dict) as store:
            await store.set(KEY, {"n": 1})
            await store.flush()
            with pytest.raises(
                TypeError, match=r"returned None: return the new entry \(or aiosessions.DELETE"
            ):
                await store.update(KEY, forgets_return)
            assert await store.get(KEY) == {"n": 1}
            with pytest.raises(TypeError, match="returned None"):
                await store.update("absent", lambda entry: None)
            assert await store.contains("absent") is False
            await store.flush()
            assert await stored() == {KEY: {"n": 1}}

    @pytest.mark.parametrize("flush_interval", [3600, 0], ids=["write-behind", "write-through"])
    async def test_update_is_atomic_per_key_under_200_tasks(
        self, open_test_store: Opener, stored: Stored, flush_interval: float
    ) -> None:
        """200 concurrent increments per key end exact, with flushes racing them.

        With write-through every update reads the entry from storage (an await inside
        the key's critical section), so an unlocked update would lose increments.
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
        assert await stored() == {key: {"n": 200} for key in keys}
        async with open_test_store(entry_type=dict) as store:
            for key in keys:
                assert await store.get(key) == {"n": 200}

    async def test_update_reapplies_fn_after_another_writers_change(
        self, open_test_store: Opener, plant: Plant, stored: Stored
    ) -> None:
        """Compare-and-swap per key: a change between update's read and its write is not lost.

        ``fn`` ran on what the store read; another writer changes the key before the
        flush; the write must then conflict and ``fn`` run again on the newer value.
        """
        seen: list[Any] = []

        def add_one(entry: dict[str, Any] | None) -> dict[str, Any]:
            seen.append(entry)
            return {"n": (0 if entry is None else entry["n"]) + 1}

        async with open_test_store(entry_type=dict) as store:
            await store.set("k", {"n": 1})
            await store.set("fresh", {"n": 100})
            await store.flush()
            assert await store.update("k", add_one) == {"n": 2}  # applied to what was read
            assert await store.update("new", add_one) == {"n": 1}  # applied to "absent"
            assert seen == [{"n": 1}, None]
            await plant("k", b'{"n": 10}')  # another writer, between the read and the write
            await plant("new", b'{"n": 20}')  # another writer creates the key meanwhile
            await store.flush()
            assert seen == [{"n": 1}, None, {"n": 10}, {"n": 20}]
            assert await stored() == {"k": {"n": 11}, "new": {"n": 21}, "fresh": {"n": 100}}
            stats = store.statistics()
            assert stats.conflicts == 2 and stats.pending == 0 and stats.failures == 0
            assert await store.get("k") == {"n": 11}
            # Without another writer, no conflict: fn runs once.
            await store.update("fresh", add_one)
            await store.flush()
            assert store.statistics().conflicts == 2
            assert seen[-1] == {"n": 100} and len(seen) == 5
            assert (await stored())["fresh"] == {"n": 101}

    # -- update_members ------------------------------------------------------------------

    async def test_update_members_changes_only_the_named_members(
        self, open_test_store: Opener, backend_factory: BackendFactory, stored: Stored
    ) -> None:
        """The other members keep their bytes and places; a named member left out is removed."""
        big = {"prompt": "p" * 20_000, "skills": [{"name": f"s{i}"} for i in range(50)]}
        entry = {"sessionId": "s", "skillsSnapshot": big, "updatedAt": 1, "label": "x", "n": 1.50}
        seen: list[Any] = []

        def touch(members: dict[str, Any] | None) -> dict[str, Any]:
            seen.append(members)
            assert members is not None
            return {"updatedAt": members["updatedAt"] + 1, "totalTokens": 5}

        async with open_test_store(entry_type=dict) as store:
            await store.set(KEY, entry)
            await store.flush()
            names = ["updatedAt", "label", "totalTokens"]
            assert await store.update_members(KEY, names, touch) == {"updatedAt": 2, "totalTokens": 5}
            assert seen == [{"updatedAt": 1, "label": "x"}]
            expected = {"sessionId": "s", "skillsSnapshot": big, "updatedAt": 2, "n": 1.50, "totalTokens": 5}
            assert await store.get(KEY) == expected
            await store.flush()
            assert await stored() == {KEY: expected}
        async with opened(backend_factory) as other:
            data = await other.read(KEY)
        assert data is not None
        assert list(json.loads(data)) == list(expected)  # places kept, the new member last

    async def test_large_entries_changed_by_two_stores_read_whole_in_each(
        self, open_test_store: Opener
    ) -> None:
        """Entries whose large members a backend may store apart: each store's changes, of
        small members and of large ones, are read whole by the other, and an update from a
        stale view is applied again to the entry the other store wrote."""
        report = {"text": "r" * 40_000}

        def entry(n: int, skills: str) -> dict[str, Any]:
            return {
                "sessionId": "s",
                "updatedAt": n,
                "skillsSnapshot": {"p": skills * 80_000},
                "report": report,
            }

        async with open_test_store(entry_type=dict) as one, open_test_store(entry_type=dict) as two:
            await one.set(KEY, entry(1, "a"), durable=True)
            assert await two.get(KEY) == entry(1, "a")
            for n in range(2, 5):
                await one.update_members(KEY, ["updatedAt"], lambda m: {"updatedAt": m["updatedAt"] + 1})
                await one.flush()
                assert await two.get(KEY) == entry(n, "a")
            await one.set(KEY, entry(5, "b"), durable=True)  # a large member changes
            # `two` last read the entry of n = 4; a backend may start its update from that (a
            # known base), which then meets the newer entry and is applied again to it.
            await two.update(KEY, lambda e: {**e, "updatedAt": e["updatedAt"] + 10})
            await two.flush()
            assert await one.get(KEY) == entry(15, "b")
            await two.set(KEY, entry(16, "a"), durable=True)  # back to a value dropped before
            assert await one.get(KEY) == await two.get(KEY) == entry(16, "a")

    async def test_update_members_of_a_missing_session_and_delete(
        self, open_test_store: Opener, stored: Stored
    ) -> None:
        async with open_test_store(entry_type=dict) as store:
            seen: list[Any] = []
            made = await store.update_members(
                "new", ["updatedAt"], lambda m: seen.append(m) or {"updatedAt": 7}
            )
            assert made == {"updatedAt": 7} and seen == [None]
            assert await store.get("new") == {"updatedAt": 7}
            assert await store.update_members("new", ["updatedAt"], lambda m: aiosessions.DELETE) is None
            assert await store.contains("new") is False
            await store.flush()
            assert await stored() == {}

    async def test_update_members_refuses_what_it_cannot_store(
        self, open_test_store: Opener, stored: Stored
    ) -> None:
        async with open_test_store(entry_type=dict) as store:
            await store.set(KEY, {"a": 1, "b": 2})
            await store.flush()
            with pytest.raises(TypeError, match=r"members it did not name: \['c'\]"):
                await store.update_members(KEY, ["a"], lambda m: {"c": 3})
            with pytest.raises(TypeError, match="returned None: return a mapping"):
                await store.update_members(KEY, ["a"], lambda m: None)
            with pytest.raises(TypeError, match="not one name"):
                await store.update_members(KEY, "a", lambda m: m)
            deep: Any = 1
            for _ in range(300):
                deep = [deep]
            with pytest.raises(aiosessions.InvalidEntryError, match="nests"):
                await store.update_members(KEY, ["a"], lambda m: {"a": deep})
            assert await store.get(KEY) == {"a": 1, "b": 2}
            await store.flush()
            assert await stored() == {KEY: {"a": 1, "b": 2}}

    async def test_update_members_of_typed_entries_uses_json_names(self, open_test_store: Opener) -> None:
        async with open_test_store() as store:
            await store.set(KEY, SessionEntry(session_id="s", updated_at=1, extra={"blob": "b" * 10_000}))
            await store.update_members(
                KEY, ["updatedAt"], lambda m: {"updatedAt": (m or {})["updatedAt"] + 1}
            )
            assert await store.get(KEY) == SessionEntry(
                session_id="s", updated_at=2, extra={"blob": "b" * 10_000}
            )

    async def test_update_members_reapplies_fn_after_another_writers_change(
        self, open_test_store: Opener, plant: Plant, stored: Stored
    ) -> None:
        seen: list[Any] = []

        def add_one(members: dict[str, Any] | None) -> dict[str, Any]:
            seen.append(members)
            return {"n": (members or {}).get("n", 0) + 1}

        async with open_test_store(entry_type=dict) as store:
            await store.set("k", {"n": 1, "other": "mine"})
            await store.flush()
            assert await store.update_members("k", ["n"], add_one) == {"n": 2}
            await plant("k", b'{"n": 10, "other": "theirs"}')  # another writer, before the write
            await store.flush()
            assert seen == [{"n": 1}, {"n": 10}]
            assert await stored() == {"k": {"n": 11, "other": "theirs"}}
            assert store.statistics().conflicts == 1

    async def test_an_update_deleting_a_key_another_writer_changed_reapplies(
        self, open_test_store: Opener, plant: Plant, stored: Stored
    ) -> None:
        """A delete decided from a stale value is decided again on the newer one."""

        def drop_if_done(entry: dict[str, Any] | None) -> Any:
            return aiosessions.DELETE if entry is not None and entry["done"] else entry

        async with open_test_store(entry_type=dict) as store:
            await store.set("job", {"done": True})
            await store.flush()
            assert await store.update("job", drop_if_done) is None
            await plant("job", b'{"done": false}')  # reopened elsewhere before the delete landed
            await store.flush()
            assert await stored() == {"job": {"done": False}}
            assert await store.get("job") == {"done": False}

    async def test_a_set_overwrites_another_writers_change(
        self, open_test_store: Opener, plant: Plant, stored: Stored
    ) -> None:
        """``set`` and ``delete`` are blind: the last writer wins, and it is no conflict."""
        async with open_test_store(entry_type=dict) as store:
            await store.set("k", {"v": "first"})
            await store.set("gone", {"v": "first"})
            await store.flush()
            await store.set("k", {"v": "mine"})
            assert await store.delete("gone") is True
            await plant("k", b'{"v": "theirs"}')
            await plant("gone", b'{"v": "theirs"}')
            await store.flush()
            assert await stored() == {"k": {"v": "mine"}}
            assert store.statistics().conflicts == 0

    # -- batches: each write lands, conflicts or fails alone ----------------------------

    async def test_a_batch_lands_around_a_failing_write(
        self,
        open_test_store: Opener,
        stored: Stored,
        fail_writes: Callable[[str | None], None],
    ) -> None:
        async with open_test_store(entry_type=dict) as store:
            for key in ("a", "b", "c"):
                await store.set(key, {"v": 1})
            await store.flush()
            fail_writes("b")
            for key in ("a", "b", "c"):
                await store.set(key, {"v": 2})
            with pytest.raises(FlushError) as caught:
                await store.flush()
            assert set(caught.value.failures) == {"b"}
            assert isinstance(caught.value.failures["b"], SessionStoreError)
            assert await stored() == {"a": {"v": 2}, "b": {"v": 1}, "c": {"v": 2}}
            stats = store.statistics()
            assert stats.pending == 1 and stats.failures >= 1
            assert await store.get("b") == {"v": 2}  # kept, and still what this process reads
            fail_writes(None)
            await store.flush()
            assert store.statistics().pending == 0
            assert await stored() == {"a": {"v": 2}, "b": {"v": 2}, "c": {"v": 2}}

    # -- read-your-writes, keys() and items() --------------------------------------------

    async def test_reads_see_own_writes_before_flush(self, open_test_store: Opener, stored: Stored) -> None:
        async with open_test_store() as store:
            await store.set("a", SessionEntry(session_id="a1", updated_at=1))
            await store.flush()
            await store.set("a", SessionEntry(session_id="a2", updated_at=2))
            await store.set("b", SessionEntry(session_id="b1"))
            await store.update("b", lambda e: SessionEntry(session_id="b2") if e else aiosessions.DELETE)
            assert store.statistics().pending == 2
            # Nothing of it is stored yet ...
            assert await stored() == {"a": {"sessionId": "a1", "updatedAt": 1}}
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

    async def test_keys_and_items_merge_pending_and_stored(self, open_test_store: Opener) -> None:
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

    async def test_keys_and_items_merge_pending_dict_entries(self, open_test_store: Opener) -> None:
        async with open_test_store(entry_type=dict) as store:
            for name in ("keep", "change", "drop"):
                await store.set(name, {"v": name})
            await store.flush()
            await store.delete("drop")
            await store.set("change", {"v": "changed"})
            await store.set("new", {"v": "new"})
            expected = {"keep": {"v": "keep"}, "change": {"v": "changed"}, "new": {"v": "new"}}
            assert sorted([key async for key in store.keys()]) == sorted(expected)
            assert {key: entry async for key, entry in store.items()} == expected
            await store.flush()
            assert store.statistics().pending == 0
        async with open_test_store(entry_type=dict) as store:
            assert {key: entry async for key, entry in store.items()} == expected

    async def test_keys_lists_each_key_once(self, open_test_store: Opener) -> None:
        """A key both stored and pending is listed once, over several listing chunks."""
        names = [f"agent:main:chat:{i}" for i in range(1300)]
        async with open_test_store(entry_type=dict) as store:
            for name in names:
                await store.set(name, {"i": name})
            await store.flush()
            for name in names[::3]:
                await store.set(name, {"i": name, "again": True})
            listed_keys = [key async for key in store.keys()]
            assert sorted(listed_keys) == sorted(names)
            items = [item async for item in store.items()]
            assert len(items) == len(names)
            assert all(entry["i"] == key for key, entry in items)
            assert sum(1 for _, entry in items if entry.get("again")) == len(names[::3])

    async def test_keys_while_keys_are_added_and_removed(self, open_test_store: Opener, plant: Plant) -> None:
        """Listing goes on while keys come and go, in this store and in another writer.

        Keys present throughout are listed exactly once; no key is listed twice; a key
        deleted before the listing began is never listed, nor one whose delete by this
        store is still pending when the listing reaches it; keys that came or went
        during the listing otherwise (a delete flushed meanwhile is one) may or may not
        be listed.
        """
        stable = [f"stable:{i:04d}" for i in range(1200)]
        doomed = [f"doomed:{i:04d}" for i in range(100)]
        async with open_test_store(entry_type=dict) as store:
            for key in stable + doomed:
                await store.set(key, {"k": key})
            await store.flush()
            gone_before = set(doomed[-3:])
            await store.delete(doomed.pop())  # flushed
            await store.flush()
            await store.delete(doomed.pop())  # pending
            await plant(doomed.pop(), None)  # by the other writer
            seen: list[str] = []
            deleted_at: dict[str, int] = {}  # key -> how many keys were listed before its pending delete
            changed: set[str] = set()
            async for key in store.keys():
                seen.append(key)
                if len(seen) % 100 == 1:
                    pending_delete, removed, added = [*doomed[:2], f"added:{len(seen)}"]
                    del doomed[:2]
                    await store.delete(pending_delete)  # pending until the listing is over
                    deleted_at[pending_delete] = len(seen)
                    await plant(removed, None)
                    await plant(added, b'{"k": "added"}')
                    changed |= {pending_delete, removed, added}
            assert len(seen) == len(set(seen)), "a key was listed twice"
            assert set(stable) <= set(seen)
            assert set(seen) <= set(stable) | set(doomed) | changed
            assert not set(seen) & gone_before
            position = {key: i for i, key in enumerate(seen)}
            for key, at in deleted_at.items():
                assert position.get(key, 0) < at, f"{key} was listed after its delete"
            # Afterwards, a listing is exact again.
            await store.flush()
            added = {key for key in changed if key.startswith("added:")}
            assert set(await all_keys(store)) == set(stable) | set(doomed) | added

    async def test_items_skip_corrupt(self, open_test_store: Opener, plant: Plant) -> None:
        async with open_test_store() as store:
            await store.set("good", SessionEntry(session_id="good"))
            await store.set("bad", SessionEntry(session_id="bad"))
            await store.flush()
        await plant("bad", b"[1, 2, 3]")  # JSON, but not an entry
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

    # -- deletes are never resurrected ------------------------------------------------------

    async def test_a_deleted_key_stays_deleted(
        self, open_test_store: Opener, plant: Plant, stored: Stored
    ) -> None:
        """After a delete lands, no read, listing, update or later flush brings the entry back."""
        async with open_test_store(entry_type=dict) as store:
            for key in ("a", "b", "c"):
                await store.set(key, {"v": key})
            await store.flush()
            # A pending update, then a delete of the same key: the delete wins.
            await store.update("a", lambda e: {**(e or {}), "touched": True})
            assert await store.delete("a") is True
            # A delete with a pending update built on a value another writer then changed:
            # the update's function must not be re-applied over the delete.
            await store.update("b", lambda e: {**(e or {}), "touched": True})
            await plant("b", b'{"v": "theirs"}')
            assert await store.delete("b") is True
            await store.flush()
            assert await stored() == {"c": {"v": "c"}}
            # Flushing again, and reopening, leave them deleted.
            await store.flush()
            for key in ("a", "b"):
                assert await store.get(key) is None
                assert await store.contains(key) is False
            assert await store.update("a", lambda e: {"was": e}) == {"was": None}
            assert await store.delete("a") is True
            await store.flush()
        async with open_test_store(entry_type=dict) as store:
            assert await all_keys(store) == ["c"]
            assert await all_items(store) == {"c": {"v": "c"}}
            assert await store.get("a") is None and await store.get("b") is None
        assert await stored() == {"c": {"v": "c"}}

    async def test_a_delete_while_the_entry_is_being_written_wins(
        self, backend_factory: BackendFactory, stored: Stored
    ) -> None:
        """The write in flight lands, then the delete made meanwhile: never the other way round."""
        watched = Watched(backend_factory())
        async with aiosessions.open_store(
            watched, entry_type=dict, flush_interval=3600, fsync=False
        ) as store:
            await store.set("k", {"v": 1})
            await store.set("j", {"v": 1})
            watched.hold()
            async with anyio.create_task_group() as tg:
                tg.start_soon(store.flush)
                await watched.entered.wait()  # {"v": 1} is being written
                assert await store.delete("k") is True
                assert await store.update("j", lambda e: {"v": e["v"] + 1}) == {"v": 2}
                assert await store.delete("j") is True
                watched.release()
            # That flush's batch landed; the deletes, written after it or not yet, win already.
            assert await store.get("k") is None and await store.contains("k") is False
            assert await store.get("j") is None and await all_keys(store) == []
            await store.flush()
            # The backend was asked for the write, then for the delete: never the other order.
            for key in ("k", "j"):
                asked = [values(w.data) for writes, _ in watched.batches for w in writes if w.key == key]
                assert asked == [{"v": 1}, None], (key, asked)
            assert await stored() == {}
            assert await store.get("k") is None and await all_keys(store) == []
        async with aiosessions.open_store(backend_factory(), fsync=False) as store:
            assert await all_keys(store) == []

    # -- durability ----------------------------------------------------------------------

    async def test_durable_calls_return_once_stored(self, open_test_store: Opener, stored: Stored) -> None:
        """``durable=True`` returns only after the backend acknowledged the write, even
        in a write-behind store whose timer would not flush for an hour."""
        async with open_test_store(entry_type=dict) as store:
            await store.set("a", {"v": 1}, durable=True)
            assert await stored() == {"a": {"v": 1}}
            assert store.statistics().pending == 0
            assert await store.update("a", lambda e: {"v": e["v"] + 1}, durable=True) == {"v": 2}
            assert await stored() == {"a": {"v": 2}}
            assert await store.delete("a", durable=True) is True
            assert await stored() == {}
            assert store.statistics().pending == 0

    async def test_durable_calls_wait_for_the_backends_answer(
        self, backend_factory: BackendFactory, stored: Stored
    ) -> None:
        """A durable call returns only after ``write_batch`` answered: held in flight, it waits;
        with ``fsync=True`` every batch asks the backend for durability."""
        watched = Watched(backend_factory())
        async with aiosessions.open_store(watched, entry_type=dict, flush_interval=3600) as store:
            returned: list[str] = []

            async def durable(name: str, call: Awaitable[Any]) -> None:
                await call
                returned.append(name)

            for name, call in (
                ("set", lambda: store.set("k", {"v": 1}, durable=True)),
                ("update", lambda: store.update("k", lambda e: {"v": e["v"] + 1}, durable=True)),
                ("delete", lambda: store.delete("k", durable=True)),
            ):
                watched.hold()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(durable, name, call())
                    await watched.entered.wait()
                    await turns()
                    assert name not in returned, f"{name}(durable=True) returned before the backend answered"
                    watched.release()
                assert returned[-1] == name
                assert (await stored()).get("k") == {"set": {"v": 1}, "update": {"v": 2}, "delete": None}[
                    name
                ]
            assert [durable for _, durable in watched.batches] == [True, True, True]
            assert [sorted(result.landed) for result in watched.acknowledged] == [["k"], ["k"], ["k"]]

    async def test_a_durable_update_that_conflicts_returns_once_reapplied_and_stored(
        self, backend_factory: BackendFactory, plant: Plant, stored: Stored
    ) -> None:
        seen: list[Any] = []

        def add_one(entry: dict[str, Any] | None) -> dict[str, Any]:
            seen.append(entry)
            return {"n": (0 if entry is None else entry["n"]) + 1}

        watched = Watched(backend_factory())
        async with aiosessions.open_store(
            watched, entry_type=dict, flush_interval=3600, fsync=False
        ) as store:
            await store.set("n", {"n": 1}, durable=True)
            watched.hold()
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: store.update("n", add_one, durable=True))
                await watched.entered.wait()  # the write is on its way, with the stale base
                await plant("n", b'{"n": 10}')
                watched.release()
            # Returned: so the re-applied change is stored, without any flush.
            assert seen == [{"n": 1}, {"n": 10}]
            assert await stored() == {"n": {"n": 11}}
            assert store.statistics().conflicts == 1 and store.statistics().pending == 0

    # -- entry types -------------------------------------------------------------------------

    async def test_dict_entries(self, open_test_store: Opener, stored: Stored) -> None:
        value = {"sessionId": "d", "updatedAt": 5, "nested": {"a": [1, None, "x"]}, "flag": False}
        async with open_test_store(entry_type=dict) as store:
            assert store.entry_type is dict
            await store.set(KEY, value)
            got = await store.get(KEY)
            assert got == value and isinstance(got, dict)
            assert await store.updated_at(KEY) == 5
            assert await store.update(KEY, lambda e: {**e, "flag": True}) == {**value, "flag": True}
            await store.flush()
        assert await stored() == {KEY: {**value, "flag": True}}

    async def test_custom_struct_entries(self, open_test_store: Opener, stored: Stored) -> None:
        async with open_test_store(entry_type=Note) as store:
            assert store.entry_type is Note
            await store.set("n1", Note(text="hello", tags=["a"]))
            assert await store.get("n1") == Note(text="hello", tags=["a"])
            updated = await store.update("n1", lambda n: msgspec.structs.replace(n, count=n.count + 1))
            assert updated == Note(text="hello", count=1, tags=["a"])
            await store.flush()
            assert [item async for item in store.items()] == [("n1", updated)]
        assert await stored() == {"n1": {"text": "hello", "count": 1, "tags": ["a"]}}
        async with open_test_store(entry_type=Note) as store:
            assert await store.get("n1") == updated

    async def test_session_entries_keep_what_they_do_not_know(
        self, open_test_store: Opener, plant: Plant, stored: Stored
    ) -> None:
        """Unknown and oddly typed members written by another program survive an update."""
        raw = {
            "sessionId": "s",
            "updatedAt": 1,
            "inputTokens": "many",  # a known field with an unexpected type
            "futureField": {"nested": [1, 2.5, None, True]},
            "label": None,
        }
        await plant(KEY, json.dumps(raw).encode())
        async with open_test_store() as store:
            entry = await store.get(KEY)
            assert entry is not None and entry.extra == {
                "inputTokens": "many",
                "futureField": {"nested": [1, 2.5, None, True]},
            }
            await store.update(KEY, lambda e: msgspec.structs.replace(e, updated_at=2, total_tokens=5))
            await store.flush()
        assert await stored() == {KEY: {**raw, "updatedAt": 2, "totalTokens": 5}}
        # The same stored entry, read as a dict and as a SessionEntry by other stores.
        async with open_test_store(entry_type=dict) as as_dict, open_test_store() as as_entry:
            assert await as_dict.get(KEY) == {**raw, "updatedAt": 2, "totalTokens": 5}
            again = await as_entry.get(KEY)
            assert again is not None and again.total_tokens == 5 and again.extra["inputTokens"] == "many"

    # -- statistics, flush, aclose ----------------------------------------------------------

    async def test_statistics(self, open_test_store: Opener) -> None:
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

    async def test_flush_stores_the_changes(self, open_test_store: Opener, stored: Stored) -> None:
        async with open_test_store() as store:
            await store.set("a", SessionEntry(session_id="a"))
            assert "a" not in await stored()
            await store.flush()
            assert await stored() == {"a": {"sessionId": "a"}}

    async def test_aclose_flushes_and_is_idempotent(self, open_test_store: Opener, stored: Stored) -> None:
        async with open_test_store() as store:
            await store.set("a", SessionEntry(session_id="a"))
            await store.aclose()
            assert store.closed
            assert await stored() == {"a": {"sessionId": "a"}}
            await store.aclose()  # again: a no-op
        await store.aclose()  # and after the context left
        # Leaving the block flushes too.
        async with open_test_store() as store:
            await store.set("b", SessionEntry(session_id="b"))
        assert await stored() == {"a": {"sessionId": "a"}, "b": {"sessionId": "b"}}

    async def test_closed_store_raises_store_closed_error(self, open_test_store: Opener) -> None:
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

    async def test_closed_store_does_not_warn(self, open_test_store: Opener) -> None:
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

    async def test_store_mode_is_the_backends(
        self, open_test_store: Opener, backend_factory: BackendFactory
    ) -> None:
        async with open_test_store() as store:
            assert store.mode == backend_factory().mode
            assert isinstance(store.mode, str) and store.mode

    # -- per-key locks and checkpoints -------------------------------------------------------

    async def test_writes_are_checkpoints_so_a_busy_writer_cannot_starve_other_tasks(
        self, open_test_store: Opener
    ) -> None:
        """A write whose entry is pending touches no storage; it must still let other tasks run.

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
        self, open_test_store: Opener
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

    # -- the whole API on each event loop ------------------------------------------------------

    async def test_runs_on_the_event_loop_it_claims(self, anyio_backend: str) -> None:
        import sniffio

        assert sniffio.current_async_library() == anyio_backend
        if anyio_backend == "trio":
            import trio

            assert trio.lowlevel.current_task() is not None  # raises RuntimeError outside trio

    async def test_set_get_update_delete(
        self, open_test_store: Opener, backend_factory: BackendFactory
    ) -> None:
        key = KEY
        async with open_test_store() as store:
            assert store.mode == backend_factory().mode
            assert await store.get(key) is None
            await store.set(key, SessionEntry(session_id="s1", updated_at=1))
            assert await store.get(key) == SessionEntry(session_id="s1", updated_at=1)
            result = await store.update(
                key, lambda e: SessionEntry(session_id="s1", updated_at=e.updated_at + 1)
            )
            assert result == SessionEntry(session_id="s1", updated_at=2)
            assert await store.updated_at(key) == 2
            await store.flush()
            assert await store.delete(key) is True
            assert await store.delete(key) is False
            assert await store.get(key) is None
            assert await store.update(key, lambda e: aiosessions.DELETE) is None
            await store.set("other", SessionEntry(session_id="o"))
        async with open_test_store() as store:
            assert await store.get(key) is None
            assert await store.get("other") == SessionEntry(session_id="o")
        with pytest.raises(StoreClosedError):
            await store.get("other")

    # -- the Backend protocol, directly ------------------------------------------------------
    #
    # A backend may hand back other bytes than it was given for the same JSON value (the
    # legacy file re-indents entries another process wrote), so these tests compare
    # values; compare-and-swap compares with the bytes the backend itself returned.

    async def test_backend_reads_what_it_wrote(self, backend_factory: BackendFactory) -> None:
        async with opened(backend_factory) as backend:
            assert isinstance(backend.mode, str) and backend.mode
            assert backend.batch_size is None or backend.batch_size >= 1
            assert isinstance(backend.location(), str) and backend.location()
            assert isinstance(backend.location(KEY), str) and backend.location(KEY)
            assert await backend.read(KEY) is None and await backend.exists(KEY) is False
            result = await write(backend, Write(KEY, b'{"n":1}'), Write("b", b'{"n":2}'), Write("c", b"{}"))
            assert sorted(result.landed) == sorted([KEY, "b", "c"])
            assert values(await backend.read(KEY)) == {"n": 1}
            assert await backend.exists(KEY) is True
            many = await backend.read_many(["b", "missing", KEY])
            assert [values(each) for each in many] == [{"n": 2}, None, {"n": 1}]
            assert await backend.read_many([]) == []
            assert sorted(await listed(backend)) == sorted([KEY, "b", "c"])
            # A delete lands, also of a key that is not there.
            result = await write(backend, Write("b", None), Write("never", None))
            assert sorted(result.landed) == ["b", "never"]
            assert await backend.read("b") is None and await backend.exists("b") is False
            assert sorted(await listed(backend)) == sorted([KEY, "c"])
            # A durable write has the same outcome (acknowledged once durably stored).
            assert (await write(backend, Write("d", b"[]"), durable=True)).landed == ["d"]
        async with opened(backend_factory) as again:
            assert values(await again.read("d")) == [] and values(await again.read(KEY)) == {"n": 1}
            assert sorted(await listed(again)) == sorted([KEY, "c", "d"])
        await backend.aclose()  # idempotent

    async def test_backend_compare_and_swap(self, backend_factory: BackendFactory) -> None:
        async with opened(backend_factory) as backend:
            await write(backend, Write("k", b'{"v":1}'))
            current = await backend.read("k")
            # Lands when the stored bytes are the expected ones ...
            assert (await write(backend, cas("k", b'{"v":2}', current))).landed == ["k"]
            # ... and conflicts, handing back the current bytes, when they are not.
            result = await write(backend, cas("k", b'{"v":3}', current))
            assert result.landed == [] and values(result.conflicts["k"]) == {"v": 2}
            assert values(await backend.read("k")) == {"v": 2}
            # The bytes handed back are what the retry compares with: it lands.
            assert (await write(backend, cas("k", b'{"v":3}', result.conflicts["k"]))).landed == ["k"]
            # expected=None means "absent": a create-if-absent.
            assert (await write(backend, cas("new", b"1", None))).landed == ["new"]
            result = await write(backend, cas("new", b"2", None))
            assert values(result.conflicts["new"]) == 1
            # A compare-and-swap delete; then the key is absent, which conflicts with old bytes.
            assert (await write(backend, cas("k", None, await backend.read("k")))).landed == ["k"]
            assert (await write(backend, cas("k", b'"x"', b'{"v":3}'))).conflicts == {"k": None}
            assert await backend.read("k") is None and values(await backend.read("new")) == 1

    async def test_backend_sees_another_writer_at_once(self, backend_factory: BackendFactory) -> None:
        """Nothing stale is served: a change by another backend object shows on the next call."""
        async with opened(backend_factory) as mine, opened(backend_factory) as theirs:
            await write(mine, Write("k", b'{"v":"mine"}'))
            before = await mine.read("k")  # now possibly cached
            assert values(before) == {"v": "mine"}
            await write(theirs, Write("k", b'{"v":"theirs"}'))
            assert values(await mine.read("k")) == {"v": "theirs"}
            assert [values(each) for each in await mine.read_many(["k"])] == [{"v": "theirs"}]
            assert await mine.exists("k") is True
            # Compare-and-swap compares with what is stored, not with what was cached.
            result = await write(mine, cas("k", b"{}", before))
            assert values(result.conflicts["k"]) == {"v": "theirs"}
            await write(theirs, Write("k", None))
            assert await mine.read("k") is None and await mine.exists("k") is False
            assert await mine.read_many(["k"]) == [None]
            assert await listed(mine) == []

    async def test_backend_batch_lands_around_a_conflict(self, backend_factory: BackendFactory) -> None:
        async with opened(backend_factory) as backend:
            await write(backend, Write("a", b"1"), Write("b", b"1"), Write("c", b"1"))
            result = await write(
                backend,
                Write("a", b"2"),  # blind
                cas("b", b"2", b"0"),  # stale: conflicts
                cas("c", b"2", await backend.read("c")),  # current: lands
                cas("d", b"2", None),  # absent, as expected: lands
            )
            assert sorted(result.landed) == ["a", "c", "d"]
            assert list(result.conflicts) == ["b"] and values(result.conflicts["b"]) == 1
            assert result.failed == {} and result.unsynced == {}
            many = await backend.read_many(["a", "b", "c", "d"])
            assert [values(each) for each in many] == [2, 1, 2, 2]

    async def test_backend_batch_lands_around_a_failing_write(
        self, backend_factory: BackendFactory, fail_writes: Callable[[str | None], None]
    ) -> None:
        async with opened(backend_factory) as backend:
            await write(backend, Write("a", b"1"), Write("b", b"1"), Write("c", b"1"))
            fail_writes("b")
            result = await write(backend, Write("a", b"2"), Write("b", b"2"), Write("c", b"2"))
            assert sorted(result.landed) == ["a", "c"] and set(result.failed) == {"b"}
            assert isinstance(result.failed["b"], SessionStoreError), result.failed
            many = await backend.read_many(["a", "b", "c"])
            assert [values(each) for each in many] == [2, 1, 2]
            fail_writes(None)
            assert (await write(backend, Write("b", b"2"))).landed == ["b"]
            assert values(await backend.read("b")) == 2

    async def test_backend_lists_keys_by_prefix(self, backend_factory: BackendFactory) -> None:
        keys = ["agent:main:1", "agent:main:2", "agent:mainly", "agent:other:1", "Agent:main:3", "b", "a"]
        async with opened(backend_factory) as backend:
            await write(backend, *(Write(key, b"{}") for key in keys))
            assert sorted(await listed(backend, "agent:main:")) == ["agent:main:1", "agent:main:2"]
            assert sorted(await listed(backend, "agent:main")) == [
                "agent:main:1",
                "agent:main:2",
                "agent:mainly",
            ]
            assert await listed(backend, "Agent") == ["Agent:main:3"]  # case matters
            assert sorted(await listed(backend, "a")) == sorted(key for key in keys if key.startswith("a"))
            assert await listed(backend, "zzz") == []
            assert sorted(await listed(backend, "")) == sorted(keys)
            assert sorted(await listed(backend)) == sorted(keys)

    async def test_backend_counters(self, backend_factory: BackendFactory) -> None:
        """``counters()`` is a mapping of names to ints, before, while and after the store runs;
        the store's statistics() take them in."""
        backend = backend_factory()
        assert all(isinstance(k, str) and isinstance(v, int) for k, v in backend.counters().items())
        async with aiosessions.open_store(backend, fsync=False) as store:
            await store.set("k", SessionEntry(session_id="s"))
            await store.flush()
            assert all(isinstance(k, str) and isinstance(v, int) for k, v in backend.counters().items())
            assert store.statistics().swept == backend.counters().get("swept", 0)
            assert store.statistics().backend_counters == backend.counters()
        assert all(isinstance(k, str) and isinstance(v, int) for k, v in backend.counters().items())

    async def test_upkeep_due_answers_after_open_and_a_store_reads_without_it(
        self, backend_factory: BackendFactory
    ) -> None:
        """``upkeep_due()`` is a bool after ``open()``; a store that only reads works
        whether or not its background tasks started (they start at the first write)."""
        async with aiosessions.open_store(backend_factory(), fsync=False) as store:
            await store.set("k", SessionEntry(session_id="s"))
        backend = backend_factory()
        await backend.open()
        try:
            assert isinstance(backend.upkeep_due(), bool)
        finally:
            await backend.aclose()
        async with aiosessions.open_store(backend_factory(), fsync=False) as store:
            assert await store.get("k") == SessionEntry(session_id="s")
            assert [key async for key in store.keys()] == ["k"]
            await store.flush()

    async def test_backend_lists_in_chunks_while_keys_come_and_go(
        self, backend_factory: BackendFactory
    ) -> None:
        """key_chunks() never lists a key twice nor one that never existed, and lists every
        key that was there throughout, whatever another writer does between chunks."""
        stable = [f"s:{i:04d}" for i in range(1100)]
        doomed = [f"d:{i:04d}" for i in range(100)]
        async with opened(backend_factory) as backend, opened(backend_factory) as other:
            await write(backend, *(Write(key, b"{}") for key in stable + doomed))
            seen: list[str] = []
            added: set[str] = set()
            removed: set[str] = set()
            async for chunk in backend.key_chunks():
                seen += chunk
                new, gone = f"a:{len(seen):04d}", doomed[len(removed) : len(removed) + 5]
                added.add(new)
                removed.update(gone)
                await write(other, Write(new, b"{}"), *(Write(key, None) for key in gone))
            assert len(seen) == len(set(seen)), "a key was listed twice"
            assert set(stable) <= set(seen)
            assert set(seen) <= set(stable) | set(doomed) | added
            assert sorted(await listed(backend)) == sorted(set(stable) | added | (set(doomed) - removed))

    # -- listings: newest first, prefixes, counts (issue 12) ----------------------------------

    async def test_newest_count_and_prefixes_follow_a_model(
        self, open_test_store: Opener, backend_factory: BackendFactory
    ) -> None:
        """newest() pages, count() and keys(prefix)/items(prefix) say what a model says, with
        this store's unwritten changes and another writer's written ones."""
        rng = random.Random(12)
        keys = [f"agent:{i % 4}:{i}" for i in range(60)] + ["odd", "x.y", "agent:1:" + "é" * 80]
        at_values: list[Any] = [*range(20), None, "absent", True, 1.5, "str", 2**60, -5, -(2**53)]
        entries: dict[str, dict[str, Any]] = {}
        async with open_test_store(entry_type=dict) as store, opened(backend_factory) as other:
            await check_listings(store, entries)
            for step in range(240):
                key = rng.choice(keys)
                roll = rng.random()
                if roll < 0.12:
                    await store.delete(key)
                    entries.pop(key, None)
                elif roll < 0.5:
                    entries[key] = stamped(rng.choice(at_values))
                    await store.set(key, entries[key])
                elif roll < 0.85:
                    change = stamped(rng.choice(at_values))
                    entries[key] = {**entries.get(key, {}), **change}
                    await store.update(key, lambda e, change=change: {**(e or {}), **change})
                else:  # another writer, on a key this store has no change pending for
                    await store.flush()
                    value = stamped(rng.choice(at_values))
                    await write(other, Write(key, json.dumps(value).encode()))
                    entries[key] = value
                if step % 30 == 0:
                    await check_listings(store, entries)  # with changes pending
                if step % 60 == 0:
                    await store.flush()
                    await check_listings(store, entries)
        async with open_test_store(entry_type=dict) as store:
            await check_listings(store, entries)

    async def test_newest_checks_its_arguments(self, open_test_store: Opener) -> None:
        async with open_test_store() as store:
            for bad in (-1,):
                with pytest.raises(ValueError):
                    await store.newest(bad)
            for bad_limit in (1.5, "5", None):
                with pytest.raises(TypeError):
                    await store.newest(bad_limit)
            for after in ("k", ("k",), (5, 5), ("k", 1.5), ("k", True), ("k", 2**60)):
                with pytest.raises(TypeError):
                    await store.newest(5, after=after)

    async def test_listing_prefixes_are_exact_whatever_the_keys(self, open_test_store: Opener) -> None:
        """Keys a file name cannot hold as they are (escapes, shortened names, device names,
        dots at either end): a prefix selects by key, nothing else."""
        async with open_test_store(entry_type=dict) as store:
            for i, key in enumerate(TRICKY_KEYS):
                await store.set(key, {"updatedAt": i})
            await store.flush()
            prefixes = {key[:n] for key in TRICKY_KEYS for n in range(0, min(len(key), 100) + 1, 3)}
            prefixes |= {
                "co",
                "con",
                "con.",
                ".",
                "..",
                "end",
                "end.",
                "l" * 96,
                "l" * 96 + ":",
                "\U0010ffff",
            }
            for prefix in sorted(prefixes):
                got = [key async for key in store.keys(prefix)]
                assert sorted(got) == sorted(k for k in TRICKY_KEYS if k.startswith(prefix)), prefix
            want = sorted(enumerate(TRICKY_KEYS), key=lambda item: (-item[0], item[1]))
            assert await store.newest(100) == [(key, i) for i, key in want]
            assert await store.count() == len(TRICKY_KEYS)

    async def test_backend_newest_and_count_directly(self, backend_factory: BackendFactory) -> None:
        """The protocol's newest() and count(): ties by key, no-recency last, pages that neither
        repeat nor skip, and another backend object's writes in the next answer."""
        async with opened(backend_factory) as backend, opened(backend_factory) as other:
            assert await backend.newest(5) == []
            assert await backend.count() == 0
            rows = {"b": 5, "a": 5, "c": None, "d": 2**53, "e": -(2**53), "f": None, "g": 7}
            await write(
                other,
                *(
                    Write(k, json.dumps({} if v is None else {"updatedAt": v}).encode())
                    for k, v in rows.items()
                ),
            )
            want = [("d", 2**53), ("g", 7), ("a", 5), ("b", 5), ("e", -(2**53)), ("c", None), ("f", None)]
            assert await backend.newest(10) == want
            assert await backend.count() == 7
            for size in (1, 2, 3):
                seen: list[tuple[str, int | None]] = []
                after = None
                while page := await backend.newest(size, after=after):
                    seen += page
                    after = page[-1]
                assert seen == want
            assert await backend.newest(3, after=("a", 5)) == [("b", 5), ("e", -(2**53)), ("c", None)]
            assert await backend.newest(3, after=("zz", 6)) == [("a", 5), ("b", 5), ("e", -(2**53))]
            await write(other, Write("g", None), Write("a", b'{"updatedAt": 1}'))
            assert await backend.newest(3) == [("d", 2**53), ("b", 5), ("a", 1)]
            assert await backend.count() == 6


def stamped(at: Any) -> dict[str, Any]:
    """An entry whose updatedAt is ``at`` ("absent": none)."""
    return {"sessionId": "s"} if at == "absent" else {"sessionId": "s", "updatedAt": at}


def recency(entry: dict[str, Any]) -> int | None:
    """The listing's rule: an int (not a bool) within +-2**53, else None."""
    at = entry.get("updatedAt")
    return at if type(at) is int and abs(at) <= 2**53 else None


async def check_listings(store: aiosessions.SessionStore[Any], entries: dict[str, dict[str, Any]]) -> None:
    """newest() (whole and paged), count(), keys(prefix) and items(prefix) against ``entries``."""
    want = sorted(
        ((key, recency(e)) for key, e in entries.items()), key=lambda p: (p[1] is None, -(p[1] or 0), p[0])
    )
    assert await store.newest(7) == want[:7]
    assert await store.newest(0) == []
    for size in (5, 64):
        seen: list[tuple[str, int | None]] = []
        after = None
        while True:
            page = await store.newest(size, after=after)
            assert len(page) <= size
            seen += page
            if len(page) < size:
                break
            after = page[-1]
        assert seen == want
    assert await store.count() == len(entries)
    assert await all_keys(store) == sorted(entries)
    for prefix in ("agent:1:", "agent:", "zz", ""):
        keys = [key async for key in store.keys(prefix)]
        assert sorted(keys) == sorted(k for k in entries if k.startswith(prefix)), prefix
        assert len(keys) == len(set(keys))
    assert {k: v async for k, v in store.items("agent:2:")} == {
        k: v for k, v in entries.items() if k.startswith("agent:2:")
    }


#: Keys whose folder names differ from them in every way the name encoding knows.
TRICKY_KEYS = [
    *(".hidden", ".", "..", "end.", "a.b.", "con", "con.txt", "CON", "com1", "co", "cons", "nul.x"),
    *("Agent:Main", "agent:main", "agent:main:x", "agent:main~x", "a/b", "a%2e", "ключ:1", "ключ:2"),
    *("l" * 96 + ":1", "l" * 96 + ":2", "l" * 150, "l" * 150 + "x", "l" * 90 + "é" * 40),
    *("\U0010ffff" * 3, "\U0010ffffa"),
]
