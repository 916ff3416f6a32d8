"""Open a store, write and read a few sessions, and print what happened."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import anyio

import aiosessions
from aiosessions import SessionEntry


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sessions.json"
        async with aiosessions.open_store(path) as store:
            now = int(time.time() * 1000)
            for user in ("james", "maría", "zoë"):
                key = f"agent:main:telegram:direct:{user}"
                await store.set(key, SessionEntry(session_id=f"s-{user}", updated_at=now))
                print(f"set     {key}")

            def count_message(entry: SessionEntry | None) -> SessionEntry:
                assert entry is not None
                entry.extra["messages"] = entry.extra.get("messages", 0) + 1
                return entry

            for _ in range(100):
                await store.update("agent:main:telegram:direct:james", count_message)
            await store.flush()
            james = await store.get("agent:main:telegram:direct:james")
            assert james is not None
            print(f"updated agent:main:telegram:direct:james 100 times -> messages={james.extra['messages']}")
            stats = store.statistics()
            print(f"writes to disk: {stats.writes}, changes coalesced in memory: {stats.coalesced}")
            print("keys:", sorted([key async for key in store.keys()]))
        print("on disk:")
        for item in sorted((Path(folder) / "sessions.d").rglob("*")):
            print("  ", item.relative_to(folder))


if __name__ == "__main__":
    anyio.run(main)
