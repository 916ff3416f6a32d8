"""The store's lifecycle: opened in one task and closed in another, cancelled from outside,
closed twice at once, closed while calls are in flight; what it accepted is always written.

Runs on asyncio and trio (the anyio plugin's ``anyio_backend``) and on both file backends.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

import aiosessions
from aiosessions import FlushError, InvalidEntryError, SessionEntry, SessionStore, StoreClosedError
from aiosessions._entry import MAX_NESTING, codec_for
from aiosessions._fs import FileSystem
from aiosessions.backends import BatchResult, DirectoryBackend, Write, _directory

pytestmark = pytest.mark.anyio

Opener = Callable[..., Any]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def on_disk(store_path: Path, mode: str) -> dict[str, Any]:
    """Every stored entry, read from the files (parsed JSON)."""
    if mode == "json":
        return json.loads(store_path.read_bytes()) if store_path.exists() else {}
    folder = store_path.with_name(store_path.stem + ".d")
    found: dict[str, Any] = {}
    for meta in folder.glob("*/meta.json"):
        entry = json.loads(meta.read_bytes())
        found[entry["sessionId"]] = entry
    return found


def entry(key: str, n: int) -> SessionEntry:
    """An entry that names its own key (so the directory reader above can find it)."""
    return SessionEntry(session_id=key, total_tokens=n)


# -- opened in one task, closed in another --------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # trio's way is task_group=, below
async def test_async_with_entered_and_left_in_different_tasks(store_path: Path, mode: str) -> None:
    """As pytest-asyncio fixtures and AsyncExitStack-based startup/shutdown hooks do."""
    stack = contextlib.AsyncExitStack()
    opened: list[SessionStore[SessionEntry]] = []

    async def startup() -> None:
        opened.append(await stack.enter_async_context(aiosessions.open_store(store_path, mode=mode)))

    async def shutdown() -> None:
        await stack.aclose()

    async with anyio.create_task_group() as tg:
        tg.start_soon(startup)
    store = opened[0]
    for i in range(50):
        await store.set(f"k{i}", entry(f"k{i}", i))
    async with anyio.create_task_group() as tg:
        tg.start_soon(shutdown)
    assert store.closed
    assert len(on_disk(store_path, mode)) == 50


async def test_await_open_store_then_aclose_from_another_task(
    store_path: Path, mode: str, anyio_backend: str
) -> None:
    async with anyio.create_task_group() as nursery:
        # On asyncio the store needs no task group; on trio it is handed one that outlives it.
        task_group = nursery if anyio_backend == "trio" else None
        store = await aiosessions.open_store(store_path, mode=mode, task_group=task_group)
        for i in range(30):
            await store.set(f"k{i}", entry(f"k{i}", i))
        done = anyio.Event()

        async def shutdown_hook() -> None:
            await store.aclose()
            done.set()

        nursery.start_soon(shutdown_hook)
        await done.wait()
    assert len(on_disk(store_path, mode)) == 30


# -- background tasks start at the first write ----------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # counts asyncio's tasks
async def test_a_store_only_read_runs_no_background_task(tmp_path: Path) -> None:
    """Opening to read costs no task; the first write starts the flusher; close ends it."""
    import asyncio

    store_path = tmp_path / "sessions.json"
    async with aiosessions.open_store(store_path, entry_type=dict) as store:
        await store.set("k", {"v": 1})
    # A sweep began now (a new store's first one may have been cut short by the close):
    # the next opens have no upkeep due.
    (tmp_path / "sessions.d" / ".swept").touch()
    before = len(asyncio.all_tasks())
    async with aiosessions.open_store(store_path, entry_type=dict) as store:
        assert await store.get("k") == {"v": 1}
        assert [key async for key in store.keys()] == ["k"]
        await store.flush()  # nothing pending: nothing to start
        assert len(asyncio.all_tasks()) == before
        await store.set("k", {"v": 2})
        assert len(asyncio.all_tasks()) > before  # the host task, the flusher, the upkeep
    assert len(asyncio.all_tasks()) == before
    async with aiosessions.open_store(store_path, entry_type=dict) as store:
        assert await store.get("k") == {"v": 2}


async def test_a_close_racing_the_first_write_loses_nothing_accepted(
    store_path: Path, mode: str, anyio_backend: str
) -> None:
    """A close that begins while writes are starting the flusher waits for the start,
    then writes what they queued; a write that loses the race raises StoreClosedError."""

    async def write(store: SessionStore[Any], key: str, accepted: list[str]) -> None:
        with contextlib.suppress(StoreClosedError):
            await store.set(key, {"sessionId": key})
            accepted.append(key)

    for _ in range(20):
        accepted: list[str] = []
        async with anyio.create_task_group() as nursery:
            given = nursery if anyio_backend == "trio" else None
            store = await aiosessions.open_store(store_path, mode=mode, entry_type=dict, task_group=given)
            for i in range(random.randrange(1, 6)):
                nursery.start_soon(write, store, f"k{i}", accepted)
            for _ in range(random.randrange(3)):
                await anyio.lowlevel.checkpoint()
            await store.aclose()
        async with aiosessions.open_store(store_path, mode=mode, entry_type=dict) as check:
            stored = [key async for key in check.keys()]
            assert set(accepted) <= set(stored)
            for key in stored:
                await check.delete(key)


@pytest.mark.parametrize("anyio_backend", ["trio"])  # asyncio needs no task group
async def test_await_open_store_on_trio_without_a_task_group_says_what_to_do(store_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"task_group=nursery"):
        await aiosessions.open_store(store_path)
    assert not store_path.with_name("sessions.d").exists()


async def test_an_opener_is_used_once(store_path: Path) -> None:
    opener = aiosessions.open_store(store_path)
    async with opener:
        pass
    with pytest.raises(RuntimeError, match="used already"):
        async with opener:
            pass


def test_a_store_is_made_by_the_openers_only(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="made by open_store"):
        SessionStore(  # type: ignore[call-arg]
            DirectoryBackend(tmp_path / "s.json"),
            codec_for(SessionEntry),
            flush_interval=0.05,
            fsync=True,
            max_pending_keys=10,
            max_pending_bytes=10,
            max_entry_bytes=10,
        )


async def test_a_failed_open_leaves_nothing_open(tmp_path: Path) -> None:
    """No ResourceWarning (warnings are errors here) and no descriptor kept."""
    legacy = tmp_path / "sessions.json"
    legacy.write_text("{ not json")
    before = set(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with pytest.raises(aiosessions.CorruptSessionError):
            async with aiosessions.open_store(legacy):
                pass
    assert set(os.listdir("/proc/self/fd")) <= before


# -- cancellation never loses what was accepted ---------------------------------------------


async def test_a_timeout_around_the_store_loses_nothing(store_path: Path, mode: str) -> None:
    """100 sets, then the code around the store is cancelled: all 100 are written at close."""
    with anyio.move_on_after(0.5):
        async with aiosessions.open_store(store_path, mode=mode, flush_interval=3600) as store:
            for i in range(100):
                await store.set(f"k{i}", entry(f"k{i}", i))
            await anyio.sleep_forever()
    assert len(on_disk(store_path, mode)) == 100


async def test_cancelling_the_task_that_owns_the_store_loses_nothing(store_path: Path, mode: str) -> None:
    """A worker task with its own `async with open_store()` is cancelled at shutdown."""
    returned: dict[str, int] = {}

    async def worker() -> None:
        async with aiosessions.open_store(store_path, mode=mode, flush_interval=0.05) as store:
            i = 0
            while True:
                key = f"k{i % 40}"
                await store.update(key, lambda e, key=key, i=i: entry(key, i))
                returned[key] = i
                i += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker)
        while len(returned) < 40 or sum(returned.values()) < 2_000:
            await anyio.sleep(0.001)
        tg.cancel_scope.cancel()
    stored = on_disk(store_path, mode)
    assert {key: e["totalTokens"] for key, e in stored.items()} == returned


async def test_cancellation_at_random_points_loses_nothing_accepted(store_path: Path, mode: str) -> None:
    """Hundreds of writes per round, cancelled at a random moment; every write that returned is
    on disk after the close, and a write that was interrupted is either there or not at all."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    accepted: dict[str, int] = {}
    for round_no in range(12):
        attempted: dict[str, int] = {}
        options: dict[str, Any] = {"mode": mode, "fsync": False}
        options["flush_interval"] = rng.choice([0, 0.001, 0.05, 3600])
        with anyio.move_on_after(rng.uniform(0.001, 0.08)):
            async with aiosessions.open_store(store_path, **options) as store:
                for i in range(400):
                    key = f"k{rng.randrange(60)}"
                    value = round_no * 1000 + i + 1  # never 0: -value marks a delete
                    op = rng.random()
                    attempted[key] = -value if op >= 0.9 else value  # negative: a delete
                    if op < 0.45:
                        await store.set(key, entry(key, value))
                    elif op < 0.9:
                        await store.update(key, lambda e, key=key, value=value: entry(key, value))
                    else:
                        await store.delete(key)
                    accepted[key] = attempted[key]
        stored = {key: e["totalTokens"] for key, e in on_disk(store_path, mode).items()}
        for key in set(accepted) | set(stored):
            want = accepted.get(key)
            got = stored.get(key)
            interrupted = attempted.get(key)
            ok = {want if want is None or want >= 0 else None}
            if interrupted is not None and interrupted != want:
                ok.add(interrupted if interrupted >= 0 else None)
            assert got in ok, f"seed {seed} round {round_no}: {key} is {got}, expected one of {ok}"
            if got is None:
                accepted.pop(key, None)
            else:
                accepted[key] = got


def test_keyboard_interrupt_in_anyio_run_loses_nothing(tmp_path: Path, mode: str) -> None:
    for backend in ("asyncio", "trio"):
        store_path = tmp_path / backend / "sessions.json"
        store_path.parent.mkdir()
        child = textwrap.dedent(
            f"""
            import anyio, aiosessions, signal, sys
            from aiosessions import SessionEntry

            # A shell's background job starts with SIGINT ignored, and Python keeps it so:
            # this child must get KeyboardInterrupt whoever started the test run.
            signal.signal(signal.SIGINT, signal.default_int_handler)

            async def main():
                async with aiosessions.open_store({str(store_path)!r}, mode={mode!r},
                                                  flush_interval=3600) as store:
                    for i in range(100):
                        await store.set(f"k{{i}}", SessionEntry(session_id=f"k{{i}}", total_tokens=i))
                    print("ready", flush=True)
                    await anyio.sleep_forever()

            try:
                anyio.run(main, backend={backend!r})
            except KeyboardInterrupt:
                print("interrupted", flush=True)
            """
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", child],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert "interrupted" in out, err
        assert len(on_disk(store_path, mode)) == 100, (backend, err)


# -- closing --------------------------------------------------------------------------------


class SlowWrites(FileSystem):
    """Every write waits for ``release`` (a threading.Event): a disk that is slow to answer."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.release.set()

    def write_atomic(self, *args: Any, **kwargs: Any) -> Any:
        self.release.wait(30)
        return super().write_atomic(*args, **kwargs)


async def test_two_closes_at_once_both_wait_for_the_writes(store_path: Path, mode: str) -> None:
    disk = SlowWrites()
    seen_at_return: list[int] = []
    async with anyio.create_task_group() as nursery:
        store = await aiosessions.open_store(
            store_path, mode=mode, flush_interval=3600, filesystem=disk, task_group=nursery
        )
        for i in range(50):
            await store.set(f"k{i}", entry(f"k{i}", i))
        disk.release.clear()

        async def closer() -> None:
            await store.aclose()
            seen_at_return.append(len(on_disk(store_path, mode)))

        async with anyio.create_task_group() as tg:
            tg.start_soon(closer)
            tg.start_soon(closer)
            await anyio.wait_all_tasks_blocked()
            disk.release.set()
    assert seen_at_return == [50, 50]


async def test_every_close_reports_the_same_failure(
    store_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_directory, "JOURNAL_MODE", "off")  # writes by write_atomic

    class Full(FileSystem):
        full = False

        def write_atomic(self, *args: Any, **kwargs: Any) -> Any:
            if self.full:
                raise OSError(28, "No space left on device")
            return super().write_atomic(*args, **kwargs)

    errors: list[BaseException] = []
    disk = Full()
    async with anyio.create_task_group() as nursery:
        store = await aiosessions.open_store(
            store_path, mode=mode, flush_interval=3600, filesystem=disk, task_group=nursery
        )
        disk.full = True
        await store.set("k", entry("k", 1))

        async def closer() -> None:
            try:
                await store.aclose(timeout=5)
            except FlushError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(closer)
            tg.start_soon(closer)
    assert len(errors) == 2 and errors[0] is errors[1]
    assert "1 session" in str(errors[0]) and errors[0].errno == 28
    await store.aclose()  # over: the error was raised to both callers already


class BlockingReads(FileSystem):
    """Reads of ``meta.json`` (and of the legacy file) wait for ``release``, in a worker thread
    (a cache miss: with ``read`` overridden, no read is answered inline from the page cache)."""

    def read(self, fd: int, size: int) -> bytes:
        return super().read(fd, size)

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()

    def read_file(self, *args: Any, **kwargs: Any) -> Any:
        if not self.release.is_set():
            self.entered.set()
            self.release.wait(30)
        return super().read_file(*args, **kwargs)


async def test_close_waits_for_a_read_in_a_worker_thread(store_path: Path, mode: str) -> None:
    disk = BlockingReads()
    async with anyio.create_task_group() as nursery:
        store = await aiosessions.open_store(
            store_path, mode=mode, cache_bytes=0, filesystem=disk, task_group=nursery
        )
        await store.set("k", entry("k", 7), durable=True)
        if mode == "json":
            # Make the next read reload the file in a worker thread: change it behind our back.
            data = json.loads(store_path.read_bytes())
            data["k"]["totalTokens"] = 8
            store_path.write_text(json.dumps(data, indent=2))
        disk.release.clear()
        results: list[Any] = []
        closed_before_read_returned: list[bool] = []

        async def reader() -> None:
            results.append(await store.get("k"))
            closed_before_read_returned.append(closed.is_set())

        closed = anyio.Event()

        async def closer() -> None:
            await store.aclose()
            closed.set()

        nursery.start_soon(reader)
        await anyio.to_thread.run_sync(disk.entered.wait, 10)
        nursery.start_soon(closer)
        await anyio.wait_all_tasks_blocked()
        assert not closed.is_set(), "aclose() returned while a read still used the store's files"
        disk.release.set()
    assert results and results[0] is not None and results[0].session_id == "k"
    assert closed_before_read_returned == [False]


async def test_calls_after_close_raise_store_closed(store_path: Path, mode: str) -> None:
    async with aiosessions.open_store(store_path, mode=mode) as store:
        for i in range(10):
            await store.set(f"k{i}", entry(f"k{i}", i))
    calls: Sequence[Callable[[], Any]] = [
        lambda: store.get("k1"),
        lambda: store.contains("k1"),
        lambda: store.updated_at("k1"),
        lambda: store.set("k1", entry("k1", 1)),
        lambda: store.update("k1", lambda e: e),
        lambda: store.delete("k1"),
        lambda: store.flush(),
    ]
    for call in calls:
        with pytest.raises(StoreClosedError):
            await call()
    with pytest.raises(StoreClosedError):
        async for _ in store.keys():
            pass
    with pytest.raises(StoreClosedError):
        async for _ in store.items():
            pass


async def test_an_iteration_in_progress_raises_when_the_store_closes(store_path: Path) -> None:
    async with anyio.create_task_group() as nursery:
        store = await aiosessions.open_store(store_path, task_group=nursery)
        for i in range(2_000):  # more than one chunk of the directory listing
            await store.set(f"k{i}", entry(f"k{i}", i))
        await store.flush()
        listed: list[str] = []
        with pytest.raises(StoreClosedError):
            async for key in store.keys():
                listed.append(key)
                if len(listed) == 10:
                    await store.aclose()
        assert 10 <= len(listed) < 2_000


# -- a batch that raised after part of it landed ---------------------------------------------


class RaisesAfterLanding(DirectoryBackend):
    """Writes the batch, then raises as an unexpected bug would: the outcome is unknown."""

    fail_next = False

    async def write_batch(self, writes: Sequence[Write], *, durable: bool) -> BatchResult:
        result = await super().write_batch(writes, durable=durable)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("a bug after the batch landed")
        return result


async def test_an_exception_after_the_batch_landed_does_not_apply_updates_twice(tmp_path: Path) -> None:
    backend = RaisesAfterLanding(tmp_path / "sessions.json")
    calls = 0

    def bump(current: dict[str, Any] | None) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"n": (current or {"n": 0})["n"] + 1}

    async with aiosessions.open_store(backend, entry_type=dict, flush_interval=3600) as store:
        for _ in range(3):
            await store.update("k", bump)
        await store.flush()
        for _ in range(5):
            await store.update("k", bump)
        backend.fail_next = True
        with pytest.raises(FlushError):
            await store.flush()
        await store.flush()  # the retry finds its own bytes and counts them as landed
        assert calls == 8
    async with aiosessions.open_store(tmp_path / "sessions.json", entry_type=dict) as store:
        assert await store.get("k") == {"n": 8}


# -- what set() accepts, get() gives back ----------------------------------------------------


async def test_an_entry_over_max_entry_bytes_is_refused_at_set(store_path: Path, mode: str) -> None:
    async with aiosessions.open_store(store_path, mode=mode, max_entry_bytes=1000) as store:
        await store.set("small", entry("small", 1))
        big = SessionEntry(session_id="big", extra={"blob": "x" * 2000})
        with pytest.raises(InvalidEntryError, match=r"'big'.*over the store's max_entry_bytes of 1,000"):
            await store.set("big", big, durable=True)
        with pytest.raises(InvalidEntryError, match="max_entry_bytes"):
            await store.update("small", lambda e: big)
        assert await store.get("small") == entry("small", 1)
        assert await store.contains("big") is False
    assert set(on_disk(store_path, mode)) == {"small"}
    async with aiosessions.open_store(store_path, mode=mode, max_entry_bytes=1000) as store:
        assert [key async for key in store.keys()] == ["small"]


async def test_an_entry_nested_too_deep_is_refused_at_set(store_path: Path, mode: str) -> None:
    def nested(depth: int) -> Any:
        value: Any = []
        for _ in range(depth - 1):
            value = [value]
        return value

    async with aiosessions.open_store(store_path, mode=mode, entry_type=dict) as store:
        await store.set("ok", {"v": nested(MAX_NESTING - 1)})
        for depth in (MAX_NESTING + 1, 990, 1000, 1100):
            with pytest.raises((InvalidEntryError, RecursionError)):
                await store.set("deep", {"v": nested(depth)})
        await store.flush()
    async with aiosessions.open_store(store_path, mode=mode, entry_type=dict) as store:
        assert await store.get("ok") == {"v": nested(MAX_NESTING - 1)}
        assert await store.contains("deep") is False


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the store's own task: asyncio only
async def test_a_flusher_that_fails_to_start_fails_the_first_write(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The background tasks start at the first write: its caller gets the error, the
    store still reads and closes, and nothing is left open."""
    from aiosessions._writebehind import WriteBehind

    async def broken(self: Any, **kwargs: Any) -> None:
        raise RuntimeError("the flusher broke before it started")

    monkeypatch.setattr(WriteBehind, "run", broken)
    before = set(os.listdir("/proc/self/fd"))
    with anyio.fail_after(10):
        store = await aiosessions.open_store(store_path, entry_type=dict)
        assert await store.get("k") is None
        for _ in range(2):  # a failed start is tried again by the next write
            with pytest.raises(BaseException, match="the flusher broke"):
                await store.set("k", {"v": 1})
        assert await store.get("k") is None  # refused, not half accepted
        await store.aclose()
    assert set(os.listdir("/proc/self/fd")) <= before
