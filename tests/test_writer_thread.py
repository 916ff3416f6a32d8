"""The directory store's own writer thread (backends/_writer.py): the hop of a batch on asyncio."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import warnings
from pathlib import Path
from typing import Any

import anyio
import pytest

import aiosessions
from aiosessions import SessionEntry
from aiosessions.backends import _writer
from aiosessions.backends._writer import WriterThread


@pytest.fixture
def batch_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads that run the directory store's batches, in the order they ran."""
    from aiosessions.backends._directory import DirectoryBackend

    seen: list[str] = []
    original = DirectoryBackend._write_sync

    def spy(self: DirectoryBackend, *args: Any) -> Any:
        seen.append(threading.current_thread().name)
        return original(self, *args)

    monkeypatch.setattr(DirectoryBackend, "_write_sync", spy)
    return seen


@pytest.mark.asyncio
async def test_a_call_runs_in_the_thread_and_gives_back_its_result_or_error() -> None:
    writer = WriterThread("aiosessions writer test")
    try:
        assert await writer.run(lambda a, b: (a + b, threading.current_thread().name), 2, 3) == (
            5,
            "aiosessions writer test",
        )

        def fail() -> None:
            raise OSError(5, "the disk said no")

        with pytest.raises(OSError, match="the disk said no"):
            await writer.run(fail)
    finally:
        writer.stop()


@pytest.mark.asyncio
async def test_a_natively_cancelled_caller_waits_for_the_call_then_raises() -> None:
    """asyncio.timeout / Task.cancel must not abandon a batch half-way: its outcome is
    settled by the caller, so the caller waits for the thread, then is cancelled."""
    writer = WriterThread("aiosessions writer test")
    entered, release = threading.Event(), threading.Event()
    finished: list[str] = []

    def slow() -> str:
        entered.set()
        release.wait(30)
        finished.append("done")
        return "done"

    returned: list[str] = []

    async def caller() -> None:
        returned.append(await writer.run(slow))

    try:
        task = asyncio.get_running_loop().create_task(caller())
        await anyio.to_thread.run_sync(entered.wait, 30)
        task.cancel()
        await asyncio.sleep(0.01)
        task.cancel()  # twice: still waiting
        assert not task.done()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert finished == ["done"]
        assert returned == []  # the cancellation is raised, not swallowed
    finally:
        release.set()
        writer.stop()


@pytest.mark.asyncio
async def test_an_idle_writer_thread_ends_and_a_new_call_starts_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_writer, "IDLE_SECONDS", 0.01)
    writer = WriterThread("aiosessions writer idle-test")
    idents = [await writer.run(threading.get_ident)]
    with anyio.fail_after(30):
        while any(t.name == "aiosessions writer idle-test" for t in threading.enumerate()):
            await anyio.sleep(0.01)
    idents.append(await writer.run(threading.get_ident))
    writer.stop()
    assert all(isinstance(i, int) for i in idents)


@pytest.mark.asyncio
async def test_a_call_after_stop_goes_to_a_new_thread_while_the_old_one_finishes_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """stop() while the thread still runs a call, then a new call: the new call starts a thread
    that runs it, and stop()'s end-marker reaches the old thread (once, both took one queue: the
    new thread took the marker and ended, the old one ran the new call and, no longer the one
    the writer named, never idled out)."""
    monkeypatch.setattr(_writer, "IDLE_SECONDS", 0.01)
    name = "aiosessions writer restart-test"
    writer = WriterThread(name)
    entered, release = threading.Event(), threading.Event()

    def busy() -> threading.Thread:
        entered.set()
        release.wait(30)
        return threading.current_thread()

    try:
        first = asyncio.get_running_loop().create_task(writer.run(busy))
        await anyio.to_thread.run_sync(entered.wait, 30)
        writer.stop()  # the store closes while its last batch still runs
        second = asyncio.get_running_loop().create_task(writer.run(threading.current_thread))
        await asyncio.sleep(0)  # let the second call be handed over before the first ends
        release.set()
        old, new = await first, await second
        assert old is not new
        assert await writer.run(lambda: 3) == 3  # and a later call still runs
    finally:
        release.set()
        writer.stop()
    with anyio.fail_after(30):  # a hang guard, not a measure: every thread ends
        while any(t.name == name for t in threading.enumerate()):
            await anyio.sleep(0.01)


@pytest.mark.asyncio
async def test_write_through_batches_run_in_the_stores_writer_thread_which_ends_at_close(
    tmp_path: Path, batch_threads: list[str]
) -> None:
    path = tmp_path / "sessions.json"
    async with aiosessions.open_store(path, flush_interval=0, fsync=False) as store:
        await store.set("a", SessionEntry(session_id="a"))
        await store.update("a", lambda e: SessionEntry(session_id="a", updated_at=5))
        assert await store.get("a") == SessionEntry(session_id="a", updated_at=5)
    assert batch_threads and all(
        name == f"aiosessions writer {tmp_path / 'sessions.d'}" for name in batch_threads
    )
    with anyio.fail_after(30):
        while any(t.name == batch_threads[0] for t in threading.enumerate()):
            await anyio.sleep(0.01)


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_on_trio_batches_go_to_anyios_worker_threads(
    tmp_path: Path, anyio_backend: str, batch_threads: list[str]
) -> None:
    path = tmp_path / "sessions.json"
    async with (
        anyio.create_task_group() as tg,
        aiosessions.open_store(path, flush_interval=0, fsync=False, task_group=tg) as store,
    ):
        await store.set("a", SessionEntry(session_id="a"))
        assert await store.get("a") == SessionEntry(session_id="a")
    assert batch_threads and not any(name.startswith("aiosessions writer") for name in batch_threads)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX")
@pytest.mark.asyncio
async def test_a_forked_child_starts_a_writer_thread_of_its_own() -> None:
    """fork() copies only the calling thread: a child that calls a writer it inherited must
    not hand its calls to a thread that exists only in the parent (it would wait forever).

    The writer alone, not a store: a store opened before fork() must not be used in the
    child (its locks are the parent's); the child opens its own. This only checks that a
    child which calls the inherited writer anyway does not hang."""
    writer = WriterThread("aiosessions writer fork-test")
    try:
        assert await writer.run(lambda: 1) == 1  # the parent's thread runs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
            pid = os.fork()
        if pid == 0:  # the child: a fresh event loop, the same writer object
            code = 1
            try:
                if asyncio.run(writer.run(lambda: 2)) == 2:
                    code = 0
            finally:
                os._exit(code)
        status = None
        with anyio.move_on_after(30):
            while status is None:
                done, raw = os.waitpid(pid, os.WNOHANG)
                status = raw if done else None
                await anyio.sleep(0.01)
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child never got its call back")
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        writer.stop()
