"""Iterating a store lets other tasks run and sees cancellation, in every mode (issue 15, point 4).

A legacy JSON store answers ``keys()`` and ``items()`` from the parsed file in memory: without a
checkpoint per chunk the whole iteration ran in one step of the event loop, starving every other
task and never noticing a cancelled scope. Each test runs on both backends and both event loops.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import aiosessions

pytestmark = pytest.mark.anyio

#: Enough keys for several chunks of a listing in each backend (512 keys per chunk).
SESSIONS = 3_000


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["directory", "json"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _fill(path: Path, mode: str) -> None:
    """A store of SESSIONS sessions: written as a legacy file (and migrated, for directory mode)."""
    sessions = {f"agent:main:{i:05d}": {"sessionId": str(i), "updatedAt": i} for i in range(SESSIONS)}
    path.write_text(json.dumps(sessions, indent=2), "utf-8")
    if mode == "directory":
        await aiosessions.migrate(path, fsync=False)


def _iterations() -> list[tuple[str, Callable[[Any], AsyncIterator[Any]]]]:
    return [("keys", lambda store: store.keys()), ("items", lambda store: store.items())]


@pytest.mark.parametrize(("what", "iterate"), _iterations(), ids=["keys", "items"])
async def test_iterating_lets_other_tasks_run(
    tmp_path: Path, mode: str, what: str, iterate: Callable[[Any], AsyncIterator[Any]]
) -> None:
    path = tmp_path / "sessions.json"
    await _fill(path, mode)
    turns: list[int] = []  # how many items the iteration had yielded at each turn of the other task
    seen = 0

    async def other() -> None:
        while True:
            turns.append(seen)
            # Lets go of the GIL for a moment, as any task that waits for something does: a
            # task that never does makes each system call of the store's worker threads wait
            # out the interpreter's switch interval (5 ms) to get it back, and a chunk of 512
            # reads then takes seconds (the convoy effect), which is not what this test is about.
            time.sleep(0)
            await anyio.sleep(0)

    async with aiosessions.open_store(path, entry_type=dict, flush_interval=3600, fsync=False) as store:
        assert store.mode == mode
        async with anyio.create_task_group() as tg:
            tg.start_soon(other)
            await anyio.sleep(0)
            turns.clear()
            async for _ in iterate(store):
                seen += 1
            tg.cancel_scope.cancel()
    assert seen == SESSIONS
    during = {n for n in turns if 0 < n < SESSIONS}
    # At least one turn of the other task per chunk of the listing.
    assert len(during) >= 2, f"{what}() ran {SESSIONS} sessions without letting another task run"


@pytest.mark.parametrize(("what", "iterate"), _iterations(), ids=["keys", "items"])
async def test_iterating_sees_cancellation(
    tmp_path: Path, mode: str, what: str, iterate: Callable[[Any], AsyncIterator[Any]]
) -> None:
    path = tmp_path / "sessions.json"
    await _fill(path, mode)
    seen = 0
    async with aiosessions.open_store(path, entry_type=dict, flush_interval=3600, fsync=False) as store:
        with anyio.CancelScope() as scope:
            scope.cancel()
            async for _ in iterate(store):
                seen += 1
        assert scope.cancelled_caught, f"{what}() ran to the end inside a cancelled scope"
        assert seen < SESSIONS
        # The store is unharmed: a new iteration sees everything.
        assert len([k async for k in store.keys()]) == SESSIONS
