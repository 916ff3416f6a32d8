"""Our conftest for aiogram's tests/test_fsm/storage/test_storages.py and test_isolation.py, unchanged.

aiogram's suite parametrises its ``storage`` and ``isolation`` fixtures by the names of
its own storages (memory, redis, mongo, pymongo). Here every one of those names is our
storage, each in another configuration, so the suite runs against ours four ways:

* ``memory_storage``: a store path, opened by the storage itself, defaults;
* ``redis_storage``: with ``state_ttl`` and ``data_ttl`` (long enough not to expire);
* ``mongo_storage``: a store opened by the caller and handed in, written through
  (``flush_interval=0``);
* ``pymongo_storage``: another key prefix.

The isolations are ours too (three leases and wait limits). After each test the store
is closed, opened again, and must hold exactly what it held (the read-back check).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiogram.fsm.storage.base import BaseEventIsolation, StorageKey
from aiosessions_suite_support import backend, check_reopened, forget, snapshot, store_target

from aiosessions.adapters._common import StoreHandle
from aiosessions.adapters.aiogram import AiosessionsStorage

CHAT_ID = -42
USER_ID = 42
BOT_ID = 42


@pytest.fixture
def storage_key() -> StorageKey:
    return StorageKey(chat_id=CHAT_ID, user_id=USER_ID, bot_id=BOT_ID)


__all__ = ["backend", "forget", "isolation", "storage", "storage_key"]


async def _ours(name: str, folder: Path, backend: str) -> tuple[AiosessionsStorage, StoreHandle | None]:
    target, options = store_target(folder, backend)
    if name == "memory_storage":
        return AiosessionsStorage(target, store_options=options), None
    if name == "redis_storage":
        return AiosessionsStorage(target, state_ttl=3600, data_ttl=3600, store_options=options), None
    if name == "mongo_storage":
        handle = StoreHandle(target, what="the suite", options={**options, "flush_interval": 0})
        return AiosessionsStorage(await handle.store()), handle
    if name == "pymongo_storage":
        return AiosessionsStorage(target, key_prefix="fsm", store_options=options), None
    raise AssertionError(f"no storage of ours stands for {name!r}")


@pytest.fixture
async def storage(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str, forget: None
) -> AsyncIterator[AiosessionsStorage]:
    ours, handle = await _ours(request.param, tmp_path, backend)
    yield ours
    owner = handle if handle is not None else ours._handle
    before = await snapshot(owner)
    await ours.close()
    if handle is not None:
        await handle.aclose()
    target, options = store_target(tmp_path, backend)
    await check_reopened(target, options, before)


@pytest.fixture
async def isolation(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str, forget: None
) -> AsyncIterator[BaseEventIsolation]:
    settings: dict[str, Any] = {
        "redis_isolation": {},
        "lock_isolation": {"lease": 5},
        "disabled_isolation": {"wait_timeout": 5},
    }[request.param]
    target, options = store_target(tmp_path, backend)
    ours = AiosessionsStorage(target, store_options=options)
    isolation = ours.create_isolation(**settings)
    yield isolation
    await isolation.close()
    before = await snapshot(ours._handle)
    assert before == {}, f"a released lock stays stored: {before}"
    await ours.close()
