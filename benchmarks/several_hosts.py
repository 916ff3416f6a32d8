"""The Redis section of ``python -m benchmarks``: 1 to 8 processes ("hosts") on one Redis.

Contenders, all on one redis-server this module starts (AOF on, ``appendfsync everysec``, on a
free port in the work folder), except the directory store, which the processes share on disk:

- **aiosessions Redis, write-behind** (``flush_interval=0.05``) and **write-through**
  (``flush_interval=0``: each ``update()`` returns once its batch landed);
- **aiogram-style GET/SET**: what aiogram's ``RedisStorage`` does with redis-py, a JSON value
  per key, read with GET and written with SET: no compare-and-swap, so processes updating one
  key lose each other's updates (counted below);
- **aiosessions directory store, write-behind**, fsync off (the same crash promise as an AOF
  with ``everysec``: a process crash loses nothing acknowledged, a power loss may).

Measures, each run at full speed for a few seconds by every process at once, over 2,000
sessions of about 1.5 KB with a skewed (Zipf-like) choice of keys, as chats are:

- **message**: a bot handling a message: read the session, then update it (+1 ``messages``,
  new ``updatedAt``);
- **update**: the update alone; **read**: ``get`` alone;
- **newest 50**: the 50 most recently updated sessions with their ``updatedAt`` (aiogram's
  storage has no index: SCAN its keys, MGET them, sort).

For each, the table shows operations per second summed over the processes, Redis round trips
per operation (commands for the aiogram style; pipelines and scripts for aiosessions), and for
the measures that update, the updates lost: increments the processes made minus what the store
holds afterwards. Run ``python -m benchmarks.several_hosts --quick`` for this section alone.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from bisect import bisect
from collections.abc import Callable, Iterable
from itertools import accumulate
from pathlib import Path
from typing import Any

import anyio

__all__ = ["charts", "run_stage", "tables"]

SESSIONS = 2_000
PROCESSES = (1, 2, 4, 8)
MEASURES = ("message", "update", "read", "newest50")
CONTENDERS = (
    "aiosessions Redis, write-behind",
    "aiosessions Redis, write-through",
    "aiogram-style GET/SET",
    "aiosessions directory, write-behind",
)
AIOGRAM = "aiogram-style GET/SET"
PREFIX = "bench"


# -- the server -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server is not installed: the Redis benchmarks need one")
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    process = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(folder),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--logfile",
            "redis.log",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return process, port
        except OSError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError(f"redis-server did not start on port {port}")
        time.sleep(0.05)


# -- the sessions -----------------------------------------------------------------------------


def session(n: int, rng: random.Random) -> dict[str, Any]:
    return {
        "sessionId": f"{n:08x}-{rng.getrandbits(64):016x}",
        "updatedAt": 1_700_000_000_000 + n,
        "channel": "telegram",
        "messages": 0,
        "deliveryContext": {"chatId": n, "note": "x" * rng.randrange(900, 1400)},
    }


def keys() -> list[str]:
    return [f"agent:main:telegram:direct:{n}" for n in range(SESSIONS)]


class Chooser:
    """Keys by a Zipf-like law (weight 1/rank): a few busy chats, many quiet ones."""

    def __init__(self, rng: random.Random) -> None:
        self._keys = keys()
        rng.shuffle(self._keys)
        self._cumulative = list(accumulate(1 / (rank + 1) for rank in range(len(self._keys))))
        self._rng = rng

    def __call__(self) -> str:
        return self._keys[bisect(self._cumulative, self._rng.random() * self._cumulative[-1])]


def bump(entry: dict[str, Any] | None) -> dict[str, Any]:
    entry = dict(entry or {})
    entry["messages"] = entry.get("messages", 0) + 1
    entry["updatedAt"] = int(time.time() * 1000)
    return entry


# -- the contenders (in the worker processes) ---------------------------------------------------


class AiogramStyle:
    """A JSON value per key with GET and SET, as aiogram's RedisStorage keeps FSM data."""

    def __init__(self, port: int) -> None:
        import redis.asyncio as aioredis

        self.client = aioredis.Redis(port=port)
        self.round_trips = 0

    async def get(self, key: str) -> Any:
        self.round_trips += 1
        raw = await self.client.get(f"{PREFIX}-aiogram:{key}")
        return None if raw is None else json.loads(raw)

    async def update(self, key: str, fn: Callable[[Any], Any]) -> None:
        value = fn(await self.get(key))
        self.round_trips += 1
        await self.client.set(f"{PREFIX}-aiogram:{key}", json.dumps(value))

    async def newest(self, n: int) -> list[tuple[str, Any]]:
        found = []
        cursor = 0
        while True:
            cursor, batch = await self.client.scan(cursor, match=f"{PREFIX}-aiogram:*", count=1000)
            self.round_trips += 1
            if batch:
                values = await self.client.mget(batch)
                self.round_trips += 1
                found += [
                    (key.decode().split(":", 1)[1], json.loads(raw).get("updatedAt"))
                    for key, raw in zip(batch, values, strict=True)
                    if raw is not None
                ]
            if cursor == 0:
                break
        found.sort(key=lambda pair: -(pair[1] or 0))
        return found[:n]

    async def flush(self) -> None:
        pass

    async def close(self) -> None:
        await self.client.aclose()

    def trips(self) -> int:
        return self.round_trips


class Aiosessions:
    """An aiosessions store (Redis or directory) behind the same four calls."""

    def __init__(self, target: str, **options: Any) -> None:
        self._target = target
        self._options = options
        self._context: Any = None
        self.store: Any = None

    async def open(self) -> None:
        from aiosessions import open_store

        self._context = open_store(self._target, entry_type=dict, **self._options)
        self.store = await self._context.__aenter__()

    async def get(self, key: str) -> Any:
        return await self.store.get(key)

    async def update(self, key: str, fn: Callable[[Any], Any]) -> None:
        await self.store.update(key, fn)

    async def newest(self, n: int) -> list[tuple[str, Any]]:
        if hasattr(self.store, "newest"):
            return list(await self.store.newest(n))
        backend = self.store.backend
        if hasattr(backend, "newest"):
            return list(await backend.newest(n))
        pairs = [(key, await self.store.updated_at(key)) async for key in self.store.keys()]
        pairs.sort(key=lambda pair: (pair[1] is None, -(pair[1] or 0), pair[0]))
        return pairs[:n]

    async def flush(self) -> None:
        await self.store.flush()

    async def close(self) -> None:
        await self._context.__aexit__(None, None, None)

    def trips(self) -> int:
        return int(self.store.backend.counters().get("round_trips", 0))

    def conflicts(self) -> int:
        return int(self.store.statistics().conflicts)


def _contender(name: str, port: int, folder: str) -> Any:
    url = f"redis://127.0.0.1:{port}/0?prefix={PREFIX}"
    if name == AIOGRAM:
        return AiogramStyle(port)
    if name == "aiosessions Redis, write-behind":
        return Aiosessions(url, flush_interval=0.05)
    if name == "aiosessions Redis, write-through":
        return Aiosessions(url, flush_interval=0)
    return Aiosessions(str(Path(folder) / "sessions.json"), flush_interval=0.05, fsync=False)


async def worker(config: dict[str, Any]) -> None:
    """One process of a run: wait for ``go``, run the measure for ``seconds``, report."""
    contender = _contender(config["contender"], config["port"], config["folder"])
    if hasattr(contender, "open"):
        await contender.open()
    rng = random.Random(config["seed"])
    choose = Chooser(rng)
    measure = config["measure"]
    print("ready", flush=True)
    await anyio.to_thread.run_sync(sys.stdin.readline)
    trips = contender.trips()
    started = time.perf_counter()
    deadline = started + config["seconds"]
    ops = 0
    while time.perf_counter() < deadline:
        for _ in range(20):
            key = choose()
            if measure == "message":
                await contender.get(key)
                await contender.update(key, bump)
            elif measure == "update":
                await contender.update(key, bump)
            elif measure == "read":
                await contender.get(key)
            else:
                await contender.newest(50)
            ops += 1
    await contender.flush()
    seconds = time.perf_counter() - started
    trips = contender.trips() - trips
    report = {"ops": ops, "seconds": seconds, "round_trips": trips}
    if hasattr(contender, "conflicts"):
        report["conflicts"] = contender.conflicts()  # writes re-applied to another process's change
    await contender.close()
    print(json.dumps(report), flush=True)


# -- the stage (in the benchmark's process) -----------------------------------------------------


async def _populate(port: int, folder: Path, seed: int) -> None:
    import redis.asyncio as aioredis

    from aiosessions import open_store

    rng = random.Random(seed)
    data = {key: session(n, rng) for n, key in enumerate(keys())}
    client = aioredis.Redis(port=port)
    try:
        await client.mset({f"{PREFIX}-aiogram:{key}": json.dumps(value) for key, value in data.items()})
    finally:
        await client.aclose()
    for target in (f"redis://127.0.0.1:{port}/0?prefix={PREFIX}", str(folder / "sessions.json")):
        options: dict[str, Any] = {} if target.startswith("redis") else {"fsync": False}
        async with open_store(target, entry_type=dict, flush_interval=1, **options) as store:
            for key, value in data.items():
                await store.set(key, value)


async def _messages(contender: str, port: int, folder: Path) -> int:
    """The sum of ``messages`` over every session of ``contender``'s store."""
    if contender == AIOGRAM:
        import redis.asyncio as aioredis

        client = aioredis.Redis(port=port)
        try:
            raw = await client.mget([f"{PREFIX}-aiogram:{key}" for key in keys()])
        finally:
            await client.aclose()
        return sum(json.loads(value)["messages"] for value in raw if value is not None)
    from aiosessions import open_store

    target = (
        str(folder / "sessions.json")
        if "directory" in contender
        else f"redis://127.0.0.1:{port}/0?prefix={PREFIX}"
    )
    async with open_store(target, entry_type=dict) as store:
        return sum([entry.get("messages", 0) async for _, entry in store.items()])


def _run(config: dict[str, Any], processes: int) -> list[dict[str, Any]]:
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.several_hosts",
                "worker",
                json.dumps({**config, "seed": config["seed"] + n}),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        for n in range(processes)
    ]
    try:
        for process in workers:
            assert process.stdout is not None
            line = process.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(
                    f"a benchmark worker failed: {line}{process.stderr.read() if process.stderr else ''}"
                )
        for process in workers:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        reports = []
        for process in workers:
            out, err = process.communicate(timeout=120 + config["seconds"])
            if process.returncode != 0:
                raise RuntimeError(f"a benchmark worker failed: {err[-2000:]}")
            reports.append(json.loads(out.strip().splitlines()[-1]))
        return reports
    finally:
        for process in workers:
            if process.poll() is None:
                process.kill()


async def run_stage(
    folder: Path,
    *,
    seconds: float,
    processes: Iterable[int] = PROCESSES,
    contenders: Iterable[str] = CONTENDERS,
    measures: Iterable[str] = MEASURES,
    rounds: int = 1,
    seed: int = 1,
    step: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every contender, measure and process count; ``{contender: {measure: {processes: row}}}``.

    The contenders take turns for each measure and process count, ``rounds`` times (their
    order rotating), so that they share the machine's moods: a row's ``rate`` is the median of
    its rounds (all in ``rates``); ops, round trips and lost updates add up over the rounds.
    """
    contenders = tuple(contenders)
    server, port = start_server(folder / "redis")
    results: dict[str, Any] = {
        "sessions": SESSIONS,
        "seconds_per_run": seconds,
        "rounds": rounds,
        "contenders": {name: {} for name in contenders},
    }
    try:
        step(f"Redis: storing {SESSIONS:,} sessions for every contender")
        await _populate(port, folder, seed)
        for measure in measures:
            for count in processes:
                for turn in range(rounds):
                    first = turn % len(contenders)
                    for contender in contenders[first:] + contenders[:first]:
                        step(f"Redis: {measure}, {count} process(es), round {turn + 1}: {contender}")
                        row = await _one_run(contender, measure, count, port, folder, seconds, seed)
                        rows = results["contenders"][contender].setdefault(measure, {})
                        rows[str(count)] = _add_round(rows.get(str(count)), row)
    finally:
        server.kill()
        server.wait(10)
    return results


async def _one_run(
    contender: str, measure: str, count: int, port: int, folder: Path, seconds: float, seed: int
) -> dict[str, Any]:
    before = await _messages(contender, port, folder) if measure in ("message", "update") else 0
    config = {
        "contender": contender,
        "measure": measure,
        "port": port,
        "folder": str(folder),
        "seconds": seconds,
        "seed": seed * 1000 + count,
    }
    reports = await anyio.to_thread.run_sync(_run, config, count)
    ops = sum(report["ops"] for report in reports)
    span = max(report["seconds"] for report in reports)
    row: dict[str, Any] = {
        "ops": ops,
        "seconds": span,
        "round_trips": sum(report["round_trips"] for report in reports),
        "rates": [ops / span if span > 0 else math.nan],
    }
    if all("conflicts" in report for report in reports):
        row["conflicts"] = sum(report["conflicts"] for report in reports)
    if measure in ("message", "update"):
        after = await _messages(contender, port, folder)
        row["lost_updates"] = ops - (after - before)
    return row


def _add_round(row: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    if row is not None:
        new = {
            name: row[name] + value if name != "seconds" else max(row[name], value)
            for name, value in new.items()
        }
    new["rate"] = statistics.median(new["rates"])
    new["round_trips_per_op"] = new["round_trips"] / max(new["ops"], 1)
    return new


# -- the report -------------------------------------------------------------------------------


def _rate(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.0f}/s" if value >= 100 else f"{value:.3g}/s"


def tables(section: dict[str, Any]) -> str:
    """The Redis section's tables, Markdown."""
    contenders: dict[str, Any] = section["contenders"]
    counts = sorted(
        {int(n) for rows in contenders.values() for measure in rows.values() for n in measure}, key=int
    )
    titles = {
        "message": "A message: read the session, then update it",
        "update": "Update one session",
        "read": "Read one session",
        "newest50": "Newest 50 sessions (key and updatedAt)",
    }
    out = [
        f"{section['sessions']:,} sessions of about 1.5 KB, keys chosen Zipf-like; each run "
        f"{section['seconds_per_run']:g} s at full speed in every process; one redis-server "
        "(AOF, appendfsync everysec) on this machine. Throughput is summed over the processes"
        + (
            f"; the contenders took turns, {rounds} rounds, and each figure is the median of its rounds"
            if (rounds := section.get("rounds", 1)) > 1
            else ""
        )
        + '; "vs aiogram" divides it by the aiogram-style throughput at the same process count.'
        + (" Lost updates add up over the rounds." if rounds > 1 else ""),
        "",
    ]
    for measure in [m for m in MEASURES if any(m in rows for rows in contenders.values())]:
        ratio_counts = sorted({counts[0], counts[-1]})
        header = (
            ["contender"]
            + [f"{n} proc." for n in counts]
            + [f"vs aiogram ({n})" for n in ratio_counts]
            + ["round trips/op"]
        )
        if measure in ("message", "update"):
            header.append(f"lost updates ({counts[-1]})")
        rows = []
        for name, measures in contenders.items():
            by_count = measures.get(measure, {})
            last = by_count.get(str(counts[-1]), {})
            trips = last.get("round_trips_per_op")
            cells = [name] + [_rate(by_count.get(str(n), {}).get("rate")) for n in counts]
            for n in ratio_counts:
                ours = by_count.get(str(n), {})
                base = contenders.get(AIOGRAM, {}).get(measure, {}).get(str(n), {})
                ratio = (ours.get("rate") or math.nan) / (base.get("rate") or math.nan) if base else math.nan
                cells.append("n/a" if math.isnan(ratio) else f"{ratio:.2f}×")  # noqa: RUF001
            cells.append(
                "n/a (no server)" if "directory" in name else f"{trips:.2f}" if trips is not None else "n/a"
            )
            if measure in ("message", "update"):
                lost = last.get("lost_updates")
                cells.append("n/a" if lost is None else f"{lost:,}")
            rows.append(cells)
        out += [f"#### {titles[measure]}", "", _markdown(header, rows), ""]
    return "\n".join(out)


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |",
    ]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def charts(section: dict[str, Any], folder: Path, *, suffix: str = "") -> Iterable[Path]:
    """One PNG: throughput against processes, for the message and update measures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    contenders: dict[str, Any] = section["contenders"]
    figure, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for axis, measure, title in zip(
        axes, ("message", "update", "read"), ("a message (read + update)", "update", "read"), strict=True
    ):
        for name, measures in contenders.items():
            rows = measures.get(measure, {})
            if not rows:
                continue
            counts = sorted(rows, key=int)
            axis.plot([int(n) for n in counts], [rows[n]["rate"] for n in counts], marker="o", label=name)
        axis.set_title(title)
        axis.set_xlabel("processes")
        axis.set_ylabel("operations per second")
        axis.set_xscale("log", base=2)
        axis.grid(alpha=0.3)
    for axis in axes:
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
            break
    figure.suptitle("Several processes on one Redis (higher is better)")
    figure.tight_layout()
    path = folder / f"redis{suffix}.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    yield path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.several_hosts", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="0.3 s runs of 1 and 2 processes")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--processes", default=None, help="comma-separated process counts (1,2,4,8)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="runs of each contender, taking turns (median shown)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="write redis.json and redis.md here (and the chart)"
    )
    args = parser.parse_args(argv)
    seconds = args.seconds or (0.3 if args.quick else 2.0)
    processes = (1, 2) if args.quick else PROCESSES
    if args.processes:
        processes = tuple(int(n) for n in args.processes.split(","))
    folder = Path(tempfile.mkdtemp(prefix="aiosessions-redis-bench-"))
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load = os.getloadavg()
    try:
        results = anyio.run(
            lambda: run_stage(folder, seconds=seconds, processes=processes, rounds=args.rounds)
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(tables(results))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        results["started"] = started
        results["load_average_at_start"] = load
        (args.out / "redis.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "redis.md").write_text(tables(results))
        charts_folder = Path(__file__).resolve().parents[1] / "docs" / "assets" / "benchmarks"
        for path in charts(results, charts_folder if not args.quick else args.out):
            print(f"chart: {path}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "worker":
        anyio.run(worker, json.loads(sys.argv[2]))
    else:
        raise SystemExit(main())
