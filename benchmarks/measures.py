"""What is measured, the same way for every contender.

Latencies are wall-clock times of single awaited calls (``time.perf_counter``);
throughputs count calls completed in a run, including the final ``flush()``
(write-behind stores are not credited with work they have not done yet).
"Cold" means not in the store's own cache: a fresh store instance, or for the
whole-file legacy store a fresh instance per read. The operating system's page
cache stays warm for everyone (dropping it needs root and a quiet machine).
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from aiosessions._bench import (
    _EPOCH_MS,
    Contender,
    Summary,
    mixed_workload,
    paced_workload,
    timed,
    touch,
)

__all__ = [
    "Plan",
    "distinct_writes",
    "latency_suite",
    "memory_probe",
    "paced_workload",
]


@dataclass
class Plan:
    """How much of each measure to run; ``quick()`` shrinks everything for a smoke run."""

    samples: int = 200
    #: Seconds a slow contender may spend on one latency measure (at least 3 samples are taken).
    budget: float = 4.0
    cold_samples: int = 100
    open_samples: int = 5
    newest_samples: int = 5
    deletes: int = 30
    burst: int = 1_000
    mixed_seconds: float = 3.0
    paced_seconds: float = 3.0
    #: Offered load of the paced workload (operations per second across 100 tasks).
    paced_rate: float = 500.0
    distinct: int = 2_000

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            samples=20,
            budget=0.5,
            cold_samples=10,
            open_samples=2,
            newest_samples=2,
            deletes=3,
            burst=50,
            mixed_seconds=0.3,
            paced_seconds=0.3,
            paced_rate=200.0,
            distinct=100,
        )


async def _opened(contender: Contender, body: Callable[[], Any]) -> Any:
    await contender.open()
    try:
        return await body()
    finally:
        await contender.close()


async def latency_suite(
    make: Callable[[], Contender],
    keys: Sequence[str],
    *,
    plan: Plan,
    seed: int,
    delete_keys: Sequence[str],
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Every per-call measure of one contender on one store (deletes last: they change it)."""
    rng = random.Random(seed)
    hot = [rng.choice(keys) for _ in range(plan.samples)]
    updates = [rng.choice(keys) for _ in range(plan.samples)]
    cold = rng.sample(list(keys), min(plan.cold_samples, len(keys)))
    now_ms = _EPOCH_MS + 100
    out: dict[str, Any] = {}
    contender = make()
    name = contender.name

    async def warm_measures() -> None:
        progress(f"{name}: reads (hot), updates, newest 50, burst")
        for key in hot:
            await contender.get(key)
        out["get_hot"] = await timed(lambda i: contender.get(hot[i]), len(hot), budget=plan.budget)
        out["update"] = await timed(
            lambda i: contender.update(updates[i], touch(now_ms + i, 5)),
            len(updates),
            budget=plan.budget,
            before=lambda i: contender.get(updates[i]),
        )
        t0 = time.perf_counter()
        await contender.flush()
        out["flush_after_updates"] = time.perf_counter() - t0
        try:
            out["newest50"] = await timed(
                lambda i: contender.newest(50), plan.newest_samples, budget=plan.budget
            )
        except NotImplementedError:
            out["newest50"] = None
        burst_key = keys[0]
        done = 0
        start = time.perf_counter()
        while done < plan.burst and (done < 3 or time.perf_counter() - start < plan.budget):
            await contender.update(burst_key, touch(now_ms + 10_000 + done, 1))
            done += 1
        await contender.flush()
        seconds = time.perf_counter() - start
        out["burst"] = Summary(samples=done, seconds=seconds, ops=done, extra={"planned": plan.burst})

    await _opened(contender, warm_measures)

    progress(f"{name}: cold reads, cold open + first read")
    if contender.whole_file:

        async def cold_read(i: int) -> None:
            fresh = make()
            await fresh.open()
            try:
                await fresh.get(cold[i])
            finally:
                await fresh.close()

        out["get_cold"] = await timed(cold_read, len(cold), budget=plan.budget)
    else:
        fresh = make()
        out["get_cold"] = await _opened(
            fresh, lambda: timed(lambda i: fresh.get(cold[i]), len(cold), budget=plan.budget)
        )

    durations: list[float] = []
    started = time.perf_counter()
    for i in range(plan.open_samples):
        fresh = make()
        t0 = time.perf_counter()
        await fresh.open()
        try:
            await fresh.get(cold[i % len(cold)])
            durations.append(time.perf_counter() - t0)
        finally:
            await fresh.close()  # not part of the figure, but it must happen in this task
        if len(durations) >= 3 and time.perf_counter() - started > plan.budget:
            break
    out["open_first_read"] = Summary.of(durations)

    progress(f"{name}: deletes")
    deleter = make()

    async def deletes() -> Summary:
        result = await timed(lambda i: deleter.delete(delete_keys[i]), len(delete_keys), budget=plan.budget)
        await deleter.flush()
        return result

    out["delete"] = await _opened(deleter, deletes) if delete_keys else None
    return out


async def saturated_mixed(
    make: Callable[[], Contender], keys: Sequence[str], *, seconds: float, seed: int
) -> tuple[Summary, Summary]:
    """The mixed bot workload at full speed: 100 tasks, Zipf keys, 80% reads / 20% updates."""
    contender = make()
    await contender.open()
    try:
        await contender.get(keys[0])
        return await mixed_workload(contender, keys, seed=seed, duration=seconds)
    finally:
        await contender.close()


async def distinct_writes(
    make: Callable[[], Contender],
    keys: Sequence[str],
    values: Callable[[str], dict[str, Any]],
    *,
    tasks: int = 100,
    budget: float = 10.0,
) -> Summary:
    """Write ``keys`` (each once) from ``tasks`` concurrent tasks, then flush; one throughput.

    A slow store is stopped after ``budget`` seconds; only completed writes count.
    """
    contender = make()
    pending = iter(keys)
    prepared = {key: values(key) for key in keys}
    done = 0

    async def writer() -> None:
        nonlocal done
        for key in pending:
            await contender.set(key, prepared[key])
            done += 1

    await contender.open()
    try:
        start = time.perf_counter()
        with anyio.move_on_after(budget):
            async with anyio.create_task_group() as group:
                for _ in range(tasks):
                    group.start_soon(writer)
        await contender.flush()
        seconds = time.perf_counter() - start
    finally:
        await contender.close()
    return Summary(samples=done, seconds=seconds, ops=done, extra={"tasks": tasks, "planned": len(keys)})


def physical_writes(
    write: Callable[[str, bytes], None], keys: Sequence[str], payload: Callable[[str], bytes]
) -> Summary:
    """The physical limit of :func:`distinct_writes`: a plain synchronous loop."""
    data = {key: payload(key) for key in keys}
    start = time.perf_counter()
    for key in keys:
        write(key, data[key])
    seconds = time.perf_counter() - start
    return Summary(samples=len(keys), seconds=seconds, ops=len(keys), extra={"tasks": 1})


# -- memory: in a fresh process, so nothing else is counted ------------------------------------

_PROBE = r"""
import json, resource, sys, time, tracemalloc
kind, path, key = sys.argv[1], sys.argv[2], sys.argv[3]
import anyio
from pathlib import Path
from aiosessions._bench import AiosessionsContender, LegacyJsonContender
from benchmarks.contenders import DiskcacheContender, SqliteContender
makers = {
    "aiosessions": lambda: AiosessionsContender(Path(path)),
    "legacy JSON": lambda: LegacyJsonContender(Path(path)),
    "SQLite": lambda: SqliteContender(Path(path), fsync=False),
    "diskcache": lambda: DiskcacheContender(Path(path), fsync=False),
}
def rss_kib():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith("VmRSS"))
async def main():
    contender = makers[kind]()
    before = rss_kib()
    tracemalloc.start()
    await contender.open()
    entry = await contender.get(key)
    assert entry is not None, key
    await anyio.sleep(0.2)  # let background work that follows an open (a sweep) run
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    after = rss_kib()
    await contender.close()
    print(json.dumps({"python_peak": peak, "python_kept": current, "rss_growth": (after - before) * 1024}))
anyio.run(main)
"""


def memory_probe(kind: str, path: Path, key: str) -> dict[str, Any]:
    """Memory to open a store and read one session, measured in a fresh interpreter.

    ``python_peak``: the most Python heap in use at once (tracemalloc) from
    before opening until after the read; ``rss_growth``: resident memory added,
    which also counts C allocations (SQLite's page cache).
    """
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, kind, str(path), key],
        capture_output=True,
        text=True,
        cwd=root,
        check=False,
        timeout=300,
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None when either is missing or b is 0."""
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b
