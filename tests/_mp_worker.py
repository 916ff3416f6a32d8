"""A separate process working on a store, for the cross-process tests (not a test module).

Usage::

    python _mp_worker.py read PATH MODE KEY
        Open the store, print the entry of KEY as JSON (``null`` if absent).

    python _mp_worker.py count PATH MODE KEY N FLUSH_INTERVAL SEED
        Open the store, print ``ready``, wait for a ``go`` line on stdin, then
        increment ``totalTokens`` of KEY N times with ``update()`` (write-behind on,
        fsync off), calling ``flush()`` after a seeded random number of increments
        so that writes interleave with the other processes'. Close the store and
        print its statistics as JSON.

    python _mp_worker.py churn PATH MODE N SECONDS SEED
        Open the store, print ``ready``, then for SECONDS set, re-set and delete N
        sessions with long keys (shortened folder names with a ``key`` file), a
        write-behind store flushing every 50 changes. Close the store and print, as
        JSON, what it acknowledged last for each key (absent: deleted or never set).
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import asdict
from typing import Literal

import anyio
import msgspec

import aiosessions
from aiosessions import SessionEntry


def _mode(name: str) -> Literal["directory", "json"]:
    if name not in ("directory", "json"):
        raise SystemExit(f"unknown mode {name!r}")
    return "directory" if name == "directory" else "json"


def bump(entry: SessionEntry | None) -> SessionEntry:
    """The counter's update function: pure, as update() requires."""
    if entry is None:
        return SessionEntry(session_id="counter", total_tokens=1)
    count = entry.total_tokens if isinstance(entry.total_tokens, int) else 0
    return msgspec.structs.replace(entry, total_tokens=count + 1)


async def read(path: str, mode: str, key: str) -> None:
    async with aiosessions.open_store(path, mode=_mode(mode), fsync=False) as store:
        entry = await store.get(key)
    print(json.dumps(None if entry is None else json.loads(msgspec.json.encode(entry))), flush=True)


async def count(path: str, mode: str, key: str, n: int, flush_interval: float, seed: int) -> None:
    rng = random.Random(seed)
    async with aiosessions.open_store(
        path,
        mode=_mode(mode),
        flush_interval=flush_interval,
        fsync=False,
        lock_timeout=30,
    ) as store:
        print("ready", flush=True)
        line = await anyio.to_thread.run_sync(sys.stdin.readline)
        if line.strip() != "go":
            raise SystemExit(f"expected 'go', got {line!r}")
        next_flush = rng.randint(1, 40)
        for done in range(1, n + 1):
            await store.update(key, bump)
            if done == next_flush:
                await store.flush()
                next_flush += rng.randint(1, 40)
    stats = store.statistics()  # after the final flush of aclose()
    print(json.dumps(asdict(stats)), flush=True)


def churn_key(i: int) -> str:
    """A key long enough for a shortened folder name."""
    return f"agent:main:telegram:group:{'long' * 40}:{i}"


async def churn(path: str, mode: str, n: int, seconds: float, seed: int) -> None:
    rng = random.Random(seed)
    keys = [churn_key(i) for i in range(n)]
    model: dict[str, dict[str, object]] = {}
    async with aiosessions.open_store(
        path, mode=_mode(mode), entry_type=dict, flush_interval=0.01, fsync=False, lock_timeout=30
    ) as store:
        print("ready", flush=True)
        deadline = time.monotonic() + seconds
        changes = 0
        while time.monotonic() < deadline:
            key = rng.choice(keys)
            if key in model and rng.random() < 0.1:
                await store.delete(key)
                del model[key]
            else:
                value: dict[str, object] = {"sessionId": key[-6:], "n": changes}
                await store.set(key, value)
                model[key] = value
            changes += 1
            if changes % 50 == 0:
                await store.flush()
    print(json.dumps(model), flush=True)


def main(argv: list[str]) -> None:
    command, path, mode, key, *rest = argv
    if command == "read":
        anyio.run(read, path, mode, key)
    elif command == "count":
        n, flush_interval, seed = int(rest[0]), float(rest[1]), int(rest[2])
        anyio.run(count, path, mode, key, n, flush_interval, seed)
    elif command == "churn":
        anyio.run(churn, path, mode, int(key), float(rest[0]), int(rest[1]))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
