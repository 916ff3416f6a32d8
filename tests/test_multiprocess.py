"""No lost updates across processes: real processes incrementing one counter with write-behind on.

Each worker (tests/_mp_worker.py) opens the store, says ``ready``, and waits for a ``go``
line, so all of them start incrementing together; they flush at seeded random points so
their writes interleave and collide. The compare-and-swap + re-apply path must make
every increment count exactly once.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

import aiosessions
from aiosessions._keys import encode_key

pytestmark = pytest.mark.asyncio

WORKER = Path(__file__).with_name("_mp_worker.py")
PROCESSES = 4
INCREMENTS = 250
KEY = "agent:main:telegram:group:-100123:counter"


def _final_count(store_path: Path, mode: str) -> int:
    if mode == "directory":
        meta = store_path.with_name(store_path.stem + ".d") / encode_key(KEY) / "meta.json"
        entry = json.loads(meta.read_bytes())
    else:
        entry = json.loads(store_path.read_bytes())[KEY]
    return int(entry["totalTokens"])


#: A member large enough to be stored apart (format version 2): the counter's entry is then
#: a small meta.json naming a blob, and compare-and-swap compares the meta.json.
SNAPSHOT = {"skills": [{"name": f"skill-{i}", "text": "x" * 400} for i in range(60)]}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("large", [False, True], ids=["small", "large"])
async def test_processes_incrementing_one_counter_lose_nothing(
    store_path: Path, mode: str, large: bool
) -> None:
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    # Create the store first: this test is about updates, not about racing to create it.
    async with aiosessions.open_store(
        store_path, mode="json" if mode == "json" else "directory", fsync=False
    ) as store:
        if large:
            await store.set(KEY, aiosessions.SessionEntry(extra={"skillsSnapshot": SNAPSHOT}))
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                "count",
                str(store_path),
                mode,
                KEY,
                str(INCREMENTS),
                "0.01",
                str(seed + n),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(PROCESSES)
    ]
    try:
        for worker in workers:  # every store is open before anyone starts
            assert worker.stdout is not None and worker.stdin is not None
            line = await anyio.to_thread.run_sync(worker.stdout.readline)
            assert line.strip() == "ready", (line, worker.stderr.read() if worker.stderr else "")
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        outputs = [await anyio.to_thread.run_sync(worker.communicate, None, 45) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err
    stats = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    print("per-process statistics:", stats)
    assert all(s["pending"] == 0 for s in stats)
    assert _final_count(store_path, mode) == PROCESSES * INCREMENTS
    async with aiosessions.open_store(store_path, fsync=False) as store:
        entry = await store.get(KEY)
        assert entry is not None and entry.total_tokens == PROCESSES * INCREMENTS
        if large:
            assert entry.extra["skillsSnapshot"] == SNAPSHOT
    if large and mode == "directory":
        folder = store_path.with_name(store_path.stem + ".d") / encode_key(KEY)
        assert len(list(folder.glob("blob-*.json"))) == 1  # written once, never again
