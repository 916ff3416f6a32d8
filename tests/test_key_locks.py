"""The per-key locks of one process: exclusion, checkpoints, cancellation, and reuse of the
locks let go of (``KeyLocks.SPARE``), on both event loops."""

from __future__ import annotations

import anyio
import pytest

from aiosessions._locks import KeyLocks

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_a_lock_let_go_of_serves_another_key_and_still_excludes() -> None:
    locks = KeyLocks()
    async with locks.hold("a"):
        pass
    assert len(locks) == 0 and len(locks._spare) == 1
    inside: list[str] = []

    async def hold_b(name: str) -> None:
        async with locks.hold("b"):
            inside.append(f"{name} in")
            await anyio.sleep(0.01)
            inside.append(f"{name} out")

    async with anyio.create_task_group() as tg:
        tg.start_soon(hold_b, "first")
        tg.start_soon(hold_b, "second")
        await anyio.sleep(0.001)
        assert locks._spare == []  # "b" took the spare one
    assert inside in (
        ["first in", "first out", "second in", "second out"],
        ["second in", "second out", "first in", "first out"],
    )
    assert len(locks) == 0


async def test_spare_locks_are_bounded() -> None:
    locks = KeyLocks()
    keys = [f"k{i}" for i in range(KeyLocks.SPARE + 10)]
    async with anyio.create_task_group() as tg:
        release = anyio.Event()

        async def hold(key: str) -> None:
            async with locks.hold(key):
                await release.wait()

        for key in keys:
            tg.start_soon(hold, key)
        await anyio.sleep(0.01)
        assert len(locks) == len(keys)
        release.set()
    assert len(locks) == 0
    assert len(locks._spare) == KeyLocks.SPARE


async def test_taking_a_free_lock_lets_other_tasks_run() -> None:
    locks = KeyLocks()
    ran = 0

    async def other() -> None:
        nonlocal ran
        ran += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(other)
        # Trio runs the tasks ready after a checkpoint in a random order, so this task may go on
        # before ``other`` once; never twice in a row.
        for _ in range(2):
            async with locks.hold("a"):
                pass
        assert ran == 1


async def test_a_cancelled_wait_takes_nothing() -> None:
    locks = KeyLocks()
    async with anyio.create_task_group() as tg:
        held = anyio.Event()
        release = anyio.Event()

        async def holder() -> None:
            async with locks.hold("a"):
                held.set()
                await release.wait()

        tg.start_soon(holder)
        await held.wait()
        with anyio.move_on_after(0.01) as scope:
            async with locks.hold("a"):
                pytest.fail("took a lock another task holds")
        assert scope.cancelled_caught
        assert len(locks) == 1  # the holder's only
        release.set()
    assert len(locks) == 0
    with anyio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(anyio.get_cancelled_exc_class()):
            async with locks.hold("b"):
                pytest.fail("took a lock inside a cancelled scope")
    assert len(locks) == 0
    async with locks.hold("a"), locks.hold("b"):
        assert len(locks) == 2
