"""The write-behind queue (issue 3): coalescing, batching, bounds, failures, cancellation, conflicts.

Every test reads the store's files directly (``meta.json`` or ``sessions.json``) to tell
what is on disk from what is only in memory. Slowness and faults are injected through
:class:`aiosessions._fs.FileSystem` subclasses; nothing waits on a timer.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import random
import stat
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from aiosessions import (
    FlushError,
    LockTimeoutError,
    SessionEntry,
    SessionStore,
    StoreClosedError,
    StoreIOError,
)
from aiosessions._entry import codec_for
from aiosessions._fs import FileSystem
from aiosessions._keys import encode_key, lock_stripe
from aiosessions._layout import StorePaths
from aiosessions.backends import _directory

pytestmark = pytest.mark.asyncio

WORKER = Path(__file__).with_name("_mp_worker.py")
Store = SessionStore[SessionEntry]
Opener = Callable[..., Any]
CODEC = codec_for(SessionEntry)


# -- helpers --------------------------------------------------------------------------


def stored(store_path: Path, mode: str, key: str) -> Any:
    """The entry of ``key`` as the file on disk holds it (parsed JSON), or None."""
    if mode == "directory":
        meta = store_path.with_name(store_path.stem + ".d") / encode_key(key) / "meta.json"
        return json.loads(meta.read_bytes()) if meta.exists() else None
    return json.loads(store_path.read_bytes()).get(key)


def stored_keys(store_path: Path, mode: str) -> set[str]:
    if mode == "directory":
        folder = store_path.with_name(store_path.stem + ".d")
        return {p.parent.name for p in folder.glob("*/meta.json")}
    return set(json.loads(store_path.read_bytes()))


def tmp_files(store_path: Path) -> list[Path]:
    """In-flight or orphaned tmp files anywhere in the store's folder."""
    return [p for p in store_path.parent.rglob(".*.tmp")]


def entry(n: int, *, pad: int = 0) -> SessionEntry:
    return SessionEntry(session_id=f"s{n}", updated_at=1_700_000_000_000 + n, total_tokens=n, label="x" * pad)


def bump(e: SessionEntry | None) -> SessionEntry:
    """A pure counter increment (update functions may run again after a conflict)."""
    if e is None:
        return SessionEntry(session_id="counter", total_tokens=1)
    assert isinstance(e.total_tokens, int), e
    return msgspec.structs.replace(e, total_tokens=e.total_tokens + 1)


def tokens(value: Any) -> int | None:
    return None if value is None else int(value["totalTokens"])


async def read_in_other_process(store_path: Path, mode: str, key: str) -> Any:
    """Open the store in a separate Python process and return the entry it reads."""
    result = await anyio.run_process([sys.executable, str(WORKER), "read", str(store_path), mode, key])
    return json.loads(result.stdout)


async def until(condition: Callable[[], bool]) -> None:
    """Yield to other tasks until ``condition()`` holds (bounded: fails instead of hanging)."""
    with anyio.fail_after(20):
        while not condition():
            await anyio.sleep(0.001)


class SlowDisk(FileSystem):
    """A disk whose writes and fsyncs block while the test holds the gate closed."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # a write is blocked at the gate

    def block(self) -> None:
        self.entered.clear()
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    async def wait_entered(self) -> None:
        assert await anyio.to_thread.run_sync(self.entered.wait, 20), "no write reached the disk"

    def _pass(self) -> None:
        if not self.gate.is_set():
            self.entered.set()
            if not self.gate.wait(30):
                raise OSError(errno.EIO, "the test never released the slow disk")

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self._pass()
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self._pass()
        super().fsync(fd)


class FaultyDisk(FileSystem):
    """A disk whose ``write`` fails with ``fail_errno`` while it is set; counts renames."""

    def __init__(self) -> None:
        self.fail_errno: int | None = None
        self.renames = 0

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if self.fail_errno is not None:
            raise OSError(self.fail_errno, os.strerror(self.fail_errno))
        return super().write(fd, data)

    def rename(
        self, src: str, dst: str, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None
    ) -> None:
        super().rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        self.renames += 1


class DirFsyncFails(FaultyDisk):
    """fsync of a directory fails (EIO) ``failures`` more times; file fsyncs work."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0

    def fsync(self, fd: int) -> None:
        if self.failures and stat.S_ISDIR(os.fstat(fd).st_mode):
            self.failures -= 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        super().fsync(fd)


# -- coalescing and batching ----------------------------------------------------------


async def test_many_updates_to_one_key_become_one_write(
    open_test_store: Opener, store_path: Path, mode: str
) -> None:
    async with open_test_store() as store:
        for _ in range(10_000):
            await store.update("agent:main:hot", bump)
        assert stored(store_path, mode, "agent:main:hot") is None  # still only in memory
        await store.flush()
        stats = store.statistics()
        assert stats.writes == 1
        assert stats.flushes == 1
        assert stats.coalesced == 9_999
        assert stats.pending == 0
        assert tokens(stored(store_path, mode, "agent:main:hot")) == 10_000


async def test_distinct_keys_are_each_written_once(
    open_test_store: Opener, store_path: Path, mode: str
) -> None:
    disk = FaultyDisk()
    async with open_test_store(filesystem=disk) as store:
        renames_at_open = disk.renames
        for i in range(1000):
            await store.set(f"agent:main:k{i}", entry(i))
        for i in range(1000):  # two more changes per key in the same window
            await store.update(f"agent:main:k{i}", bump)
            await store.update(f"agent:main:k{i}", bump)
        await store.flush()
        stats = store.statistics()
        assert stats.writes == 1000
        assert stats.coalesced == 2000
        assert stats.flushes == 1
        # What the disk saw: a file per session, or ONE rewrite of sessions.json.
        assert disk.renames - renames_at_open == (1000 if mode == "directory" else 1)
    keys = {f"agent:main:k{i}" for i in range(1000)}
    assert stored_keys(store_path, mode) == (keys if mode == "json" else {encode_key(k) for k in keys})
    assert tokens(stored(store_path, mode, "agent:main:k7")) == 9


async def test_read_your_writes_before_the_flush(
    open_test_store: Opener, store_path: Path, mode: str
) -> None:
    async with open_test_store() as store:
        await store.set("a", entry(1))
        await store.set("b", entry(2))
        await store.flush()
        await store.set("c", entry(3))  # new, pending
        await store.update("a", bump)  # changed, pending
        assert await store.delete("b") is True  # deleted, pending
        # Nothing of that is on disk yet ...
        assert stored(store_path, mode, "c") is None
        assert tokens(stored(store_path, mode, "a")) == 1
        assert stored(store_path, mode, "b") is not None
        # ... but this process sees all of it.
        assert await store.get("c") == entry(3)
        got_a = await store.get("a")
        assert got_a is not None and got_a.total_tokens == 2
        assert await store.get("b") is None
        assert await store.contains("b") is False
        assert await store.updated_at("c") == entry(3).updated_at
        assert sorted([k async for k in store.keys()]) == ["a", "c"]
        assert sorted([k async for k, _ in store.items()]) == ["a", "c"]
        assert store.statistics().pending == 3
        await store.flush()
        assert stored(store_path, mode, "b") is None
        assert tokens(stored(store_path, mode, "a")) == 2


async def test_flush_returns_after_the_data_is_readable_by_another_process(
    open_test_store: Opener, store_path: Path, mode: str
) -> None:
    async with open_test_store() as store:
        await store.set("agent:main:x", entry(41))
        await store.update("agent:main:x", bump)
        assert await read_in_other_process(store_path, mode, "agent:main:x") is None
        await store.flush()
        assert tokens(await read_in_other_process(store_path, mode, "agent:main:x")) == 42
        assert tokens(stored(store_path, mode, "agent:main:x")) == 42


# -- back-pressure ----------------------------------------------------------------------


async def test_pending_keys_stay_within_the_bound_while_the_disk_is_slow(
    open_test_store: Opener, store_path: Path, mode: str
) -> None:
    bound, writers = 50, 200
    disk = SlowDisk()
    async with open_test_store(filesystem=disk, max_pending_keys=bound) as store:
        observed: list[int] = []
        done = 0

        async def writer(i: int) -> None:
            nonlocal done
            if i % 2:
                await store.set(f"k{i}", entry(i))
            else:  # update() reads from disk first: the bound must hold across that await
                await store.update(f"k{i}", bump)
            # set/update return right after queueing (no await in between), so this
            # sees the queue as that change left it.
            observed.append(store.statistics().pending)
            done += 1

        disk.block()
        async with anyio.create_task_group() as tg:
            for i in range(writers):
                tg.start_soon(writer, i)
            await disk.wait_entered()  # the flusher is stuck writing the full queue
            await anyio.wait_all_tasks_blocked()
            # Exactly `bound` changes got in; every other writer waits (memory does not grow).
            assert store.statistics().pending == bound
            assert done == bound
            assert max(observed) == bound
            disk.release()
        assert done == writers
        assert max(observed) <= bound
        await store.flush()
        assert store.statistics().pending == 0
    assert len(stored_keys(store_path, mode)) == writers


async def test_pending_bytes_stay_within_the_bound_while_the_disk_is_slow(
    open_test_store: Opener, store_path: Path, mode: str
) -> None:
    max_bytes, writers = 16 * 1024, 120
    sizes: dict[int, int] = {}
    disk = SlowDisk()
    async with open_test_store(filesystem=disk, max_pending_bytes=max_bytes) as store:
        observed: list[int] = []
        rng = random.Random(1234)
        print("seed 1234")

        async def writer(i: int) -> None:
            value = entry(i, pad=rng.randint(100, 3000))
            sizes[i] = len(CODEC.encode(value))
            await store.set(f"k{i % 40}", value)  # some writers hit pending keys: they wait too
            observed.append(store.statistics().pending_bytes)

        disk.block()
        async with anyio.create_task_group() as tg:
            for i in range(writers):
                tg.start_soon(writer, i)
            await disk.wait_entered()
            await anyio.wait_all_tasks_blocked()
            held = store.statistics().pending_bytes
            assert max_bytes <= held < max_bytes + max(sizes.values())
            assert len(observed) < writers  # the rest are waiting
            disk.release()
        assert len(observed) == writers
        # A change is queued only below the bound, so it overshoots by less than one entry.
        assert max(observed) < max_bytes + max(sizes.values())
        await store.flush()
        assert store.statistics().pending_bytes == 0


async def test_a_full_queue_on_a_refusing_disk_raises_instead_of_waiting(
    open_test_store: Opener, mode: str
) -> None:
    disk = FaultyDisk()
    async with open_test_store(filesystem=disk, max_pending_keys=3) as store:
        disk.fail_errno = errno.ENOSPC
        for i in range(3):
            await store.set(f"k{i}", entry(i))
        with anyio.fail_after(10), pytest.raises(FlushError, match="queue is full") as caught:
            await store.set("k3", entry(3))
        assert caught.value.errno == errno.ENOSPC
        assert await store.get("k3") is None  # refused, not half-queued
        disk.fail_errno = None
        await store.set("k3", entry(3))  # room again once the disk recovers
        await store.flush()
        assert store.statistics().pending == 0


# -- failures ---------------------------------------------------------------------------


async def test_a_failed_write_is_kept_raised_and_retried(
    open_test_store: Opener, store_path: Path, mode: str
) -> None:
    disk = FaultyDisk()
    async with open_test_store(filesystem=disk) as store:
        await store.set("agent:main:k", entry(1))
        await store.flush()
        disk.fail_errno = errno.ENOSPC
        await store.set("agent:main:k", entry(2))
        with pytest.raises(FlushError) as caught:
            await store.flush()
        error = caught.value
        assert isinstance(error, StoreIOError) and isinstance(error, OSError)
        assert error.errno == errno.ENOSPC
        assert "agent:main:k" in error.failures and "'agent:main:k'" in str(error)
        assert error.unwritten == 1
        # Kept: this process still sees it; the disk still has the old value, and no tmp file.
        assert await store.get("agent:main:k") == entry(2)
        stats = store.statistics()
        assert stats.pending == 1 and stats.failures >= 1
        assert tokens(stored(store_path, mode, "agent:main:k")) == 1
        assert tmp_files(store_path) == []
        # A second flush tries again (and fails again) rather than reporting success.
        with pytest.raises(FlushError):
            await store.flush()
        disk.fail_errno = None
        await store.flush()
        assert store.statistics().pending == 0
        assert tokens(stored(store_path, mode, "agent:main:k")) == 2
        assert tmp_files(store_path) == []


async def test_the_flusher_retries_on_its_own_after_a_failure(
    open_test_store: Opener, store_path: Path, mode: str
) -> None:
    disk = FaultyDisk()
    async with open_test_store(filesystem=disk, flush_interval=0.001) as store:
        disk.fail_errno = errno.EIO
        await store.set("k", entry(5))
        await until(lambda: store.statistics().failures >= 2)  # retried, with backoff
        disk.fail_errno = None
        await until(lambda: store.statistics().pending == 0)  # nobody called flush()
        assert tokens(stored(store_path, mode, "k")) == 5


async def test_durable_calls_raise_while_the_disk_fails(
    open_test_store: Opener, store_path: Path, mode: str
) -> None:
    disk = FaultyDisk()
    async with open_test_store(filesystem=disk) as store:
        await store.set("k", entry(1), durable=True)
        assert tokens(stored(store_path, mode, "k")) == 1
        disk.fail_errno = errno.ENOSPC
        with pytest.raises(StoreIOError) as caught:
            await store.set("k", entry(2), durable=True)
        assert caught.value.errno == errno.ENOSPC
        with pytest.raises(StoreIOError):
            await store.update("k", bump, durable=True)
        got = await store.get("k")  # both changes are kept and visible
        assert got is not None and got.total_tokens == 3
        disk.fail_errno = None
        await store.update("k", bump, durable=True)
        assert tokens(stored(store_path, mode, "k")) == 4
        assert store.statistics().pending == 0


async def test_aclose_with_a_persistent_fault_reports_what_was_lost(
    open_test_store: Opener, mode: str
) -> None:
    disk = FaultyDisk()
    async with open_test_store(filesystem=disk) as store:
        for i in range(3):
            await store.set(f"k{i}", entry(i))
        disk.fail_errno = errno.ENOSPC
        with anyio.fail_after(10), pytest.raises(FlushError, match="3 session") as caught:
            await store.aclose(timeout=0.5)
        assert caught.value.unwritten == 3
        assert caught.value.errno == errno.ENOSPC
        assert "not written" in str(caught.value)
        assert store.closed
        await store.aclose()  # idempotent: the context's exit does not raise again


async def test_aclose_gives_up_after_its_timeout_and_wakes_waiters(
    open_test_store: Opener, store_path: Path, mode: str
) -> None:
    """Another process holds the lock longer than aclose(timeout) waits: aclose returns, and
    a caller waiting for durability is told the store closed instead of hanging."""
    paths = StorePaths.of(store_path)
    async with open_test_store(lock_timeout=1.0) as store:
        await store.set("k", entry(1))
        await store.flush()
        if mode == "directory":
            lock_file = paths.directory / ".locks" / f"{lock_stripe('k', 64):02x}"
        else:
            lock_file = paths.lock
        fd = os.open(lock_file, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            outcome: list[BaseException] = []

            async def durable_writer() -> None:
                try:
                    await store.set("k", entry(2), durable=True)
                except BaseException as exc:
                    outcome.append(exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(durable_writer)
                await anyio.wait_all_tasks_blocked()
                with anyio.fail_after(20), pytest.raises(FlushError, match="did not finish within") as caught:
                    await store.aclose(timeout=0.2)
            assert caught.value.unwritten == 1
            # The waiter learns the outcome: the lock timed out, or the store closed first.
            assert len(outcome) == 1
            assert isinstance(outcome[0], (LockTimeoutError, StoreClosedError)), outcome
        finally:
            os.close(fd)
    assert tokens(stored(store_path, mode, "k")) == 1


async def test_failed_directory_fsync_rewrites_without_applying_updates_twice(
    store_path: Path, mode: str, open_test_store: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_directory, "JOURNAL_MODE", "off")  # fsyncs per file: of the folder too
    disk = DirFsyncFails()
    async with open_test_store(filesystem=disk, fsync=True) as store:
        await store.set("k", entry(10))
        await store.flush()
        await store.update("k", bump)
        disk.failures = 1  # the rename happens, then fsyncing its folder fails
        renames = disk.renames
        with pytest.raises(FlushError) as caught:
            await store.flush()
        assert caught.value.errno == errno.EIO
        assert disk.renames == renames + 1
        assert tokens(stored(store_path, mode, "k")) == 11  # visible, durability unknown
        assert store.statistics().pending == 1  # so not reported as flushed
        await store.update("k", bump)
        await store.flush()
        # Written again (a new file, not a second fsync of the old one) and each
        # increment applied exactly once.
        assert disk.renames == renames + 2
        assert tokens(stored(store_path, mode, "k")) == 12
        assert store.statistics().pending == 0


async def test_failed_fsync_of_a_new_session_folder_is_redone(
    store_path: Path, mode: str, open_test_store: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_directory, "JOURNAL_MODE", "off")  # fsyncs per file: of the folder too
    disk = DirFsyncFails()
    async with open_test_store(filesystem=disk, fsync=True) as store:
        await store.update("new", bump)
        disk.failures = 1
        with pytest.raises(FlushError):
            await store.flush()
        await store.flush()  # a rewrite; nothing applied twice
        assert tokens(stored(store_path, mode, "new")) == 1
        await store.delete("new")
        disk.failures = 1
        with pytest.raises(FlushError):
            await store.flush()
        assert stored(store_path, mode, "new") is None
        await store.flush()
        assert store.statistics().pending == 0
        assert await store.get("new") is None


# -- write-through ------------------------------------------------------------------------


async def test_write_through_returns_after_each_write_is_on_disk(
    open_test_store: Opener, store_path: Path, mode: str
) -> None:
    async with open_test_store(flush_interval=0) as store:
        await store.set("k", entry(1))
        assert tokens(stored(store_path, mode, "k")) == 1
        await store.update("k", bump)
        assert tokens(stored(store_path, mode, "k")) == 2
        assert await store.delete("k") is True
        assert stored(store_path, mode, "k") is None
        assert store.statistics().pending == 0


async def test_concurrent_write_through_callers_share_batches(
    open_test_store: Opener, store_path: Path, mode: str
) -> None:
    calls = 30
    disk = SlowDisk()
    async with open_test_store(filesystem=disk, flush_interval=0) as store:
        on_disk_at_return: list[bool] = []

        async def caller(i: int) -> None:
            await store.set(f"k{i}", entry(i))
            on_disk_at_return.append(tokens(stored(store_path, mode, f"k{i}")) == i)

        disk.block()
        async with anyio.create_task_group() as tg:
            for i in range(calls):
                tg.start_soon(caller, i)
            await disk.wait_entered()
            await anyio.wait_all_tasks_blocked()
            assert on_disk_at_return == []  # nobody returned before its write
            disk.release()
        assert on_disk_at_return == [True] * calls
        assert store.statistics().flushes < calls
        assert store.statistics().writes == calls


# -- cancellation -------------------------------------------------------------------------


async def test_a_caller_cancelled_while_waiting_for_durability_still_lands(
    open_test_store: Opener, store_path: Path, mode: str
) -> None:
    disk = SlowDisk()
    async with open_test_store(filesystem=disk) as store:
        disk.block()
        with anyio.CancelScope() as scope:

            async def cancel_when_stuck() -> None:
                await disk.wait_entered()
                scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_when_stuck)
                await store.set("k", entry(7), durable=True)
        assert scope.cancelled_caught
        assert await store.get("k") == entry(7)  # still this process's state
        disk.release()
        await store.flush()
        assert tokens(stored(store_path, mode, "k")) == 7
        # The flusher survived the cancelled caller.
        await store.set("k2", entry(8), durable=True)
        assert tokens(stored(store_path, mode, "k2")) == 8


async def test_callers_cancelled_on_the_key_lock_or_back_pressure_change_nothing(
    open_test_store: Opener, store_path: Path, mode: str
) -> None:
    disk = SlowDisk()
    async with open_test_store(filesystem=disk, max_pending_keys=1) as store:
        await store.set("x", entry(1))  # fills the queue
        disk.block()
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.set, "k", entry(2))  # waits for room, holding k's lock
            tg.start_soon(store.update, "k", bump)  # waits for k's lock
            await disk.wait_entered()
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
        assert await store.get("k") is None
        assert store.statistics().pending == 1
        disk.release()
        await store.flush()
        assert stored(store_path, mode, "k") is None
        assert tokens(stored(store_path, mode, "x")) == 1
        await store.update("k", bump)  # the key's lock was released
        await store.flush()
        assert tokens(stored(store_path, mode, "k")) == 1


# -- across stores (processes) ----------------------------------------------------------------


async def test_two_stores_updating_one_counter_lose_no_increment(
    open_test_store: Opener, store_path: Path, mode: str
) -> None:
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    async with open_test_store() as a, open_test_store() as b:
        stores = (a, b)
        await a.update("c", bump)  # both stores now race from 1
        await b.update("c", bump)
        await a.flush()
        await b.flush()  # b's base is stale: re-applied on top of a's write
        assert b.statistics().conflicts >= 1
        assert tokens(stored(store_path, mode, "c")) == 2
        increments = 2
        for _ in range(400):
            store = rng.choice(stores)
            if rng.random() < 0.7:
                await store.update("c", bump)
                increments += 1
            else:
                await store.flush()
        await a.flush()
        await b.flush()
        assert tokens(stored(store_path, mode, "c")) == increments
        assert a.statistics().conflicts + b.statistics().conflicts > 1


async def test_a_failing_reapply_is_kept_reported_and_backs_off(
    open_test_store: Opener, store_path: Path, mode: str
) -> None:
    def needs_a_counter(e: SessionEntry | None) -> SessionEntry:
        if e is not None and e.total_tokens is msgspec.UNSET:
            raise ValueError("no counter to increment")
        return bump(e)

    async with open_test_store() as a, open_test_store() as b:
        await a.set("c", entry(1))
        await a.flush()
        await a.update("c", needs_a_counter)
        await b.set("c", SessionEntry(session_id="other"))  # no counter: the re-apply will fail
        await b.flush()
        with pytest.raises(FlushError, match="re-applying"):
            await a.flush()
        assert a.statistics().flushes <= 3  # one attempt per flush, no busy retry loop
        assert stored(store_path, mode, "c") == {"sessionId": "other"}
        await b.set("c", entry(5))
        await b.flush()
        await a.flush()  # re-applied to the new value, which it accepts
        assert tokens(stored(store_path, mode, "c")) == 6


async def test_blind_set_is_last_writer_wins(open_test_store: Opener, store_path: Path, mode: str) -> None:
    async with open_test_store() as a, open_test_store() as b:
        await a.set("k", entry(1))
        await b.set("k", entry(2))
        await b.flush()
        await a.flush()
        assert tokens(stored(store_path, mode, "k")) == 1
        assert a.statistics().conflicts == 0  # a set does not compare
        await a.set("k", entry(3))
        await a.flush()
        await b.update("k", bump)  # b reads a's flushed value afresh before applying
        await b.flush()
        assert tokens(stored(store_path, mode, "k")) == 4


# -- statistics -----------------------------------------------------------------------------


async def test_statistics_report_the_queue(open_test_store: Opener) -> None:
    disk = FaultyDisk()
    async with open_test_store(filesystem=disk) as store, open_test_store() as other:
        stats = store.statistics()
        assert (stats.pending, stats.writes, stats.coalesced, stats.flushes) == (0, 0, 0, 0)
        assert (stats.failures, stats.conflicts, stats.oldest_pending_age) == (0, 0, 0.0)
        await store.update("a", bump)
        await store.update("a", bump)
        await store.set("b", entry(1))
        await other.get("a")  # some real work between the change and the check
        stats = store.statistics()
        assert stats.pending == 2 and stats.coalesced == 1
        assert stats.pending_bytes == len(CODEC.encode(entry(1))) + len(
            CODEC.encode(SessionEntry(session_id="counter", total_tokens=2))
        )
        assert stats.oldest_pending_age > 0
        await store.flush()
        stats = store.statistics()
        assert (stats.pending, stats.pending_bytes, stats.oldest_pending_age) == (0, 0, 0.0)
        assert (stats.writes, stats.flushes) == (2, 1)
        disk.fail_errno = errno.EIO
        await store.set("b", entry(2))
        with pytest.raises(FlushError):
            await store.flush()
        assert store.statistics().failures == 1
        disk.fail_errno = None
        await store.flush()
        await store.update("a", bump)
        await other.update("a", bump)
        await other.flush()
        await store.flush()
        stats = store.statistics()
        assert stats.conflicts == 1 and stats.pending == 0 and stats.writes == 4
