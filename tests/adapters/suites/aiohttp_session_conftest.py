"""Our conftest for aiohttp-session's tests/test_redis_storage.py, run unchanged.

The suite builds ``RedisStorage(redis, max_age=..., key_factory=...)`` and pokes the
Redis server directly (``get``/``set``/``exists``/``ttl`` of ``AIOHTTP_SESSION_<key>``).
Here ``RedisStorage`` is swapped for :class:`AiosessionsStorage`, and the ``redis``
fixture is :class:`StoreAsRedis`: those four commands answered from the very store the
storage writes to, in its record format. After each test the store is closed, opened
again on the same place, and must hold exactly what it held (the read-back check).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp_session.redis_storage
import pytest
from aiosessions_suite_support import backend, check_reopened, forget, snapshot, store_target

from aiosessions.adapters._common import Record, StoreHandle, now_ms
from aiosessions.adapters.aiohttp import AiosessionsStorage, _expired, _record_of, _text_of

_COOKIE_PREFIX = "AIOHTTP_SESSION_"


class StoreAsRedis:
    """``redis.get/set/exists/ttl`` of ``AIOHTTP_SESSION_<identity>`` over our store."""

    def __init__(self, handle: StoreHandle, keys: AiosessionsStorage) -> None:
        self.handle = handle
        self._keys = keys  # the storage's defaults: cookie AIOHTTP_SESSION

    def _key(self, name: str) -> str:
        assert name.startswith(_COOKIE_PREFIX), name
        return self._keys.key_of(name[len(_COOKIE_PREFIX) :])

    async def _entry(self, name: str) -> Record | None:
        entry = await (await self.handle.store()).get(self._key(name))
        return None if entry is None or _expired(entry) else entry

    async def get(self, name: str) -> bytes | None:
        entry = await self._entry(name)
        return None if entry is None else _text_of(entry).encode("utf-8")

    async def set(self, name: str, value: str, ex: int | None = None) -> None:
        entry = _record_of(value)
        entry["updatedAt"] = now_ms()
        if ex is not None:
            entry["expiresAt"] = entry["updatedAt"] + ex * 1000
        await (await self.handle.store()).set(self._key(name), entry)

    async def exists(self, name: str) -> int:
        return int(await self._entry(name) is not None)

    async def ttl(self, name: str) -> int:
        entry = await self._entry(name)
        if entry is None:
            return -2
        if "expiresAt" not in entry:
            return -1
        return math.ceil((entry["expiresAt"] - now_ms()) / 1000)


def _storage(redis_pool: Any, **options: Any) -> AiosessionsStorage:
    store = redis_pool.handle.current if isinstance(redis_pool, StoreAsRedis) else redis_pool
    return AiosessionsStorage(store, **options)


__all__ = ["backend", "forget", "redis"]

# The swap: the suite's `from aiohttp_session.redis_storage import RedisStorage` gets ours.
aiohttp_session.redis_storage.RedisStorage = _storage  # type: ignore[assignment,misc]


@pytest.fixture
async def redis(tmp_path: Path, backend: str, forget: None) -> AsyncIterator[StoreAsRedis]:
    target, options = store_target(tmp_path, backend)
    handle = StoreHandle(target, what="the suite's store", options=options)
    store = await handle.store()
    yield StoreAsRedis(handle, AiosessionsStorage(store))
    before = await snapshot(handle)
    await handle.aclose()
    await check_reopened(target, options, before)
