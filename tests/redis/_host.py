"""One "host" of the several-hosts tests: a separate process working on a Redis store (not a test module).

Usage: ``python _host.py '<json config>'``. The config: ``url``, ``me`` (a name), ``ops``,
``seed``, ``shared`` (keys every host updates), ``own`` (keys only this host sets and
deletes), ``flush_every`` (mean ops between flushes) and ``flush_interval``.

It opens the store, prints ``ready``, waits for ``go`` on stdin, then does ``ops``
operations chosen by the seed: ``update()`` of a shared key adding 1 to
``counts[me]``, ``set()`` of an own key to ``{"owner": me, "op": i}``, ``delete()`` of an
own key. A call that fails because the server is away (``StoreIOError``: a read it
needed, or a full queue that cannot be written) changed nothing and is retried; a flush
that fails is retried until it succeeds. After each successful flush it prints
``ack <i>``. At the end it prints one JSON line: what it did (``updates`` per shared key,
the last state of each own key) and the store's statistics and backend counters. With
``large`` in the config, every entry carries members large enough to be stored apart: a
shared key's stays the same, an own key's is new with each ``set()``.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

import anyio

from aiosessions import StoreIOError, open_store


async def retrying(call: Callable[[], Awaitable[Any]], deadline: float) -> Any:
    while True:
        try:
            return await call()
        except StoreIOError:
            if time.monotonic() > deadline:
                raise
            await anyio.sleep(0.05)


async def main(config: dict[str, Any]) -> None:
    me: str = config["me"]
    rng = random.Random(config["seed"])
    updates: dict[str, int] = dict.fromkeys(config["shared"], 0)
    own: dict[str, Any] = dict.fromkeys(config["own"])
    deadline = time.monotonic() + 60

    large = config.get("large", False)

    def bump(entry: dict[str, Any] | None) -> dict[str, Any]:
        counts = dict((entry or {}).get("counts", {}))
        counts[me] = counts.get(me, 0) + 1
        if large and entry is None:
            entry = {"skillsSnapshot": {"prompt": "s" * 20_000}}
        return {**(entry or {}), "counts": counts}

    async with open_store(
        config["url"],
        entry_type=dict,
        flush_interval=config["flush_interval"],
        max_pending_keys=config.get("max_pending_keys", 10_000),
    ) as store:
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        for i in range(config["ops"]):
            roll = rng.random()
            if roll < 0.5:
                key = rng.choice(config["shared"])
                await retrying(lambda key=key: store.update(key, bump), deadline)  # type: ignore[misc]
                updates[key] += 1
            elif roll < 0.8:
                key = rng.choice(config["own"])
                value: dict[str, Any] = {"owner": me, "op": i}
                if large:
                    value["report"] = {"text": f"{me} {i} " + "r" * 20_000}
                await retrying(lambda key=key, value=value: store.set(key, value), deadline)  # type: ignore[misc]
                own[key] = value
            else:
                key = rng.choice(config["own"])
                await retrying(lambda key=key: store.delete(key), deadline)  # type: ignore[misc]
                own[key] = None
            if rng.random() < 1 / config["flush_every"]:
                await retrying(store.flush, deadline)
                print(f"ack {i}", flush=True)
        await retrying(store.flush, deadline)
        print(f"ack {config['ops']}", flush=True)
        statistics = asdict(store.statistics())
        counters = dict(store.backend.counters())
    print(
        json.dumps({"updates": updates, "own": own, "statistics": statistics, "counters": counters}),
        flush=True,
    )


if __name__ == "__main__":
    anyio.run(main, json.loads(sys.argv[1]))
