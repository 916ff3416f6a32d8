"""Write-behind throughput: distinct-key updates through the store vs a plain synchronous loop.

Not a test: a measurement to run by hand and record in docs/benchmarks.md::

    python -m benchmarks.writebehind                 # 2,000 keys (fsync off), 400 (fsync on)
    python -m benchmarks.writebehind --keys 500 --fsync-keys 100 --rounds 1   # quick look
    python -m benchmarks.writebehind --profile "write-behind set" --fsync   # pyinstrument

Every variant replaces the ``meta.json`` of N existing sessions (2-8 KB entries, the
size of real OpenClaw entries without their big blobs) once each, in one process, on the
same disk, measured side by side in each round:

``sync loop``
    what a careful synchronous program does, with no event loop: for each key, encode,
    write a tmp file in the session folder, (fsync it,) ``os.replace`` it onto
    ``meta.json`` (and fsync the folder). The baseline.
``write-behind set`` / ``write-behind update``
    ``await store.set(key, entry)`` (or ``update(key, fn)`` changing a few fields) for
    every key, then ``await store.flush()``: the time includes getting it all on disk.
``write-through x1`` / ``write-through x64``
    ``flush_interval=0``: each call returns once its write is on disk; one caller at a
    time, or 64 concurrent callers (which share batches).
``json write-behind set``
    the legacy JSON mode with the same queue: one rewrite of ``sessions.json`` per batch.

The figures are medians over ``--rounds`` rounds; the order of the variants rotates from
round to round, and ``os.sync()`` runs before each timed run so that one variant's dirty
pages are not flushed during another's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import anyio
import msgspec

import aiosessions
from aiosessions import SessionEntry, SessionStore
from aiosessions._entry import codec_for
from aiosessions._keys import encode_key

CODEC = codec_for(SessionEntry)
CONCURRENT_CALLERS = 64
_WORDS = ["agent", "tool", "call", "result", "session", "search", "files", "thread", "memory", "reply"]


@dataclass
class Run:
    """One timed run of one variant."""

    seconds: float
    ops: int
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.ops / self.seconds


# -- the workload ---------------------------------------------------------------------------


def make_entries(n: int, seed: int) -> list[tuple[str, SessionEntry]]:
    """``n`` realistic session entries of 2-8 KB, keyed like OpenClaw's sessions."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        channel = rng.choice(["telegram", "discord", "whatsapp", "slack"])
        key = f"agent:main:{channel}:direct:user{i:06d}"
        text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(250, 1100)))
        raw = msgspec.json.encode(
            {
                "sessionId": f"{rng.getrandbits(128):032x}",
                "updatedAt": 1_760_000_000_000 + i,
                "channel": channel,
                "chatType": "direct",
                "model": "claude-opus-4-6",
                "modelProvider": "anthropic",
                "inputTokens": rng.randint(0, 10**6),
                "outputTokens": rng.randint(0, 10**5),
                "totalTokens": 0,
                "deliveryContext": {"channel": channel, "to": f"{channel}:{i}", "accountId": "default"},
                "systemPromptReport": {"source": "run", "generatedAt": 1_760_000_000_000, "text": text},
            }
        )
        items.append((key, CODEC.decode(raw)))
    return items


def touched(entry: SessionEntry | None) -> SessionEntry:
    """What ``update()`` does in the benchmark: change a few counters of the entry."""
    assert entry is not None and isinstance(entry.total_tokens, int)
    stamp = entry.updated_at if isinstance(entry.updated_at, int) else 0
    return msgspec.structs.replace(entry, updated_at=stamp + 1, total_tokens=entry.total_tokens + 1)


async def populate(path: Path, items: list[tuple[str, SessionEntry]], mode: str) -> None:
    async with aiosessions.open_store(
        path, mode="json" if mode == "json" else "directory", fsync=False, flush_interval=3600
    ) as store:
        for key, entry in items:
            await store.set(key, entry)
    os.sync()


# -- the variants ---------------------------------------------------------------------------


def sync_loop(path: Path, items: list[tuple[str, SessionEntry]], fsync: bool) -> Run:
    """The baseline: encode, write tmp, (fsync,) rename, (fsync the folder) — key after key."""
    root = path.with_name(path.stem + ".d")
    folders = [(str(root / encode_key(key)), entry) for key, entry in items]
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    start = time.perf_counter()
    for n, (folder, entry) in enumerate(folders):
        data = CODEC.encode(entry)
        tmp = f"{folder}/.meta.json.{n}.tmp"
        fd = os.open(tmp, flags, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, f"{folder}/meta.json")
        if fsync:
            dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    return Run(time.perf_counter() - start, len(folders))


def _opened(path: Path, mode: str, fsync: bool, flush_interval: float) -> Any:
    return aiosessions.open_store(
        path,
        mode="json" if mode == "json" else "directory",
        fsync=fsync,
        flush_interval=flush_interval,
    )


def _stats(store: SessionStore[Any]) -> dict[str, Any]:
    s = store.statistics()
    return {"writes": s.writes, "flushes": s.flushes, "coalesced": s.coalesced}


async def write_behind_set(path: Path, items: list[tuple[str, SessionEntry]], fsync: bool, mode: str) -> Run:
    async with _opened(path, mode, fsync, 0.05) as store:
        start = time.perf_counter()
        for key, entry in items:
            await store.set(key, entry)
        await store.flush()
        elapsed = time.perf_counter() - start
        return Run(elapsed, len(items), _stats(store))


async def write_behind_update(
    path: Path, items: list[tuple[str, SessionEntry]], fsync: bool, mode: str
) -> Run:
    async with _opened(path, mode, fsync, 0.05) as store:
        start = time.perf_counter()
        for key, _ in items:
            await store.update(key, touched)
        await store.flush()
        elapsed = time.perf_counter() - start
        return Run(elapsed, len(items), _stats(store))


async def write_through_x1(path: Path, items: list[tuple[str, SessionEntry]], fsync: bool, mode: str) -> Run:
    async with _opened(path, mode, fsync, 0) as store:
        start = time.perf_counter()
        for key, entry in items:
            await store.set(key, entry)
        elapsed = time.perf_counter() - start
        return Run(elapsed, len(items), _stats(store))


async def write_through_concurrent(
    path: Path, items: list[tuple[str, SessionEntry]], fsync: bool, mode: str
) -> Run:
    async with _opened(path, mode, fsync, 0) as store:

        async def caller(share: list[tuple[str, SessionEntry]]) -> None:
            for key, entry in share:
                await store.set(key, entry)

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(CONCURRENT_CALLERS):
                tg.start_soon(caller, items[i::CONCURRENT_CALLERS])
        elapsed = time.perf_counter() - start
        return Run(elapsed, len(items), _stats(store))


AsyncVariant = Callable[[Path, list[tuple[str, SessionEntry]], bool, str], Awaitable[Run]]
#: name -> (store mode, the async variant or None for the synchronous loop)
VARIANTS: dict[str, tuple[str, AsyncVariant | None]] = {
    "sync loop": ("directory", None),
    "write-behind set": ("directory", write_behind_set),
    "write-behind update": ("directory", write_behind_update),
    f"write-through x{CONCURRENT_CALLERS}": ("directory", write_through_concurrent),
    "write-through x1": ("directory", write_through_x1),
    "json write-behind set": ("json", write_behind_set),
}


def run_variant(name: str, folder: Path, items: list[tuple[str, SessionEntry]], fsync: bool) -> Run:
    """Populate a fresh store of the variant's mode, then time one pass over every key."""
    mode, variant = VARIANTS[name]
    work = Path(tempfile.mkdtemp(prefix="wb-", dir=folder))
    try:
        path = work / "sessions.json"
        anyio.run(populate, path, items, mode)
        if variant is None:
            return sync_loop(path, items, fsync)
        return anyio.run(variant, path, items, fsync, mode)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- reporting ------------------------------------------------------------------------------


def describe_machine(folder: Path) -> list[str]:
    def run(*command: str) -> str:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
        return "?"

    cpu = "?"
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as info:
        cpu = next(line for line in info if line.startswith("model name")).split(":", 1)[1].strip()
    df = run("df", "-T", str(folder)).splitlines()
    memory = run("free", "-h").splitlines()
    return [
        f"CPU: {cpu}, nproc={run('nproc')}",
        f"memory: {' '.join(memory[1].split()[:2]) if len(memory) > 1 else '?'} (free -h: total)",
        f"filesystem: {' '.join(df[-1].split()[:2]) if df else '?'} at {folder} (df -T)",
        f"Python {platform.python_version()} ({platform.python_implementation()}), {platform.platform()}",
        f"aiosessions {aiosessions.__version__}, anyio {metadata.version('anyio')}, "
        f"msgspec {msgspec.__version__}",
    ]


def rotated(names: list[str], by: int) -> Iterator[str]:
    by %= len(names)
    yield from names[by:] + names[:by]


def measure(
    folder: Path, n: int, fsync: bool, rounds: int, seed: int, names: list[str]
) -> dict[str, list[Run]]:
    items = make_entries(n, seed)
    sizes = [len(CODEC.encode(entry)) for _, entry in items]
    print(
        f"\n## fsync={fsync}: {n} keys, entries {min(sizes)}-{max(sizes)} bytes "
        f"(mean {statistics.mean(sizes):.0f}), {rounds} round(s)",
        flush=True,
    )
    runs: dict[str, list[Run]] = {name: [] for name in names}
    for r in range(rounds):
        for name in rotated(names, r):
            run = run_variant(name, folder, items, fsync)
            runs[name].append(run)
            print(f"  round {r + 1}: {name:24} {run.rate:9.0f} ops/s  {run.stats or ''}", flush=True)
    return runs


def table(runs: dict[str, list[Run]]) -> str:
    base = statistics.median(run.rate for run in runs["sync loop"])
    lines = [
        "| variant | ops/s (median) | runs | vs sync loop | batches (last run) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, results in runs.items():
        rate = statistics.median(run.rate for run in results)
        spread = f"{min(r.rate for r in results):.0f}-{max(r.rate for r in results):.0f}"
        batches = results[-1].stats.get("flushes", "")
        lines.append(f"| {name} | {rate:,.0f} | {spread} | {rate / base:.2f}x | {batches} |")
    return "\n".join(lines)


def profile(name: str, folder: Path, n: int, fsync: bool, seed: int) -> None:
    try:
        from pyinstrument import Profiler
    except ImportError:
        sys.exit("--profile needs pyinstrument: pip install -e '.[bench]'")
    items = make_entries(n, seed)
    mode, variant = VARIANTS[name]
    work = Path(tempfile.mkdtemp(prefix="wb-", dir=folder))
    try:
        path = work / "sessions.json"
        anyio.run(populate, path, items, mode)
        profiler = Profiler(async_mode="enabled")
        with profiler:
            run = (
                sync_loop(path, items, fsync)
                if variant is None
                else anyio.run(variant, path, items, fsync, mode)
            )
        print(f"{name}: {run.rate:.0f} ops/s {run.stats}")
        print(profiler.output_text(unicode=True, color=False, show_all=False))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.writebehind", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--keys", type=int, default=2000, help="distinct keys with fsync off (default 2000)")
    parser.add_argument(
        "--fsync-keys", type=int, default=400, help="distinct keys with fsync on (default 400)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=20261124)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp folder)")
    parser.add_argument("--only", choices=["off", "on"], help="only fsync off, or only fsync on")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--profile", choices=list(VARIANTS), help="profile one variant with pyinstrument")
    parser.add_argument("--fsync", action="store_true", help="with --profile: fsync on")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="aiosessions-bench-", dir=args.dir))
    try:
        if args.profile:
            profile(args.profile, folder, args.fsync_keys if args.fsync else args.keys, args.fsync, args.seed)
            return
        names = ["sync loop", *(name for name in args.variants if name != "sync loop")]
        print("# write-behind benchmark (python -m benchmarks.writebehind)")
        print(f"seed {args.seed}")
        for line in describe_machine(folder):
            print(f"- {line}")
        results = []
        for fsync in (False, True):
            if args.only == ("on" if not fsync else "off"):
                continue
            runs = measure(
                folder, args.fsync_keys if fsync else args.keys, fsync, args.rounds, args.seed, names
            )
            results.append((fsync, runs))
        for fsync, runs in results:
            print(f"\n### fsync={'on' if fsync else 'off'}\n")
            print(table(runs))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
