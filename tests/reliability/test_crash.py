"""Process crashes: SIGKILL a writer, a migration or a prune at random moments, then check.

The writer (``_child.py writer``) keeps a monotonic counter per key and prints a change only once
it is on disk (write-through: when the call returns; write-behind: after ``flush()``). After each
kill the parent reopens the store and checks, per key, that the value is the state of an
attempted change no older than the last acknowledged one (RocksDB's expected-state oracle: never
an older value, never a made-up one), that every file parses with plain ``json``, that the store
opens cleanly and that the orphaned tmp files of the dead writer are swept. The next child then
starts from that state and checks (inside ``update``) that it reads what is there.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import aiosessions

from .conftest import Scale, disk_state, open_plain, record, tmp_files, wait_swept

CHILD = Path(__file__).with_name("_child.py")
KEYS = ["agent:main:telegram:direct:1", "agent:main:Telegram:direct:1", "cron:../../x", "k:" + "ü" * 120]


class Child:
    """A child process whose stdout lines are collected by a thread as they come."""

    def __init__(self, role: str, args: dict[str, Any]) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), role, json.dumps(args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.lines: list[str] = []
        self.error = ""
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            if not raw.endswith(b"\n"):
                break  # a line cut by the kill was never acknowledged
            line = raw.decode("utf-8").rstrip("\n")
            self.lines.append(line)
            if line == "ready":
                self._ready.set()

    def wait_ready(self, timeout: float = 60) -> None:
        if not self._ready.wait(timeout):
            self.kill()
            raise AssertionError(f"child never got ready: {self.error}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self._finish()

    def wait(self, timeout: float = 120) -> int:
        self.proc.wait(timeout=timeout)
        self._finish()
        return self.proc.returncode

    def _finish(self) -> None:
        self.proc.wait(timeout=60)
        self._reader.join(timeout=60)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.error = self.proc.stderr.read().decode("utf-8", "replace")[-3000:]
        self.proc.stdout.close()
        self.proc.stderr.close()


def expected_value(key: str, n: int) -> dict[str, Any]:
    """What _child.py writes (kept apart on purpose: the check does not trust the child's code)."""
    big = {"report": {"n": n, "text": "r" * 9_000}, "snapshot": {"key": key, "text": "s" * 9_000}}
    return {"sessionId": key, "n": n, "pad": "p" * (n % 13) * 40, **(big if n % 2 else {})}


async def verify(base: Path, store_path: Path, mode: str, keys: list[str]) -> dict[str, Any]:
    """Reopen after a crash: files parse, the store opens cleanly, orphans are swept."""
    on_disk = disk_state(store_path, mode)  # every file parses with plain json
    directory = store_path.with_name(store_path.stem + ".d")
    trash = directory / ".trash"
    trashed = list(trash.iterdir()) if trash.is_dir() else []
    orphans = [path for path in tmp_files(base) if trash not in path.parents]
    async with open_plain(store_path, tmp_max_age=0) as store:
        assert store.mode == mode
        seen = {key: await store.get(key) for key in keys}
        listed = sorted([key async for key in store.keys()])
        assert listed == sorted(key for key in keys if seen[key] is not None)
        if orphans or trashed:
            await wait_swept(store, len(orphans) + len(trashed))
    assert not tmp_files(base), "the sweep left orphaned tmp files"
    assert seen == {key: on_disk.get(key) for key in keys}, "the store and plain json disagree"
    return seen


def check_against_log(
    lines: list[str], start: dict[str, Any], seen: dict[str, Any], where: str
) -> tuple[int, int]:
    """Each key holds the state of an attempted change no older than its last acknowledged one.

    Returns (acknowledged changes, attempted changes that were not acknowledged).
    """
    attempts: dict[str, list[tuple[int, dict[str, Any] | None]]] = {key: [] for key in start}
    acked: dict[str, int] = {}
    acks = 0
    for line in lines:
        parts = line.split(" ")
        if parts[0] == "E":
            raise AssertionError(f"{where}: the child read something else than it wrote: {line}")
        if parts[0] == "T":
            key, n, op = parts[1], int(parts[2]), parts[3]
            attempts[key].append((n, None if op == "delete" else expected_value(key, n)))
        elif parts[0] == "A":
            acked[parts[1]] = int(parts[2])
            acks += 1
    unacked = 0
    for key, tried in attempts.items():
        last = acked.get(key)
        allowed = [state for n, state in tried if last is None or n >= last]
        if last is None:
            allowed.append(start[key])
        unacked += sum(1 for n, _ in tried if last is None or n > last)
        assert seen[key] in allowed, (
            f"{where}: {key!r} holds {seen[key]!r}; last acknowledged n={last}, "
            f"allowed {[None if s is None else s['n'] for s in allowed]}"
        )
    return acks, unacked


WRITER_CONFIGS = [
    pytest.param(
        mode, interval, fsync, id=f"{mode}-{'through' if interval == 0 else 'behind'}-fsync{int(fsync)}"
    )
    for mode in ("directory", "json")
    for interval in (0, 0.005)
    for fsync in (True, False)
]


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "interval", "fsync"), WRITER_CONFIGS)
def test_sigkill_writer(
    tmp_path: Path, scale: Scale, seed: int, mode: str, interval: float, fsync: bool
) -> None:
    """SIGKILL a writer at random moments: nothing acknowledged is lost, nothing older comes back."""
    rng = random.Random(seed)
    store_path = tmp_path / "sessions.json"
    anyio.run(_create, store_path, mode)
    state: dict[str, Any] = {key: None for key in KEYS}
    base_n = 0
    total_acks = total_unacked = 0
    started = time.monotonic()
    for kill in range(scale.kills):
        where = f"{mode} interval={interval} fsync={fsync} kill {kill} (seed {seed})"
        child = Child(
            "writer",
            {
                "path": str(store_path),
                "keys": KEYS,
                "flush_interval": interval,
                "fsync": fsync,
                "seed": rng.randrange(2**32),
                "base": base_n,
            },
        )
        child.wait_ready()
        time.sleep(rng.uniform(0.0, 0.25))  # a random moment of the writer's work
        child.kill()
        assert child.proc.returncode == -signal.SIGKILL, f"{where}: child exited by itself: {child.error}"
        seen = anyio.run(verify, tmp_path, store_path, mode, KEYS)
        acks, unacked = check_against_log(child.lines, state, seen, where)
        total_acks += acks
        total_unacked += unacked
        state = seen
        tried = [int(line.split(" ")[2]) for line in child.lines if line.startswith("T ")]
        base_n = max([base_n, *tried]) + 1
    record(
        "sigkill_writer",
        scale=scale.name,
        mode=mode,
        flush_interval=interval,
        fsync=fsync,
        kills=scale.kills,
        acknowledged=total_acks,
        unacknowledged_in_flight=total_unacked,
        lost_acknowledged=0,
        seconds=round(time.monotonic() - started, 1),
    )


async def _create(store_path: Path, mode: str) -> None:
    async with open_plain(store_path, mode=mode) as store:
        await store.set("seed:entry", {"sessionId": "seed"})
        await store.delete("seed:entry")


# -- kills during migration and prune ------------------------------------------------------------


def _legacy_entries(count: int) -> dict[str, Any]:
    return {
        f"agent:main:telegram:direct:{i}": {
            "sessionId": f"s{i}",
            "updatedAt": 1_700_000_000_000 + i,
            "Channel": "telegram",
            "skillsSnapshot": {"prompt": "x" * (200 + i % 500)},
            # Every fifth entry large enough to be stored split (format version 2).
            **({"systemPromptReport": "r" * 9_000, "resolvedSkills": "s" * 9_000} if i % 5 == 0 else {}),
        }
        for i in range(count)
    }


@pytest.mark.slow
def test_sigkill_migrate(tmp_path: Path, scale: Scale, seed: int) -> None:
    """SIGKILL migrate() at random moments: one complete store is authoritative; a rerun finishes."""
    rng = random.Random(seed)
    entries = _legacy_entries(300 if not scale.soak else 2000)
    legacy = json.dumps(entries, indent=2).encode()
    outcomes = {"legacy": 0, "directory": 0, "finished": 0}
    started = time.monotonic()
    window = None
    for kill in range(scale.kills):
        work = tmp_path / f"run-{kill}"
        work.mkdir()
        store_path = work / "sessions.json"
        store_path.write_bytes(legacy)
        child = Child("migrate", {"path": str(store_path), "fsync": True})
        if window is None:
            window = _time_to_done(child)  # the first run is timed, not killed
        else:
            child.wait_ready()
            time.sleep(rng.uniform(0.0, window))
            child.kill()
        finished = any(line.startswith("done") for line in child.lines)
        mode, found = anyio.run(_read_store, store_path)
        assert found == entries, f"kill {kill} (seed {seed}): the {mode} store lost or changed entries"
        if kill:  # run 0 was timed, not killed
            outcomes["finished" if finished else "legacy" if mode == "json" else "directory"] += 1
        if mode == "directory":
            disk_state(store_path, "directory")  # every meta.json parses
        anyio.run(_migrate_again, store_path)
        mode, found = anyio.run(_read_store, store_path)
        assert mode == "directory" and found == entries
        assert not (work / ".sessions.d.staging").exists()
        assert not tmp_files(work)
    record(
        "sigkill_migrate",
        scale=scale.name,
        kills=scale.kills - 1,
        window_seconds=round(window or 0, 2),
        entries=len(entries),
        killed_before_switch=outcomes["legacy"],
        killed_after_switch=outcomes["directory"],
        finished_before_kill=outcomes["finished"],
        lost=0,
        seconds=round(time.monotonic() - started, 1),
    )


def _time_to_done(child: Child) -> float:
    """Let a child run to the end; return the seconds from "ready" to exit (the kill window)."""
    child.wait_ready()
    ready = time.monotonic()
    assert child.wait() == 0, child.error
    return (time.monotonic() - ready) * 1.1


async def _read_store(store_path: Path) -> tuple[str, dict[str, Any]]:
    async with open_plain(store_path) as store:
        return store.mode, {key: value async for key, value in store.items()}


async def _migrate_again(store_path: Path) -> None:
    await aiosessions.migrate(store_path, fsync=False)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["directory", "json"])
def test_sigkill_prune(tmp_path: Path, scale: Scale, seed: int, mode: str) -> None:
    """SIGKILL prune() at random moments: fresh entries untouched, stale ones whole or gone."""
    rng = random.Random(seed)
    now = 1_800_000_000.0
    fresh = {f"fresh:{i}": {"sessionId": f"f{i}", "updatedAt": int(now * 1000)} for i in range(50)}
    stale = {f"stale:{i}": {"sessionId": f"s{i}", "updatedAt": 1_000 + i} for i in range(400)}
    partial = 0
    started = time.monotonic()
    window = None
    for kill in range(max(3, scale.kills // 2)):
        work = tmp_path / f"run-{kill}"
        work.mkdir()
        store_path = work / "sessions.json"
        anyio.run(_fill, store_path, mode, {**fresh, **stale})
        child = Child("prune", {"path": str(store_path), "older_than": 3600, "now": now})
        if window is None:
            window = _time_to_done(child)  # the first run is timed, not killed
        else:
            child.wait_ready()
            time.sleep(rng.uniform(0.0, window))
            child.kill()
        _, found = anyio.run(_read_store, store_path)
        assert {k: v for k, v in found.items() if k in fresh} == fresh, f"kill {kill} (seed {seed})"
        for key, value in found.items():
            assert key in fresh or stale[key] == value, f"kill {kill}: {key!r} reads {value!r}"
        if 0 < len(found) - len(fresh) < len(stale):
            partial += 1
        disk_state(store_path, mode)
        anyio.run(_prune_again, store_path, now)
        _, found = anyio.run(_read_store, store_path)
        assert found == fresh
    record(
        "sigkill_prune",
        scale=scale.name,
        mode=mode,
        kills=max(3, scale.kills // 2) - 1,
        killed_midway=partial,
        lost=0,
        seconds=round(time.monotonic() - started, 1),
    )


async def _fill(store_path: Path, mode: str, entries: dict[str, Any]) -> None:
    async with open_plain(store_path, mode=mode) as store:
        for key, value in entries.items():
            await store.set(key, value)


async def _prune_again(store_path: Path, now: float) -> None:
    await aiosessions.prune(store_path, older_than=3600, now=now, fsync=False)
