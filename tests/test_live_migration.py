"""A legacy-mode store that is migrated under it loses nothing.

The usual case: the bot keeps running in legacy JSON mode while its operator runs
``migrate``. Real processes: two writers (tests/_legacy_writer_child.py) increment shared
counters with ``update()`` in legacy mode; meanwhile a migration is killed with SIGKILL at a
random filesystem call (tests/_migrate_child.py), another just after the switch, before the
file is put aside (the writers must carry on in the directory store then, though the file is
still there), and then one runs to the end in another process. The writers carry their
pending and later changes into the directory store: each counter ends at exactly the number
of increments that returned, in every process, the other sessions are untouched, no writer's
close reports a loss, and the legacy file is never rewritten after the switch nor recreated.
On asyncio and trio (the writers' event loop).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import anyio
import pytest

import aiosessions

pytestmark = pytest.mark.anyio

HERE = Path(__file__).resolve().parent
WRITER = HERE / "_legacy_writer_child.py"
MIGRATOR = HERE / "_migrate_child.py"
WRITERS = 2
#: Migrations killed with SIGKILL before the one that runs to the end (the last of them
#: between the switch and the backup rename).
KILLS = 2
COUNTERS = [f"agent:main:telegram:group:-100{n}:counter" for n in range(3)]
#: Other sessions, so that the migration takes a while (and the kill lands inside it).
FILLER = {
    f"agent:main:discord:direct:user{n:04d}": {"sessionId": f"s{n}", "updatedAt": 1_700_000_000_000 + n}
    for n in range(300)
}


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _line(stream: IO[str]) -> str:
    line = stream.readline()
    if not line:
        raise AssertionError("the child ended early")
    return line.strip()


async def _progress(writer: subprocess.Popen[str], *, mode: str | None = None) -> str:
    """Wait for the writer's next progress line (in ``mode``, if given); return its mode."""
    assert writer.stdout is not None
    while True:
        line = await anyio.to_thread.run_sync(_line, writer.stdout)
        kind, _, seen = line.split()
        assert kind == "progress", line
        if mode is None or seen == mode:
            return seen


def _kill_migration_at(path: Path, freeze_at: str) -> str:
    """Run migrate() in a child frozen at ``freeze_at`` (a filesystem call's number, or
    ``call:first_arg``); SIGKILL it there. Returns the child's report."""
    child = subprocess.Popen(
        [sys.executable, str(MIGRATOR), str(path), freeze_at], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    try:
        line = child.stdout.readline().strip()
        if line.startswith("frozen"):
            os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=60)
        child.stdout.close()
    return line


@pytest.mark.timeout(300)
async def test_a_legacy_writer_loses_nothing_when_the_store_is_migrated_under_it(
    tmp_path: Path, anyio_backend: str
) -> None:
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    path = tmp_path / "sessions.json"
    path.write_text(json.dumps(FILLER, indent=2), "utf-8")
    # How many filesystem calls a whole migration of this store makes (on a copy).
    probe = tmp_path / "probe" / "sessions.json"
    probe.parent.mkdir()
    probe.write_bytes(path.read_bytes())
    finished = await anyio.to_thread.run_sync(_kill_migration_at, probe, str(10**9))
    calls = int(finished.split()[1])
    writers = [
        subprocess.Popen(
            [sys.executable, str(WRITER), str(path), anyio_backend, str(seed + n), *COUNTERS],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(WRITERS)
    ]
    try:
        for writer in writers:
            assert writer.stdout is not None and writer.stdin is not None
            assert await anyio.to_thread.run_sync(_line, writer.stdout) == "ready"
        for writer in writers:
            assert writer.stdin is not None
            writer.stdin.write("go\n")
            writer.stdin.flush()
        for writer in writers:
            assert await _progress(writer) == "json"

        # Migrations killed part-way, the writers going on meanwhile: first at a random
        # filesystem call (in the whole migration's range, so mostly while it builds) ...
        for _ in range(KILLS - 1):
            freeze_at = str(rng.randrange(5, calls - 10))  # not after the backup rename
            killed = await anyio.to_thread.run_sync(_kill_migration_at, path, freeze_at)
            print(f"migration killed at call {freeze_at} of {calls}: {killed}")
            for writer in writers:
                await _progress(writer)
        # ... then just before it puts the file aside: the directory store is the store, the
        # file still there. The writers must carry on in the directory store all the same,
        # without rewriting the file (they see the marker, not the file's absence).
        killed = await anyio.to_thread.run_sync(_kill_migration_at, path, f"rename:{path.name}")
        assert killed.startswith("frozen") and (tmp_path / "sessions.d" / "FORMAT").exists(), killed
        left = path.read_bytes()
        with anyio.move_on_after(90) as waiting:
            for writer in writers:
                await _progress(writer, mode="directory")
        assert not waiting.cancelled_caught, "a writer never carried on in the directory store"
        assert path.read_bytes() == left, "the legacy file was rewritten after the switch"
        # ... then run again to the end, in another process.
        finished = await anyio.to_thread.run_sync(_kill_migration_at, path, str(10**9))
        assert finished.startswith("finished"), finished
        assert not path.exists()
        # Every writer keeps writing in the directory store.
        with anyio.move_on_after(90) as waiting:
            for writer in writers:
                await _progress(writer, mode="directory")
                await _progress(writer, mode="directory")
        assert not waiting.cancelled_caught, "a writer never carried on in the directory store"
        for writer in writers:
            assert writer.stdin is not None
            writer.stdin.write("stop\n")
            writer.stdin.flush()
        outputs = [await anyio.to_thread.run_sync(writer.communicate, None, 120) for writer in writers]
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
                writer.communicate()  # reaps it and closes its pipes
    for writer, (_, err) in zip(writers, outputs, strict=True):
        assert writer.returncode == 0, f"a writer failed (lost changes are reported at close):\n{err}"
    reports: list[dict[str, Any]] = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    print("writers:", reports)
    assert all(report["mode"] == "directory" for report in reports)
    assert all(report["stats"]["pending"] == 0 for report in reports)
    acked = {key: sum(report["acked"][key] for report in reports) for key in COUNTERS}
    print(f"acknowledged increments {acked} ({sum(acked.values())} in all)")

    assert not path.exists(), "the legacy file was recreated"
    assert len(list(tmp_path.glob("sessions.json.pre-directory-migration.*"))) == 1
    async with aiosessions.open_store(path, entry_type=dict, fsync=False) as store:
        assert store.mode == "directory"
        stored = {key: entry async for key, entry in store.items()}
    assert {key: stored[key]["totalTokens"] for key in COUNTERS} == acked
    assert {key: stored[key] for key in FILLER} == FILLER
    assert sorted(stored) == sorted([*FILLER, *COUNTERS])
    report = await aiosessions.fsck(path)
    assert report.ok, report.problems
