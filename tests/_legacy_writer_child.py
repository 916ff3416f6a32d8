"""A bot still writing in legacy JSON mode while its operator migrates (not a test module).

    python tests/_legacy_writer_child.py STORE_PATH BACKEND SEED KEY [KEY ...]

Opens the store in legacy mode (write-behind on, fsync off), prints ``ready`` and waits for
``go`` on stdin. Then increments ``totalTokens`` of a random KEY with ``update()``, over and
over, flushing at seeded random points, and prints ``progress <updates> <mode>`` every 25
updates, until a ``stop`` line arrives. Every ``update()`` that returned is counted as
acknowledged. Closes the store (which raises if anything accepted was not written) and
prints one JSON line: the acknowledged increments per key, the store's mode at the end
and its statistics.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import asdict

import anyio
import msgspec

import aiosessions
from aiosessions import SessionEntry


def bump(entry: SessionEntry | None) -> SessionEntry:
    if entry is None:
        return SessionEntry(session_id="counter", total_tokens=1)
    count = entry.total_tokens if isinstance(entry.total_tokens, int) else 0
    return msgspec.structs.replace(entry, total_tokens=count + 1)


async def main(path: str, seed: int, keys: list[str]) -> None:
    rng = random.Random(seed)
    acked = dict.fromkeys(keys, 0)
    stop = anyio.Event()

    async def wait_for_stop() -> None:
        line = await anyio.to_thread.run_sync(sys.stdin.readline)
        if line.strip() != "stop":
            raise SystemExit(f"expected 'stop', got {line!r}")
        stop.set()

    async with aiosessions.open_store(
        path, mode="json", flush_interval=0.005, fsync=False, lock_timeout=60
    ) as store:
        print("ready", flush=True)
        line = await anyio.to_thread.run_sync(sys.stdin.readline)
        if line.strip() != "go":
            raise SystemExit(f"expected 'go', got {line!r}")
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for_stop)
            done = 0
            next_flush = rng.randint(1, 40)
            while not stop.is_set():
                key = rng.choice(keys)
                await store.update(key, bump)
                acked[key] += 1
                done += 1
                if done == next_flush:
                    await store.flush()
                    next_flush += rng.randint(1, 40)
                if done % 25 == 0:
                    print(f"progress {done} {store.mode}", flush=True)
                await anyio.sleep(0.001)  # a bot's pace: the migration runs meanwhile
        mode = store.mode
    print(json.dumps({"acked": acked, "mode": mode, "stats": asdict(store.statistics())}), flush=True)


if __name__ == "__main__":
    store_path, backend, seed_text, *counter_keys = sys.argv[1:]
    anyio.run(main, store_path, int(seed_text), counter_keys, backend=backend)
