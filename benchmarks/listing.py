"""Listings at scale (the ``listing`` stage of ``python -m benchmarks``; docs/benchmarks.md).

On stores of 10,000 and 100,000 small sessions (about 1-3 KB each, as a busy gateway's
are between large prompts) and on the 80 MB headline store, in one run:

* the newest 50 sessions (keys and ``updatedAt``) against SQLite's indexed
  ``ORDER BY updated_at DESC LIMIT 50`` on the same sessions (goal: within 10x);
* ``keys()`` against a plain ``os.scandir`` of the store folder plus decoding the names
  (goal: within 3x), ``count()``, and prefix listings matching 10, 100 and 1,000 sessions
  on both sizes (goal: time in proportion to the matches, not to the store);
* ``aiosessions ls -n 50`` against ``aiosessions show`` of one session, each a fresh process
  (goal: within 2x at 100,000 sessions);
* the peak memory of a fresh process listing the newest 50 and all keys, at both sizes
  (goal: the same at both);
* the cost of keeping the index on each write: write-behind and write-through update
  throughput with the index against the same store without one (goal: within 10%).

Run alone: ``python -m benchmarks --stages listing`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

import aiosessions
from aiosessions._bench import _Text, encode_legacy, make_entry, touch
from aiosessions._keys import decode_name

from .contenders import SqliteContender
from .workload import build_workload

__all__ = ["stage_listing", "table"]

#: Sessions per group of keys: prefixes "agent:gNNNN:" of these sizes exist in every store.
PREFIX_SIZES = (10, 100, 1000)


def small_sessions(count: int, seed: int) -> dict[str, dict[str, Any]]:
    """``count`` OpenClaw-shaped entries of about 1-3 KB, keyed ``agent:gNNNN:telegram:direct:N``.

    Group 0 holds 10 sessions, group 1 100, group 2 1,000 and every other group 100, so that
    a prefix of each size exists in every store.
    """
    rng = random.Random(seed)
    text = _Text(rng)
    sessions: dict[str, dict[str, Any]] = {}
    group, left = 0, PREFIX_SIZES[0]
    for i in range(count):
        if left == 0:
            group += 1
            left = PREFIX_SIZES[group] if group < len(PREFIX_SIZES) else 100
        left -= 1
        key = f"agent:g{group:04d}:telegram:direct:{rng.randrange(10**9)}{i}"
        sessions[key] = make_entry(rng, key, i, text, rng.randrange(0, 2_000))
    return sessions


async def build(folder: Path, sessions: dict[str, dict[str, Any]]) -> tuple[Path, Path]:
    """A directory store (made by migrate, so without an index yet) and a SQLite database."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    legacy = folder / "sessions.json"
    legacy.write_bytes(encode_legacy(sessions))
    await aiosessions.migrate(legacy, fsync=False)
    for backup in folder.glob("sessions.json.pre-directory-migration.*"):
        backup.unlink()
    database = folder / "sqlite" / "sessions.db"
    database.parent.mkdir()
    SqliteContender.build(database, sessions)
    return legacy, database


def stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50": statistics.median(ordered), "min": ordered[0], "n": len(ordered)}


async def sample(op: Callable[[], Awaitable[Any]], count: int, budget: float = 3.0) -> dict[str, float]:
    durations: list[float] = []
    start = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter()
        await op()
        durations.append(time.perf_counter() - t0)
        if len(durations) >= 5 and time.perf_counter() - start > budget:
            break
    return stats(durations)


def sample_sync(op: Callable[[], Any], count: int, budget: float = 3.0) -> dict[str, float]:
    durations: list[float] = []
    start = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter()
        op()
        durations.append(time.perf_counter() - t0)
        if len(durations) >= 5 and time.perf_counter() - start > budget:
            break
    return stats(durations)


def scan_and_decode(folder: Path) -> int:
    """The floor of listing keys: one ``os.scandir`` of the store folder, each name decoded."""
    count = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith(".") or name == "FORMAT":
                continue
            try:
                decode_name(name)
            except ValueError:
                continue  # a shortened name: its key is in a file (none in these stores)
            count += 1
    return count


def run_cli(*args: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "aiosessions", *args], check=True, capture_output=True)
    return time.perf_counter() - started


PEAK = """
import sys, anyio, aiosessions
async def main():
    async with aiosessions.open_store(sys.argv[1], entry_type=dict, flush_interval=3600, fsync=False) as s:
        if sys.argv[2] == "newest":
            await s.newest(50)
        elif sys.argv[2] == "keys":
            async for _ in s.keys():
                pass
        else:
            await s.get(sys.argv[3])
anyio.run(main)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent's image across exec.
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def peak_kib(path: Path, what: str, key: str = "") -> int:
    """The peak resident memory (KiB) of a fresh process that opens the store and lists."""
    done = subprocess.run(
        [sys.executable, "-c", PEAK, str(path), what, key], check=True, capture_output=True, text=True
    )
    return int(done.stdout.split()[-1])


async def upkeep(
    folder: Path, sessions: dict[str, dict[str, Any]], *, blocks: int, size: int
) -> dict[str, Any]:
    """Update throughput on two copies of one store, one with the index and one without it.

    Both are open at once and take turns, a block of updates each (write-behind: ``size``
    updates and a flush; write-through: ``size // 8`` updates), so that a machine busy with
    other work slows both alike; the median block rate of each is compared.
    """
    paths = {}
    for kind in ("without", "with"):
        paths[kind], _ = await build(folder / kind, sessions)
    keys = list(sessions)
    out: dict[str, Any] = {}
    for name, interval, count in (("write-behind", 0.05, size), ("write-through", 0.0, max(1, size // 8))):
        rates: dict[str, list[float]] = {"without": [], "with": []}
        async with (
            aiosessions.open_store(
                paths["without"], entry_type=dict, flush_interval=interval, fsync=False
            ) as a,
            aiosessions.open_store(paths["with"], entry_type=dict, flush_interval=interval, fsync=False) as b,
        ):
            await b.count()  # builds the index of this copy only
            rng = random.Random(len(name))
            for block in range(blocks * 2):
                kind, store = ("without", a) if block % 2 == 0 else ("with", b)
                chosen = [rng.choice(keys) for _ in range(count)]
                started = time.perf_counter()
                for i, key in enumerate(chosen):
                    await store.update(key, touch(1_800_000_000_000 + block * count + i, i))
                await store.flush()
                rates[kind].append(count / (time.perf_counter() - started))
        without, with_index = statistics.median(rates["without"]), statistics.median(rates["with"])
        out[name] = {"without": without, "with": with_index, "ratio": with_index / without}
    for path in paths.values():
        shutil.rmtree(path.parent, ignore_errors=True)
    return out


async def measure_store(
    label: str,
    folder: Path,
    sessions: dict[str, dict[str, Any]],
    *,
    quick: bool,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    legacy, database = await build(folder, sessions)
    path = legacy  # the directory store sits beside it, in sessions.d
    out: dict[str, Any] = {"sessions": len(sessions)}
    samples = 20 if quick else 200
    progress(f"listing, {len(sessions):,} sessions: first listing (builds the index), newest 50, count")
    async with aiosessions.open_store(path, entry_type=dict, flush_interval=3600, fsync=False) as store:
        started = time.perf_counter()
        await store.count()
        out["first_listing"] = time.perf_counter() - started
        out["newest50"] = await sample(lambda: store.newest(50), samples)
        page = await store.newest(50)
        out["newest50_page2"] = await sample(lambda: store.newest(50, after=page[-1]), samples)
        out["count"] = await sample(store.count, samples)

        async def all_keys() -> int:
            return sum([1 async for _ in store.keys()])

        progress(f"listing, {len(sessions):,} sessions: keys(), prefixes")
        out["keys"] = await sample(all_keys, 3 if quick else 7, budget=10.0)
        prefixes: dict[str, Any] = {}
        for group, size in enumerate(PREFIX_SIZES):
            prefix = f"agent:g{group:04d}:"

            async def listed(prefix: str = prefix) -> list[str]:
                return [key async for key in store.keys(prefix)]

            matched = len(await listed())
            if matched:
                timing = await sample(listed, samples // 4)
                prefixes[str(size)] = {**timing, "matches": matched, "per_match": timing["p50"] / matched}
        out["prefix"] = prefixes
    store_folder = path.with_name("sessions.d")
    out["scan_floor"] = sample_sync(lambda: scan_and_decode(store_folder), 3 if quick else 7, budget=10.0)
    with sqlite3.connect(database) as db:
        query = "SELECT key, updated_at FROM sessions ORDER BY updated_at DESC LIMIT 50"
        assert "USING INDEX" in " ".join(str(r) for r in db.execute(f"EXPLAIN QUERY PLAN {query}"))
        out["sqlite_newest50"] = sample_sync(lambda: db.execute(query).fetchall(), samples)
    progress(f"listing, {len(sessions):,} sessions: aiosessions ls -n 50 and show, peak memory")
    key = next(iter(sessions))
    runs = 3 if quick else 7
    out["cli_ls50"] = stats([run_cli("ls", "-n", "50", str(path)) for _ in range(runs)])
    out["cli_show"] = stats([run_cli("show", str(path), key) for _ in range(runs)])
    out["peak_kib"] = {
        "get": peak_kib(path, "get", key),
        "newest": peak_kib(path, "newest"),
        "keys": peak_kib(path, "keys"),
    }
    out["ratios"] = {
        "newest50_vs_sqlite": out["newest50"]["p50"] / out["sqlite_newest50"]["p50"],
        "keys_vs_scan": out["keys"]["p50"] / out["scan_floor"]["p50"],
        "ls_vs_show": out["cli_ls50"]["p50"] / out["cli_show"]["p50"],
    }
    if label == "10k":
        progress("listing: update throughput with and without the index")
        out["upkeep"] = await upkeep(
            folder / "upkeep", sessions, blocks=5 if quick else 30, size=200 if quick else 1000
        )
    return out


async def stage_listing(
    root: Path, *, seed: int, quick: bool, headline: Any | None, progress: Callable[[str], None]
) -> dict[str, Any]:
    """Every listing measure; ``headline`` is the headline workload if the run built it (else
    this stage builds its own, with the directory store and SQLite only)."""
    results: dict[str, Any] = {"sizes": {}}
    for label, count in (("10k", 300 if quick else 10_000), ("100k", 3_000 if quick else 100_000)):
        progress(f"listing: building {count:,} small sessions")
        sessions = await anyio.to_thread.run_sync(small_sessions, count, seed)
        results["sizes"][label] = await measure_store(
            label, root / f"listing-{label}", sessions, quick=quick, progress=progress
        )
        shutil.rmtree(root / f"listing-{label}", ignore_errors=True)
    built = headline is None
    if built:
        progress("listing: building the headline store (650 sessions, 80 MB)")
        headline = await build_workload(
            "headline",
            root / "listing-headline",
            seed=seed,
            kinds={"directory", "sqlite"},
            count=40 if quick else None,
        )
    progress("listing: newest 50 on the headline store")
    async with aiosessions.open_store(headline.directory, flush_interval=3600, fsync=False) as store:
        await store.count()
        mine = await sample(lambda: store.newest(50), 20 if quick else 200)
    with sqlite3.connect(headline.sqlite) as db:
        query = "SELECT key, updated_at FROM sessions ORDER BY updated_at DESC LIMIT 50"
        theirs = sample_sync(lambda: db.execute(query).fetchall(), 20 if quick else 200)
    results["headline"] = {
        "sessions": len(headline.keys),
        "bytes": headline.legacy_bytes,
        "newest50": mine,
        "sqlite_newest50": theirs,
        "ratio": mine["p50"] / theirs["p50"],
    }
    if built:
        shutil.rmtree(headline.folder, ignore_errors=True)
    return results


def _t(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


def _x(value: float | None, goal: float) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}x ({'met' if value <= goal else 'missed'}: goal <= {goal:g}x)"


def table(results: dict[str, Any], *, header: bool = True) -> str:
    """The markdown tables of the listing stage (under a heading of their own with ``header``)."""
    sizes = results.get("sizes", {})
    lines = ["### Listings", ""] if header else []
    lines += [
        "| measure | " + " | ".join(f"{s['sessions']:,} sessions" for s in sizes.values()) + " |",
        "|---|" + "---|" * len(sizes),
    ]

    def row(name: str, cells: list[str]) -> None:
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    each = list(sizes.values())
    row("newest 50 (aiosessions)", [_t(s["newest50"]["p50"]) for s in each])
    row("newest 50, next page", [_t(s["newest50_page2"]["p50"]) for s in each])
    row("SQLite `ORDER BY updated_at DESC LIMIT 50`", [_t(s["sqlite_newest50"]["p50"]) for s in each])
    row("**newest 50 / SQLite**", [_x(s["ratios"]["newest50_vs_sqlite"], 10) for s in each])
    row("count()", [_t(s["count"]["p50"]) for s in each])
    row("keys(), all", [_t(s["keys"]["p50"]) for s in each])
    row("os.scandir + decoding the names", [_t(s["scan_floor"]["p50"]) for s in each])
    row("**keys() / scan**", [_x(s["ratios"]["keys_vs_scan"], 3) for s in each])
    for size in map(str, PREFIX_SIZES):
        row(
            f"keys(prefix) matching {int(size):,}",
            [
                f"{_t(s['prefix'][size]['p50'])} ({_t(s['prefix'][size]['per_match'])}/match)"
                if size in s["prefix"]
                else "—"
                for s in each
            ],
        )
    row("`aiosessions ls -n 50` (fresh process)", [_t(s["cli_ls50"]["p50"]) for s in each])
    row("`aiosessions show KEY` (fresh process)", [_t(s["cli_show"]["p50"]) for s in each])
    row("**ls -n 50 / show**", [_x(s["ratios"]["ls_vs_show"], 2) for s in each])
    row("peak memory: open + get", [f"{s['peak_kib']['get'] / 1024:.1f} MiB" for s in each])
    row("peak memory: open + newest 50", [f"{s['peak_kib']['newest'] / 1024:.1f} MiB" for s in each])
    row("peak memory: open + every key", [f"{s['peak_kib']['keys'] / 1024:.1f} MiB" for s in each])
    row("first listing (builds the index)", [_t(s["first_listing"]) for s in each])
    head = results.get("headline")
    if head:
        lines += [
            "",
            f"Headline store ({head['sessions']:,} sessions, {head['bytes'] / 1e6:.0f} MB legacy file): "
            f"newest 50 {_t(head['newest50']['p50'])}, SQLite "
            f"{_t(head['sqlite_newest50']['p50'])}: {_x(head['ratio'], 10)}.",
        ]
    for s in each:
        upkeep_rows = s.get("upkeep")
        if not upkeep_rows:
            continue
        lines += [
            "",
            f"Index upkeep ({s['sessions']:,} sessions, fsync off, update() of random keys):",
            "",
            "| update throughput | without the index | with it | with / without |",
            "|---|---|---|---|",
        ]
        for name, found in upkeep_rows.items():
            lines.append(
                f"| {name} | {found['without']:,.0f}/s | {found['with']:,.0f}/s | "
                f"{found['ratio']:.2f} ({'met' if found['ratio'] >= 0.9 else 'missed'}: goal >= 0.90) |"
            )
    return "\n".join(lines) + "\n"
