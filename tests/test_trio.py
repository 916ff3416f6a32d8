"""The store under trio: a representative part of the contract, on both backends.

The store is written on anyio, so it must run unchanged under trio; these tests
run through the anyio pytest plugin with the trio backend.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import aiosessions
from aiosessions import SessionEntry, StoreClosedError

pytestmark = pytest.mark.anyio

Opener = Callable[..., Any]


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


async def test_is_really_trio() -> None:
    import trio

    assert trio.lowlevel.current_task() is not None  # raises RuntimeError outside trio


async def test_set_get_update_delete(open_test_store: Opener, store_path: Path, mode: str) -> None:
    key = "agent:main:telegram:direct:james"
    async with open_test_store() as store:
        assert store.mode == mode
        assert await store.get(key) is None
        await store.set(key, SessionEntry(session_id="s1", updated_at=1))
        assert await store.get(key) == SessionEntry(session_id="s1", updated_at=1)
        result = await store.update(key, lambda e: SessionEntry(session_id="s1", updated_at=e.updated_at + 1))
        assert result == SessionEntry(session_id="s1", updated_at=2)
        assert await store.updated_at(key) == 2
        await store.flush()
        assert await store.delete(key) is True
        assert await store.delete(key) is False
        assert await store.get(key) is None
        assert await store.update(key, lambda e: None) is None
        await store.set("other", SessionEntry(session_id="o"))
    async with open_test_store() as store:
        assert await store.get(key) is None
        assert await store.get("other") == SessionEntry(session_id="o")
    with pytest.raises(StoreClosedError):
        await store.get("other")


async def test_keys_and_items_merge_pending(open_test_store: Opener) -> None:
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


async def test_flush_puts_changes_on_disk(open_test_store: Opener, store_path: Path, mode: str) -> None:
    async with open_test_store(entry_type=dict) as store:
        await store.set("a", {"n": 1})
        await store.flush()
        if mode == "json":
            assert json.loads(store_path.read_bytes()) == {"a": {"n": 1}}
        else:
            assert json.loads((store_path.with_name("sessions.d") / "a" / "meta.json").read_bytes()) == {
                "n": 1
            }


@pytest.mark.parametrize("flush_interval", [3600, 0], ids=["write-behind", "write-through"])
async def test_concurrent_updates_end_exact(open_test_store: Opener, flush_interval: float) -> None:
    def increment(entry: dict[str, Any] | None) -> dict[str, Any]:
        return {"n": (0 if entry is None else entry["n"]) + 1}

    async with open_test_store(entry_type=dict, flush_interval=flush_interval) as store:
        async with anyio.create_task_group() as tg:
            for _ in range(200):
                for key in ("x", "y"):
                    tg.start_soon(store.update, key, increment)
        await store.flush()
        assert len(store._locks) == 0
    async with open_test_store(entry_type=dict) as store:
        assert await store.get("x") == {"n": 200}
        assert await store.get("y") == {"n": 200}


async def test_write_through_and_open_store_default_detection(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    async with aiosessions.open_store(path, flush_interval=0, fsync=True) as store:
        await store.set("k", SessionEntry(session_id="durable"))
        assert store.statistics().pending == 0  # write-through: on disk when set() returned
        assert store.mode == "directory"
