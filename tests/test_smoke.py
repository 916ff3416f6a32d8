"""A first pass over the public API on both backends."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from aiosessions import InvalidKeyError, SessionEntry, SessionStore, StoreClosedError

pytestmark = pytest.mark.asyncio


async def test_set_get_update_delete(open_test_store: Callable[..., Any]) -> None:
    async with open_test_store() as store:
        await _exercise(store)


async def _exercise(store: SessionStore[SessionEntry]) -> None:
    key = "agent:main:telegram:direct:james"
    assert await store.get(key) is None
    await store.set(key, SessionEntry(session_id="s1", updated_at=5))
    assert await store.get(key) == SessionEntry(session_id="s1", updated_at=5)
    result = await store.update(key, lambda e: SessionEntry(session_id="s1", updated_at=e.updated_at + 1))
    assert result is not None and result.updated_at == 6
    await store.flush()
    assert await store.updated_at(key) == 6
    assert [k async for k in store.keys()] == [key]
    assert await store.delete(key) is True
    assert await store.delete(key) is False
    await store.flush()
    assert await store.get(key) is None
    assert [k async for k in store.keys()] == []


async def test_invalid_key_and_closed(open_test_store: Callable[..., Any]) -> None:
    async with open_test_store() as store:
        with pytest.raises(InvalidKeyError, match="NUL"):
            await store.get("a\x00b")
        await store.aclose()
        with pytest.raises(StoreClosedError):
            await store.get("a")
