"""``python -m benchmarks``: every contender, every measure; JSON, tables and charts.

Stages (each printed as it starts):

1. the headline store (650 sessions, 80 MB): per-call latencies, the mixed
   workload at full speed and at a paced load, for every contender;
2. the 10,000-session store: distinct-key write throughput and the mixed
   workload, for every contender;
3. scaling over 100, 1,000 and 10,000 sessions: update latency, cold open +
   first read, and memory (in a fresh process) for the main contenders;
4. migration time;
5. write cost: a one-field update of 2 KB vs 120 KB entries at every durability,
   the plain loop, and SQLite (the same measure as ``aiosessions bench --writes``), and
   on the Redis backend (``--writes --redis``; needs redis-server).
6. several processes on one Redis (``benchmarks/several_hosts.py``): the Redis backend against
   aiogram's GET/SET and the directory store, 1 to 8 processes (needs redis-server).
7. listings at scale: newest 50, keys, prefixes, counts, ``ls`` and the index's upkeep
   on 10,000 and 100,000 sessions (``benchmarks/listing.py``).
8. open + get one session + close at 100 to 100,000 sessions, against the
   physical floor (``aiosessions._bench.measure_open``, as in ``aiosessions bench``).

Results go to ``benchmarks/results/`` (``results.json``, ``tables.md``; the listing and Redis
stages also ``listing.md``/``.json`` and ``redis.md``/``.json``) and the PNG charts
to ``docs/assets/benchmarks/``, where the documentation site shows them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio

from aiosessions._bench import (
    DEFAULT_SEED,
    AiosessionsContender,
    Contender,
    LegacyJsonContender,
    Progress,
    Summary,
    WriteCostSettings,
    _jsonable,
    _versions,
    describe_machine,
    measure_open,
    redis_write_cost_report,
    run_redis_write_cost,
    run_write_cost,
    touch,
    write_cost_report,
)

from . import measures
from .contenders import AiofilesContender, DiskcacheContender, PhysicalLimit, SqliteContender
from .listing import stage_listing
from .measures import Plan
from .workload import Workload, build_workload

RESULTS = Path(__file__).resolve().parent / "results"
DOC_CHARTS = Path(__file__).resolve().parents[1] / "docs" / "assets" / "benchmarks"

Maker = Callable[[], Contender]


def contenders(work: Workload) -> list[tuple[str, bool, Maker]]:
    """Every contender on ``work``: (name, fsync, factory). Names are the keys of the results."""
    made: list[tuple[str, bool, Maker]] = []

    def add(name: str, fsync: bool, make: Callable[[str, bool], Contender]) -> None:
        made.append((name, fsync, lambda: make(name, fsync)))

    for fsync in (False, True):
        tag = " +fsync" if fsync else ""
        add(f"legacy JSON{tag}", fsync, lambda n, f: LegacyJsonContender(work.legacy, fsync=f, name=n))
        add(
            f"aiosessions write-behind{tag}",
            fsync,
            lambda n, f: AiosessionsContender(work.directory, name=n, fsync=f, flush_interval=0.05),
        )
        add(
            f"aiosessions write-through{tag}",
            fsync,
            lambda n, f: AiosessionsContender(work.directory, name=n, fsync=f, flush_interval=0),
        )
        if not fsync:
            add(
                "aiosessions JSON mode, write-behind",
                fsync,
                lambda n, f: AiosessionsContender(work.json_mode, name=n, fsync=f, mode="json"),
            )
        add(f"SQLite (aiosqlite){tag}", fsync, lambda n, f: SqliteContender(work.sqlite, fsync=f, name=n))
        add(f"diskcache{tag}", fsync, lambda n, f: DiskcacheContender(work.diskcache, fsync=f, name=n))
        add(f"aiofiles directory{tag}", fsync, lambda n, f: AiofilesContender(work.naive, fsync=f, name=n))
        add(
            f"physical limit{tag}",
            fsync,
            lambda n, f: PhysicalLimit(work.naive, work.payload, fsync=f, name=n),
        )
    return made


ALL_KINDS = {"legacy", "jsonmode", "directory", "sqlite", "diskcache"}
#: Store sizes of the open stage (issue 9.9: the cost of an open must not grow with them).
OPEN_SIZES = (100, 1_000, 10_000, 100_000)
OPEN_SIZES_QUICK = (100, 1_000)


async def stage_headline(
    work: Workload, plan: Plan, progress: Progress, only: set[str] | None
) -> dict[str, Any]:
    keys = work.keys
    chosen = [c for c in contenders(work) if only is None or c[0] in only]
    # Each contender deletes its own keys, kept out of every other measure.
    deletes = max(0, min(plan.deletes, len(keys) // (3 * len(chosen))))
    reserve = deletes * len(chosen)
    main_keys, spare = keys[: len(keys) - reserve], keys[len(keys) - reserve :]
    results: dict[str, Any] = {}
    for index, (name, _, make) in enumerate(chosen):
        await anyio.to_thread.run_sync(os.sync)  # as in stage_throughput
        row = await measures.latency_suite(
            make,
            main_keys,
            plan=plan,
            seed=work.seed + index,
            delete_keys=spare[index * deletes : (index + 1) * deletes],
            progress=progress.step,
        )
        progress.step(f"{name}: mixed workload, full speed and paced")
        row["mixed"], row["mixed_lag"] = await measures.saturated_mixed(
            make, main_keys, seconds=plan.mixed_seconds, seed=work.seed
        )
        row["paced"], row["paced_lag"] = await measures.paced_workload(
            make, main_keys, rate=plan.paced_rate, seconds=plan.paced_seconds, seed=work.seed
        )
        results[name] = row
    return results


async def stage_throughput(
    work: Workload, plan: Plan, progress: Progress, only: set[str] | None
) -> dict[str, Any]:
    keys = work.keys
    writes = keys[: min(plan.distinct, len(keys))]
    results: dict[str, Any] = {}
    for name, _, make in contenders(work):
        if only is not None and name not in only:
            continue
        progress.step(f"{name}: distinct-key writes, mixed workload ({len(keys):,} sessions)")
        row: dict[str, Any] = {}
        # Each contender starts with nothing dirty in the page cache: the stores' building (the
        # directory store's migration runs without fsync) and the contenders before it would
        # otherwise be written back inside the first fsync or syncfs that comes along.
        await anyio.to_thread.run_sync(os.sync)
        if name.startswith("physical limit"):
            limit = make()
            assert isinstance(limit, PhysicalLimit)
            row["distinct_writes"] = await anyio.to_thread.run_sync(
                lambda limit=limit: measures.physical_writes(limit.write, writes, work.payload)
            )
        else:
            row["distinct_writes"] = await measures.distinct_writes(
                make,
                writes,
                lambda key: touch(1_800_000_000_000, 1)(work.sessions[key]),
                budget=plan.budget * 2,
            )
        row["mixed"], row["mixed_lag"] = await measures.saturated_mixed(
            make, keys, seconds=plan.mixed_seconds, seed=work.seed
        )
        row["paced"], row["paced_lag"] = await measures.paced_workload(
            make, keys, rate=plan.paced_rate * 2, seconds=plan.paced_seconds, seed=work.seed
        )
        results[name] = row
    return results


SCALING = ("legacy JSON", "aiosessions write-behind", "SQLite (aiosqlite)", "diskcache")


async def stage_scaling(sizes: list[tuple[str, Workload]], plan: Plan, progress: Progress) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for size, work in sizes:
        by_name = {name: make for name, _, make in contenders(work)}
        probe_paths = {
            "legacy JSON": work.legacy,
            "aiosessions write-behind": work.directory,
            "SQLite (aiosqlite)": work.sqlite,
            "diskcache": work.diskcache,
        }
        kinds = {
            "legacy JSON": "legacy JSON",
            "aiosessions write-behind": "aiosessions",
            "SQLite (aiosqlite)": "SQLite",
            "diskcache": "diskcache",
        }
        for name in SCALING:
            progress.step(f"{name}: {len(work.keys):,} sessions: update, cold open + read, memory")
            make = by_name[name]
            keys = work.keys
            sample = work.sample(plan.samples, salt=7)
            contender = make()

            async def body(contender: Contender = contender, sample: list[str] = sample) -> Summary:
                return await measures.timed(
                    lambda n: contender.update(sample[n], touch(1_800_000_000_000 + n, 1)),
                    len(sample),
                    budget=plan.budget / 2,
                    before=lambda n: contender.get(sample[n]),
                )

            update = await measures._opened(contender, body)
            durations = []
            for i in range(plan.open_samples):
                fresh = make()
                t0 = time.perf_counter()
                await fresh.open()
                await fresh.get(keys[(i * 7919) % len(keys)])
                durations.append(time.perf_counter() - t0)
                await fresh.close()
            memory = await anyio.to_thread.run_sync(
                measures.memory_probe, kinds[name], probe_paths[name], keys[len(keys) // 2]
            )
            results.setdefault(name, {})[size] = {
                "sessions": len(keys),
                "bytes": work.legacy_bytes,
                "update": update,
                "open_first_read": Summary.of(durations),
                "memory": memory,
            }
    return results


async def stage_migration(work: Workload, folder: Path, progress: Progress) -> dict[str, Any]:
    """aiosessions.migrate with fsync on and off, beside one legacy rewrite and the physical limit."""
    from aiosessions import migrate

    progress.step(f"migration of the {work.name} store ({work.legacy_bytes / 1e6:.0f} MB)")
    out: dict[str, Any] = {"sessions": len(work.keys), "bytes": work.legacy_bytes}
    for fsync in (False, True):
        target = folder / f"migrate-{int(fsync)}" / "sessions.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        await anyio.to_thread.run_sync(shutil.copyfile, work.legacy, target)
        t0 = time.perf_counter()
        await migrate(target, fsync=fsync)
        out[f"migrate{'_fsync' if fsync else ''}"] = time.perf_counter() - t0
        await anyio.to_thread.run_sync(shutil.rmtree, target.parent)
        # The physical limit: the same files written in a plain loop (into fresh folders).
        limit_folder = folder / f"limit-{int(fsync)}"
        limit_folder.mkdir(parents=True, exist_ok=True)
        limit = PhysicalLimit(limit_folder, work.payload, fsync=fsync)
        written = await anyio.to_thread.run_sync(
            measures.physical_writes, limit.write, work.keys, work.payload
        )
        out[f"physical{'_fsync' if fsync else ''}"] = written.seconds
        await anyio.to_thread.run_sync(shutil.rmtree, limit_folder)
    # One legacy save: parse the whole file, render it indented by 2, write it.
    legacy = LegacyJsonContender(work.legacy)
    await legacy.open()
    key = work.keys[0]
    t0 = time.perf_counter()
    await legacy.update(key, lambda entry: entry)
    out["legacy_rewrite"] = time.perf_counter() - t0
    await legacy.close()
    return out


async def _redis_write_cost(settings: WriteCostSettings, folder: Path) -> dict[str, Any]:
    """``aiosessions bench --writes --redis`` on a redis-server started for it."""
    from .several_hosts import start_server

    server, port = start_server(folder)
    try:
        return await run_redis_write_cost(settings, f"redis://127.0.0.1:{port}/0", quiet=True)
    finally:
        server.kill()
        server.wait(10)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run of every stage (seconds)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed ({DEFAULT_SEED})")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results go (benchmarks/results)")
    parser.add_argument("--work", type=Path, default=None, help="where the stores are built (a temp folder)")
    parser.add_argument(
        "--stages",
        default="headline,throughput,scaling,migration,writes,redis,listing,open",
        help="comma-separated stages: headline, throughput, scaling, migration, writes, redis, listing, open",
    )
    parser.add_argument("--only", default=None, help="comma-separated contender names to run (default: all)")
    parser.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = Plan.quick() if args.quick else Plan()
    stages = set(args.stages.split(","))
    only = None if args.only is None else set(args.only.split(","))
    work_root = Path(tempfile.mkdtemp(prefix="aiosessions-benchmarks-", dir=args.work))
    started = time.perf_counter()
    # Each contender has a few steps per stage; the count only sizes the progress bar.
    progress = Progress(4 * 16 + 16 + 12 + 2)
    print(f"seed {args.seed}; stores in {work_root}", flush=True)
    results: dict[str, Any] = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": args.seed,
        "quick": args.quick,
        "plan": plan.__dict__,
        "machine": describe_machine(work_root),
        "stores": {},
    }
    results["machine"]["packages"].update(_versions(("aiosqlite", "diskcache", "aiofiles", "matplotlib")))
    results["machine"]["load_average_at_start"] = os.getloadavg()
    # The quick run shrinks the stores too: the headline keeps its 123 KB entries.
    counts = {"headline": 40, "10k": 300, "1k": 100, "100": 30} if args.quick else {}
    try:
        if "headline" in stages:
            progress.step("building the headline store (650 sessions, 80 MB)")
            work = await build_workload(
                "headline",
                work_root / "headline",
                seed=args.seed,
                kinds=ALL_KINDS,
                count=counts.get("headline"),
            )
            results["stores"]["headline"] = {"sessions": len(work.keys), "bytes": work.legacy_bytes}
            results["headline"] = await stage_headline(work, plan, progress, only)
            if "migration" in stages:
                results["migration"] = {"headline": await stage_migration(work, work_root / "mig", progress)}
            if "listing" in stages:
                results["listing"] = await stage_listing(
                    work_root, seed=args.seed, quick=args.quick, headline=work, progress=progress.step
                )
            shutil.rmtree(work.folder)
        sizes: list[tuple[str, Workload]] = []
        if "throughput" in stages or "scaling" in stages:
            progress.step("building the 10,000-session store")
            work = await build_workload(
                "10k", work_root / "10k", seed=args.seed, kinds=ALL_KINDS, count=counts.get("10k")
            )
            results["stores"]["10k"] = {"sessions": len(work.keys), "bytes": work.legacy_bytes}
            if "throughput" in stages:
                results["throughput"] = await stage_throughput(work, plan, progress, only)
            if "migration" in stages:
                results.setdefault("migration", {})["10k"] = await stage_migration(
                    work, work_root / "mig", progress
                )
            if "scaling" in stages:
                # The throughput stage changed this store; rebuild it for the scaling stage.
                work = await build_workload(
                    "10k", work_root / "10k", seed=args.seed, kinds=ALL_KINDS, count=counts.get("10k")
                )
                sizes.append(("10k", work))
        if "scaling" in stages:
            for size in ("100", "1k"):
                progress.step(f"building the {size}-session store")
                small = await build_workload(
                    size, work_root / size, seed=args.seed, kinds=ALL_KINDS, count=counts.get(size)
                )
                sizes.insert(len(sizes) - 1 if sizes and sizes[-1][0] == "10k" else len(sizes), (size, small))
            sizes.sort(key=lambda item: len(item[1].keys))
            results["scaling"] = await stage_scaling(sizes, plan, progress)
        if "writes" in stages:
            settings = WriteCostSettings(seed=args.seed)
            if args.quick:
                settings.sessions, settings.samples, settings.distinct, settings.budget = 20, 20, 100, 1.0
            writes = await run_write_cost(settings, folder=work_root, quiet=True)
            writes["table"] = write_cost_report(writes)
            progress.step("write cost on Redis (a redis-server of its own)")
            writes["redis"] = await _redis_write_cost(settings, work_root / "writes-redis")
            writes["table"] += "\n\n" + redis_write_cost_report(writes["redis"])
            results["writes"] = writes
        if "redis" in stages:
            from . import several_hosts

            results["redis"] = await several_hosts.run_stage(
                work_root / "redis",
                seconds=0.3 if args.quick else 3.0,
                processes=(1, 2) if args.quick else several_hosts.PROCESSES,
                seed=args.seed,
                step=progress.step,
            )
        if "listing" in stages and "listing" not in results:
            results["listing"] = await stage_listing(
                work_root, seed=args.seed, quick=args.quick, headline=None, progress=progress.step
            )
        if "open" in stages:
            results["open"] = []
            for size in OPEN_SIZES_QUICK if args.quick else OPEN_SIZES:
                progress.step(f"aiosessions: open + get one session + close, {size:,} sessions")
                folder = work_root / "open"
                results["open"].append(await measure_open(folder, size, samples=100 if args.quick else 1000))
                shutil.rmtree(folder)
    finally:
        progress.close()
        shutil.rmtree(work_root, ignore_errors=True)
    results["seconds"] = time.perf_counter() - started
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = anyio.run(run, args)
    from . import report

    args.out.mkdir(parents=True, exist_ok=True)
    data = _jsonable(results)
    name = "results-quick.json" if args.quick else "results.json"
    (args.out / name).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tables = report.tables(data)
    (args.out / ("tables-quick.md" if args.quick else "tables.md")).write_text(tables, encoding="utf-8")
    if "listing" in data:
        # Its own file too: docs/benchmarks.md shows it in its own section.
        from .listing import table

        stem = "listing-quick" if args.quick else "listing"
        (args.out / f"{stem}.md").write_text(table(data["listing"], header=False), encoding="utf-8")
        listing = json.dumps(data["listing"], indent=2, ensure_ascii=False) + "\n"
        (args.out / f"{stem}.json").write_text(listing, encoding="utf-8")
    if "redis" in data:
        from .several_hosts import tables as redis_tables

        stem = "redis-quick" if args.quick else "redis"
        (args.out / f"{stem}.md").write_text(redis_tables(data["redis"]), encoding="utf-8")
        redis = json.dumps(data["redis"], indent=2, ensure_ascii=False) + "\n"
        (args.out / f"{stem}.json").write_text(redis, encoding="utf-8")
    print(tables)
    if not args.no_charts:
        # The documentation site shows the charts of the last full run, so a full run
        # into the default folder draws them there (one copy of each in the tree).
        charts = DOC_CHARTS if not args.quick and args.out == RESULTS else args.out
        charts.mkdir(parents=True, exist_ok=True)
        for path in report.charts(data, charts, suffix="-quick" if args.quick else ""):
            print(f"chart: {path}")
    print(f"results: {args.out / name} ({results['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
