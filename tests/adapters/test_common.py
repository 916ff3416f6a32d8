"""What the adapters share: the store handle, updatedAt versions, key parts."""

from __future__ import annotations

import asyncio

import pytest

import aiosessions
from aiosessions.adapters._common import StoreHandle, key_part, next_updated_at, now_ms

from .conftest import Place

pytestmark = pytest.mark.asyncio


async def test_updated_at_always_grows_even_within_one_millisecond() -> None:
    ahead = now_ms() + 60_000  # another host's clock ahead of ours
    assert next_updated_at({"updatedAt": ahead}) == ahead + 1
    assert next_updated_at({"updatedAt": True}) >= now_ms() - 1000  # not an integer: ignored
    assert next_updated_at(None) <= now_ms()


async def test_key_parts_never_hold_the_separator_and_stay_distinct() -> None:
    assert key_part("a:b%c\x00") == "a%3Ab%25c%00"
    assert key_part("%3A") != key_part(":")
    assert key_part("plain-text_1.2") == "plain-text_1.2"


async def test_a_handle_opens_in_one_task_and_closes_in_another(place: Place) -> None:
    handle = place.handle()
    store = await asyncio.create_task(handle.store())
    await store.set("k", {"v": 1})
    await asyncio.create_task(handle.aclose())
    assert store.closed
    reopened = await handle.store()  # used again: opened again
    assert await reopened.get("k") == {"v": 1}
    await handle.aclose()
    await handle.aclose()  # idempotent


async def test_a_store_handed_in_is_used_and_left_open(place: Place) -> None:
    async with aiosessions.open_store(place.target, entry_type=dict, **place.options) as store:
        handle = StoreHandle(store, what="a test")
        assert await handle.store() is store
        await handle.aclose()
        assert not store.closed
        with pytest.raises(TypeError, match="store options apply only"):
            StoreHandle(store, what="a test", options={"fsync": False})
