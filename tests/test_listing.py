"""Listings on both file backends with real processes: another process's written changes
are in the next listing, and a writer killed half-way never leaves it wrong.

The listing contract itself (newest pages, prefixes, counts against a model) is in
tests/contract.py; the directory store's index in particular in tests/test_index.py.
"""

from __future__ import annotations

import json
import signal
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from aiosessions._recency import rank

pytestmark = pytest.mark.anyio

Opener = Callable[..., Any]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def entry(at: int | None) -> dict[str, Any]:
    return {"sessionId": "s"} if at is None else {"sessionId": "s", "updatedAt": at}


async def check(store: Any, model: dict[str, int | None]) -> None:
    want = sorted(model.items(), key=lambda item: (rank(item[1]), item[0]))
    assert await store.newest(len(model) + 1) == want
    assert await store.count() == len(model)
    assert sorted([key async for key in store.keys()]) == sorted(model)
    ones = [key async for key in store.keys("agent:1:")]
    assert sorted(ones) == sorted(key for key in model if key.startswith("agent:1:"))


WRITER = textwrap.dedent(
    """
    import json, os, signal, sys
    import anyio, aiosessions
    from aiosessions._fs import FileSystem

    path, mode, kill_at, actions = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])

    class Killer(FileSystem):
        # SIGKILL ourselves right after the rename that puts kill_at's change in place.
        armed = False
        def rename(self, src, dst, *, src_dir_fd=None, dst_dir_fd=None):
            super().rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
            if self.armed and dst in ("meta.json", os.path.basename(path)):
                os.kill(os.getpid(), signal.SIGKILL)

    fs = Killer()

    async def main() -> None:
        async with aiosessions.open_store(
            path, mode=mode, entry_type=dict, flush_interval=0, fsync=False, filesystem=fs
        ) as store:
            for key, value in actions:
                fs.armed = key == kill_at
                if value is None:
                    await store.delete(key)
                else:
                    await store.set(key, value)

    anyio.run(main)
    """
)


async def run_writer(store_path: Path, mode: str, actions: list[tuple[str, Any]], kill_at: str = "") -> int:
    result = await anyio.run_process(
        [sys.executable, "-c", WRITER, str(store_path), mode, kill_at, json.dumps(actions)], check=False
    )
    if result.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(result.stderr.decode(errors="replace"))
    return result.returncode


async def test_another_process_written_changes_are_in_the_next_listing(
    open_test_store: Opener, store_path: Path, mode: str
) -> None:
    model: dict[str, int | None] = {}
    async with open_test_store(entry_type=dict) as store:
        for i in range(30):
            await store.set(f"agent:{i % 3}:{i}", entry(i))
            model[f"agent:{i % 3}:{i}"] = i
        await store.flush()
        await check(store, model)
        actions = [("agent:1:new", entry(1000)), ("agent:2:5", None), ("agent:0:0", entry(500))]
        assert await run_writer(store_path, mode, [*actions, ("agent:0:3", entry(None))]) == 0
        model.update({"agent:1:new": 1000, "agent:0:0": 500, "agent:0:3": None})
        del model["agent:2:5"]
        await check(store, model)
        # This process's pending change wins over what is on disk until it is written.
        await store.set("agent:0:0", entry(7))
        model["agent:0:0"] = 7
        await check(store, model)


async def test_a_writer_killed_after_its_change_landed_leaves_the_listing_right(
    open_test_store: Opener, store_path: Path, mode: str
) -> None:
    model: dict[str, int | None] = {}
    async with open_test_store(entry_type=dict) as store:
        for i in range(20):
            await store.set(f"agent:1:{i}", entry(i))
            model[f"agent:1:{i}"] = i
        await store.flush()
        await check(store, model)
        actions = [("agent:1:3", entry(300)), ("agent:1:4", entry(400)), ("agent:1:5", entry(500))]
        assert await run_writer(store_path, mode, actions, kill_at="agent:1:4") == -signal.SIGKILL
        model.update({"agent:1:3": 300, "agent:1:4": 400})  # 4 landed, then the writer died
        await check(store, model)
