"""Races: several processes on a few shared keys, and 10,000 tasks in one process.

Across processes (``_child.py race``), each process mixes ``update`` (counters, and op-id lists),
``set``, ``delete`` and reads for a bounded time, with every change durable before it is logged
(with its start and end on the system-wide monotonic clock). From the logs:

* **no lost update**: each counter ends at exactly the number of increments that returned;
  every process's reads of a counter never go backwards;
* **no resurrected delete / overwritten set**: an op-id list that survives was started by a
  ``set`` (or an update on an absent key) after which no ``set`` or ``delete`` began; every
  ``update`` that began after that is in the list, and each process's ids are in its own order;
* every value read was made of ids logged by some process.

In one process, 10,000 concurrent tasks update 1,000 keys (with and without a tight queue
bound): no deadlock (a timeout), every increment lands, memory stays bounded (tracemalloc
peak) and the event loop keeps ticking (the worst lateness of a 1 ms ticker is recorded).
"""

from __future__ import annotations

import json
import time
import tracemalloc
from collections import defaultdict
from pathlib import Path
from typing import Any

import anyio
import pytest

from .conftest import Scale, open_plain, record
from .test_crash import Child

COUNTERS = ["count:a", "count:B"]
MIXED = ["list:../x", "list:Ü"]


def _parse(lines: list[str]) -> list[tuple[str, str, str, float, float, str]]:
    events = []
    for line in lines:
        parts = line.split(" ", 5)
        if parts[0] in ("U", "R", "S", "D", "A", "G"):
            kind, key, op_id, t0, t1 = parts[:5]
            events.append((kind, key, op_id, float(t0), float(t1), parts[5] if len(parts) > 5 else ""))
    return events


def check_race(logs: dict[int, list[str]], final: dict[str, Any]) -> dict[str, int]:
    """Check the final state and every read against the operation logs; return counts."""
    events = {proc: _parse(lines) for proc, lines in logs.items()}
    everything = [event for proc_events in events.values() for event in proc_events]
    counts: dict[str, int] = defaultdict(int)
    for kind, *_ in everything:
        counts[kind] += 1
    # Counters: no lost update, reads never go backwards within a process.
    for key in COUNTERS:
        increments = sum(1 for kind, k, *_ in everything if kind == "U" and k == key)
        got = final.get(key)
        assert (got["n"] if got else 0) == increments, f"{key}: {got} after {increments} increments"
        for proc, proc_events in events.items():
            seen = [int(extra) for kind, k, _, _, _, extra in proc_events if kind == "R" and k == key]
            assert seen == sorted(seen), f"process {proc} saw {key} go backwards: {seen}"
    by_id = {op_id: (kind, key, t0, t1) for kind, key, op_id, t0, t1, _ in everything}
    for key in MIXED:
        ops = final.get(key)
        if ops is None:
            continue
        ids: list[str] = ops["ops"]
        assert len(ids) == len(set(ids)), f"{key}: an id twice: {ids}"
        for op_id in ids:
            assert op_id in by_id and by_id[op_id][1] == key, f"{key}: {op_id} was never logged for it"
        head_kind, _, _, head_end = by_id[ids[0]]
        assert head_kind in ("S", "A"), f"{key}: the list starts with {head_kind}"
        assert all(by_id[op_id][0] == "A" for op_id in ids[1:]), f"{key}: a set inside {ids}"
        # Nothing that replaces the value began after the head was on disk.
        for kind, k, op_id, t0, _, _ in everything:
            if k == key and kind in ("S", "D") and op_id != ids[0]:
                assert t0 < head_end, f"{key}: {kind} {op_id} began after {ids[0]} landed, yet {ids} survived"
        # No lost update: every append that began after the head landed is in the list.
        for kind, k, op_id, t0, _, _ in everything:
            if k == key and kind == "A" and t0 > head_end:
                assert op_id in ids, f"{key}: update {op_id} began after {ids[0]} landed and was lost"
        # Each process's appends are in its program order.
        for proc in logs:
            mine = [int(op_id.split(".")[1]) for op_id in ids if op_id.split(".")[0] == str(proc)]
            assert mine == sorted(mine), f"{key}: process {proc}'s updates out of order: {ids}"
    # Every read of a list was made of logged ids of that key.
    for kind, key, _, _, t1, extra in everything:
        if kind == "G" and extra != "null":
            for seen_id in json.loads(extra):
                assert seen_id in by_id and by_id[seen_id][1] == key, f"{key}: read {seen_id}, never logged"
                assert by_id[seen_id][2] < t1, f"{key}: read {seen_id} before it began"
    return dict(counts)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["directory", "json"])
def test_processes_race(tmp_path: Path, scale: Scale, seed: int, mode: str) -> None:
    """Several processes on a few keys: no lost update, no resurrected delete."""
    store_path = tmp_path / "sessions.json"
    anyio.run(_create, store_path, mode)
    children = {
        proc: Child(
            "race",
            {
                "path": str(store_path),
                "proc": proc,
                "seed": seed + proc,
                "seconds": scale.race_seconds,
                "counters": COUNTERS,
                "mixed": MIXED,
                "flush_interval": 0 if proc % 2 else 0.01,
            },
        )
        for proc in range(scale.race_processes)
    }
    started = time.monotonic()
    for proc, child in children.items():
        code = child.wait(timeout=scale.race_seconds + 120)
        assert code == 0 and child.lines[-1:] == ["closed"], f"process {proc} failed: {child.error}"
    elapsed = time.monotonic() - started
    final = anyio.run(_read_all, store_path)
    counts = check_race({proc: child.lines for proc, child in children.items()}, final)
    record(
        "process_race",
        scale=scale.name,
        mode=mode,
        processes=scale.race_processes,
        seconds=round(elapsed, 1),
        updates=counts.get("U", 0) + counts.get("A", 0),
        sets=counts.get("S", 0),
        deletes=counts.get("D", 0),
        reads=counts.get("R", 0) + counts.get("G", 0),
        lost_updates=0,
        resurrected=0,
    )


async def _create(store_path: Path, mode: str) -> None:
    async with open_plain(store_path, mode=mode) as store:
        await store.flush()


async def _read_all(store_path: Path) -> dict[str, Any]:
    async with open_plain(store_path) as store:
        return {key: value async for key, value in store.items()}


@pytest.mark.asyncio
@pytest.mark.slow
@pytest.mark.parametrize("bounded", [False, True], ids=["default-bounds", "tight-bounds"])
async def test_ten_thousand_tasks(tmp_path: Path, scale: Scale, mode: str, bounded: bool) -> None:
    """10,000 concurrent tasks on 1,000 keys: no deadlock, nothing lost, bounded memory and lag."""
    store_path = tmp_path / "sessions.json"
    per_key = scale.tasks // scale.stress_keys
    keys = [f"agent:main:telegram:group:{i}" for i in range(scale.stress_keys)]
    worst_lag = lag_after_spawn = 0.0
    ticks = 0
    spawned = False
    stop = anyio.Event()

    async def ticker() -> None:
        nonlocal worst_lag, lag_after_spawn, ticks
        while not stop.is_set():
            after_spawn = spawned
            before = anyio.current_time()
            await anyio.sleep(0.001)
            late = anyio.current_time() - before - 0.001
            worst_lag = max(worst_lag, late)
            if after_spawn:
                lag_after_spawn = max(lag_after_spawn, late)
            ticks += 1

    def inc(entry: dict[str, Any] | None) -> dict[str, Any]:
        return {"n": (entry["n"] if entry else 0) + 1, "pad": "x" * 200}

    options: dict[str, Any] = {"mode": mode, "flush_interval": 0.02}
    if bounded:
        options.update(max_pending_keys=64, max_pending_bytes=64 * 1024)
    # tracemalloc slows Python down several times, which would inflate the loop lag: the
    # tight-bounds run measures memory, the default run measures lag.
    measure_memory = bounded
    if measure_memory:
        tracemalloc.start()
    started = time.monotonic()
    peak = 0
    try:
        with anyio.fail_after(300):  # a deadlock fails here instead of hanging the suite
            async with open_plain(store_path, **options) as store, anyio.create_task_group() as outer:
                outer.start_soon(ticker)
                async with anyio.create_task_group() as tasks:
                    spawn_started = time.monotonic()
                    for i in range(scale.tasks):
                        tasks.start_soon(store.update, keys[i % len(keys)], inc)
                    spawn = time.monotonic() - spawn_started
                    spawned = True
                await store.flush()
                stop.set()
                stats = store.statistics()
        if measure_memory:
            _, peak = tracemalloc.get_traced_memory()
    finally:
        if measure_memory:
            tracemalloc.stop()
    elapsed = time.monotonic() - started
    final = await _read_all_async(store_path)
    assert len(final) == len(keys)
    assert all(final[key]["n"] == per_key for key in keys), "an increment was lost"
    # Generous bounds (the figures themselves go to docs/reliability.md): the queue and its
    # tasks are bounded; a leak or an unbounded table would be far beyond this.
    assert peak < 400 * 1024 * 1024
    assert worst_lag < 10.0
    record(
        "ten_thousand_tasks",
        scale=scale.name,
        mode=mode,
        bounded=bounded,
        tasks=scale.tasks,
        keys=len(keys),
        seconds=round(elapsed, 2),
        peak_mib=round(peak / 2**20, 1) if measure_memory else None,
        worst_loop_lag_ms=None if measure_memory else round(worst_lag * 1000, 1),
        worst_loop_lag_after_spawn_ms=None if measure_memory else round(lag_after_spawn * 1000, 1),
        spawn_ms=round(spawn * 1000, 1),
        ticks=ticks,
        writes=stats.writes,
        coalesced=stats.coalesced,
        batches=stats.flushes,
    )


async def _read_all_async(store_path: Path) -> dict[str, Any]:
    async with open_plain(store_path) as store:
        return {key: value async for key, value in store.items()}
