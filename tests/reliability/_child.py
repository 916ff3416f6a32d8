"""Child processes of the crash and race tests: ``python _child.py <role> <json-args>``.

Each role prints one line per event and flushes it at once, so a parent that kills the child
with SIGKILL knows exactly what was acknowledged before the kill:

``writer``   changes a few keys forever; prints ``T key n op`` before each change is attempted
             and ``A key n`` once it is on disk (after ``durable=True`` or ``flush()``).
``migrate``  runs ``aiosessions.migrate`` once and prints ``done``.
``prune``    runs ``aiosessions.prune`` once and prints ``done``.
``race``     mixes update/set/delete/get on shared keys until a deadline, printing a log line
             per operation with its start and end (CLOCK_MONOTONIC is system-wide on Linux).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from typing import Any

import anyio

import aiosessions


def emit(*parts: object) -> None:
    sys.stdout.write(" ".join(str(part) for part in parts) + "\n")
    sys.stdout.flush()


def value(key: str, n: int) -> dict[str, Any]:
    # Every other value is large enough to be stored split (format version 2).
    big = {"report": {"n": n, "text": "r" * 9_000}, "snapshot": {"key": key, "text": "s" * 9_000}}
    return {"sessionId": key, "n": n, "pad": "p" * (n % 13) * 40, **(big if n % 2 else {})}


async def writer(args: dict[str, Any]) -> None:
    """Monotonic counters per key: set, update and delete; acknowledge only what is on disk."""
    rng = random.Random(args["seed"])
    keys: list[str] = args["keys"]
    write_through = args["flush_interval"] == 0
    async with aiosessions.open_store(
        args["path"],
        entry_type=dict,
        flush_interval=args["flush_interval"],
        fsync=args["fsync"],
    ) as store:
        state: dict[str, dict[str, Any] | None] = {key: await store.get(key) for key in keys}
        n = args["base"]
        emit("ready")
        while True:
            burst = 1 if write_through else rng.randint(1, 12)
            touched: dict[str, int] = {}
            for _ in range(burst):
                key = rng.choice(keys)
                n += 1
                roll = rng.random()
                if roll < 0.1 and state[key] is not None:
                    emit("T", key, n, "delete")
                    await store.delete(key, durable=False)
                    state[key] = None
                elif roll < 0.55:
                    emit("T", key, n, "set")
                    await store.set(key, value(key, n))
                    state[key] = value(key, n)
                else:
                    emit("T", key, n, "update")
                    expected, new = state[key], value(key, n)

                    def fn(current: dict[str, Any] | None, expected: Any = expected, new: Any = new) -> Any:
                        # Read-your-writes, also across restarts: what this process last
                        # wrote (or found on disk at start) is what update() sees.
                        if current != expected:
                            emit("E", "update saw", json.dumps(current), "expected", json.dumps(expected))
                            os._exit(3)
                        return new

                    await store.update(key, fn)
                    state[key] = new
                touched[key] = n
            if not write_through:
                await store.flush()
            else:
                # flush_interval=0: every call above returned after its own write landed.
                pass
            for key, at in touched.items():
                emit("A", key, at)


async def migrate(args: dict[str, Any]) -> None:
    emit("ready")
    report = await aiosessions.migrate(args["path"], fsync=args["fsync"])
    emit("done", report.entries)


async def prune(args: dict[str, Any]) -> None:
    emit("ready")
    report = await aiosessions.prune(args["path"], older_than=args["older_than"], now=args["now"])
    emit("done", len(report.removed))


async def race(args: dict[str, Any]) -> None:
    """Shared keys, several processes: counters by update(); op-id lists by set/update/delete."""
    rng = random.Random(args["seed"])
    me: int = args["proc"]
    counters: list[str] = args["counters"]
    mixed: list[str] = args["mixed"]
    deadline = time.monotonic() + args["seconds"]
    op_no = 0

    def inc(entry: dict[str, Any] | None) -> dict[str, Any]:
        return {"n": (entry["n"] if entry else 0) + 1}

    async with aiosessions.open_store(
        args["path"], entry_type=dict, flush_interval=args["flush_interval"], fsync=False
    ) as store:
        emit("ready")
        while time.monotonic() < deadline:
            op_no += 1
            op_id = f"{me}.{op_no}"
            roll = rng.random()
            t0 = time.monotonic()
            if roll < 0.35:
                key = rng.choice(counters)
                await store.update(key, inc, durable=True)
                emit("U", key, op_id, t0, time.monotonic())
            elif roll < 0.5:
                key = rng.choice(counters)
                got = await store.get(key)
                emit("R", key, op_id, t0, time.monotonic(), got["n"] if got else 0)
            else:
                key = rng.choice(mixed)
                kind = rng.random()
                if kind < 0.2:
                    await store.set(key, {"ops": [op_id]}, durable=True)
                    emit("S", key, op_id, t0, time.monotonic())
                elif kind < 0.35:
                    existed = await store.delete(key, durable=True)
                    emit("D", key, op_id, t0, time.monotonic(), int(existed))
                elif kind < 0.8:

                    def append(entry: dict[str, Any] | None, op_id: str = op_id) -> dict[str, Any]:
                        return {"ops": [*(entry["ops"] if entry else []), op_id]}

                    await store.update(key, append, durable=True)
                    emit("A", key, op_id, t0, time.monotonic())
                else:
                    got = await store.get(key)
                    emit("G", key, op_id, t0, time.monotonic(), json.dumps(got["ops"] if got else None))
    emit("closed")


ROLES = {"writer": writer, "migrate": migrate, "prune": prune, "race": race}

if __name__ == "__main__":
    role, raw = sys.argv[1], sys.argv[2]
    anyio.run(ROLES[role], json.loads(raw))
