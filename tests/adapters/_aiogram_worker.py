"""A process sharing a store with others through the aiogram adapter (tests/adapters/test_aiogram.py).

    python -m tests.adapters._aiogram_worker NAME ROUNDS STORE|BACKEND|GO...

For each store in turn (one process pair serves every backend: importing aiogram takes
seconds), waits for the file GO, then for ROUNDS rounds: under the isolation lock of one
shared key, reads a counter and writes it back plus one (lost updates if the lock did not
exclude the other processes); and merges one key of its own into another shared key with
update_data (lost keys if update_data were not atomic).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from aiogram.fsm.storage.base import StorageKey

from aiosessions.adapters.aiogram import AiosessionsStorage

COUNTER = StorageKey(bot_id=1, chat_id=1, user_id=1)
MERGED = StorageKey(bot_id=1, chat_id=2, user_id=2)


async def main(name: str, rounds: int, stores: list[str]) -> None:
    for place in stores:
        store, mode, go = place.split("|")
        await share(store, mode, Path(go), name, rounds)


async def share(store: str, mode: str, go: Path, name: str, rounds: int) -> None:
    options: dict[str, object] = {} if mode == "redis" else {"fsync": False}
    if mode == "json":
        options["mode"] = "json"
    storage = AiosessionsStorage(store, store_options=options)
    isolation = storage.create_isolation(lease=30)
    while not go.exists():
        time.sleep(0.005)
    for i in range(rounds):
        async with isolation.lock(COUNTER):
            count = await storage.get_value(COUNTER, "count", 0)
            await asyncio.sleep(0)  # let the other tasks and the flusher run mid-update
            await storage.set_data(COUNTER, {"count": count + 1})
        await storage.update_data(MERGED, {f"{name}-{i}": i})
    await storage.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3:]))
