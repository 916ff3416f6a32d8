"""Every error the store raises on purpose: its type, its message, what it names, its cause."""

from __future__ import annotations

import errno
import fcntl
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest

import aiosessions
from aiosessions import (
    CorruptSessionError,
    FileSystem,
    FlushError,
    InvalidKeyError,
    LockTimeoutError,
    SessionEntry,
    SessionStoreError,
    StoreClosedError,
    StoreIOError,
)
from aiosessions._keys import MAX_KEY_BYTES, encode_key, lock_stripe
from aiosessions._layout import LOCK_STRIPES

pytestmark = pytest.mark.asyncio

Opener = Callable[..., Any]


class Note(msgspec.Struct):
    text: str


class FaultyFileSystem(FileSystem):
    """Fails ``write`` / ``read`` with EIO while armed; counts the bytes read."""

    def __init__(self) -> None:
        self.fail_write = False
        self.fail_read = False
        self.bytes_read = 0

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if self.fail_write:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return super().write(fd, data)

    def read(self, fd: int, size: int) -> bytes:
        if self.fail_read:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        data = super().read(fd, size)
        self.bytes_read += len(data)
        return data


def meta_path(store_path: Path, key: str) -> Path:
    return store_path.with_name(store_path.stem + ".d") / encode_key(key) / "meta.json"


# -- CorruptSessionError -------------------------------------------------------------------


async def test_a_corrupt_entry_affects_that_key_only(
    open_test_store: Opener, store_path: Path, mode: str, plant: Any
) -> None:
    bad = "agent:main:bad"
    async with open_test_store() as store:
        for key in ("agent:main:good", bad, "agent:main:other"):
            await store.set(key, SessionEntry(session_id=key[-4:], updated_at=1))
    # Directory mode: a torn file; JSON mode: a member that is not an object.
    plant(bad, b'{"sessionId": "torn' if mode == "directory" else b"42")
    where = str(meta_path(store_path, bad)) if mode == "directory" else str(store_path)

    async with open_test_store() as store:
        for call in (
            lambda: store.get(bad),
            lambda: store.updated_at(bad),
            lambda: store.update(bad, lambda e: e),
        ):
            with pytest.raises(CorruptSessionError) as caught:
                await call()
            error = caught.value
            assert error.key == bad and error.path == where
            assert where in str(error) and repr(bad) in str(error)
            assert isinstance(error.__cause__, msgspec.DecodeError)
        # Every other session is readable, and the bad one is still listed.
        assert await store.get("agent:main:good") == SessionEntry(session_id="good", updated_at=1)
        assert await store.updated_at("agent:main:other") == 1
        assert await store.contains(bad) is True
        assert sorted([k async for k in store.keys()]) == [
            "agent:main:bad",
            "agent:main:good",
            "agent:main:other",
        ]
        with pytest.raises(CorruptSessionError):
            [item async for item in store.items()]
        assert len([item async for item in store.items(skip_corrupt=True)]) == 2
        assert len(store._locks) == 0
        # The entry can be replaced (or deleted) whole.
        await store.set(bad, SessionEntry(session_id="fixed"))
        await store.flush()
    async with open_test_store() as store:
        assert await store.get(bad) == SessionEntry(session_id="fixed")


async def test_an_oversized_entry_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    async with aiosessions.open_store(path, fsync=False) as store:
        await store.set("huge", SessionEntry(session_id="h"))
        await store.set("small", SessionEntry(session_id="s"))
    huge = meta_path(path, "huge")
    os.truncate(huge, 8 * 1024**3)  # a sparse 8 GiB meta.json: no disk used, fatal if loaded
    fs = FaultyFileSystem()
    async with aiosessions.open_store(path, fsync=False, filesystem=fs) as store:
        with pytest.raises(CorruptSessionError, match="max_entry_bytes") as caught:
            await store.get("huge")
        assert caught.value.key == "huge" and caught.value.path == str(huge)
        assert str(huge) in str(caught.value)
        assert isinstance(caught.value.__cause__, OSError)
        with pytest.raises(CorruptSessionError):
            await store.updated_at("huge")
        assert await store.get("small") == SessionEntry(session_id="s")
        assert [k async for k, _ in store.items(skip_corrupt=True)] == ["small"]
        assert fs.bytes_read < 64 * 1024


async def test_max_entry_bytes_is_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    async with aiosessions.open_store(path, entry_type=dict, fsync=False) as store:
        await store.set("k", {"pad": "x" * 90})
    size = meta_path(path, "k").stat().st_size
    async with aiosessions.open_store(path, entry_type=dict, max_entry_bytes=size) as store:
        assert await store.get("k") == {"pad": "x" * 90}
    async with aiosessions.open_store(path, entry_type=dict, max_entry_bytes=size - 1) as store:
        with pytest.raises(CorruptSessionError, match=f"max_entry_bytes={size - 1}"):
            await store.get("k")


# -- InvalidKeyError -----------------------------------------------------------------------

BAD_KEYS: list[tuple[Any, str]] = [
    ("", "empty"),
    ("agent:main:\x00", "NUL"),
    ("agent:\ud800:x", "surrogate"),
    (42, "not int"),
    (None, "NoneType"),
    (b"agent:main:x", "bytes"),
    ("x" * (MAX_KEY_BYTES + 1), "at most"),
]


@pytest.mark.parametrize(("key", "problem"), BAD_KEYS, ids=[p for _, p in BAD_KEYS])
async def test_invalid_keys_are_refused_by_every_method(
    open_test_store: Opener, store_path: Path, mode: str, key: Any, problem: str
) -> None:
    problem = problem.replace("not int", "int")
    called: list[Any] = []
    async with open_test_store() as store:
        calls: list[Callable[[], Any]] = [
            lambda: store.get(key),
            lambda: store.set(key, SessionEntry(session_id="x")),
            lambda: store.update(key, called.append),
            lambda: store.delete(key),
            lambda: store.updated_at(key),
            lambda: store.contains(key),
        ]
        for call in calls:
            with pytest.raises(InvalidKeyError, match=problem) as caught:
                await call()
            assert isinstance(caught.value, ValueError)
            assert caught.value.key == key
            assert str(caught.value).startswith("invalid session key")
        assert called == []
        assert store.statistics().pending == 0
        assert len(store._locks) == 0
        assert [k async for k in store.keys()] == []


# -- TypeError -----------------------------------------------------------------------------


async def test_setting_a_wrong_entry_type_is_a_type_error(open_test_store: Opener) -> None:
    async with open_test_store() as store:
        with pytest.raises(TypeError, match="SessionEntry entries, not dict"):
            await store.set("k", {"sessionId": "x"})
        with pytest.raises(TypeError, match="not Note"):
            await store.set("k", Note(text="x"))
    async with open_test_store(entry_type=dict) as store:
        with pytest.raises(TypeError, match="dict entries, not SessionEntry"):
            await store.set("k", SessionEntry(session_id="x"))
    async with open_test_store(entry_type=Note) as store:
        with pytest.raises(TypeError, match="Note entries, not SessionEntry"):
            await store.set("k", SessionEntry(session_id="x"))
        assert store.statistics().pending == 0


async def test_update_returning_a_wrong_type_changes_nothing(open_test_store: Opener) -> None:
    async with open_test_store() as store:
        await store.set("k", SessionEntry(session_id="before"))
        with pytest.raises(TypeError, match="not dict"):
            await store.update("k", lambda e: {"sessionId": "after"})
        assert await store.get("k") == SessionEntry(session_id="before")
        assert len(store._locks) == 0

        async def not_a_plain_function(entry: Any) -> Any:
            return entry

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(TypeError, match="coroutine"):
                await store.update("k", not_a_plain_function)
            import gc

            gc.collect()
        assert [w.message for w in caught] == []  # no "coroutine ... was never awaited"
        assert await store.get("k") == SessionEntry(session_id="before")


async def test_an_entry_type_that_is_not_a_struct(store_path: Path) -> None:
    with pytest.raises(TypeError, match="entry_type"):
        aiosessions.open_store(store_path, entry_type=int)
    assert not store_path.parent.joinpath("sessions.d").exists()


# -- StoreIOError --------------------------------------------------------------------------


def check_io_error(error: BaseException, key: str | None, where: str) -> None:
    assert isinstance(error, StoreIOError) and isinstance(error, OSError)
    assert isinstance(error, SessionStoreError)
    assert error.errno == errno.EIO
    assert error.filename == where
    assert where in str(error)
    if key is not None:
        assert error.key == key and repr(key) in str(error)
    cause = error.__cause__
    assert isinstance(cause, OSError) and cause.errno == errno.EIO


@pytest.mark.parametrize("how", ["write-through", "durable"])
async def test_a_failed_write_is_a_store_io_error(store_path: Path, mode: str, how: str) -> None:
    fs = FaultyFileSystem()
    key = "agent:main:k"
    options: dict[str, Any] = {"mode": mode, "fsync": True, "filesystem": fs}
    options["flush_interval"] = 0 if how == "write-through" else 3600
    where = str(meta_path(store_path, key)) if mode == "directory" else str(store_path)
    async with aiosessions.open_store(store_path, **options) as store:
        await store.set("first", SessionEntry(session_id="1"), durable=True)
        fs.fail_write = True
        with pytest.raises(StoreIOError) as caught:
            await store.set(key, SessionEntry(session_id="2"), durable=True)
        check_io_error(caught.value, key if mode == "directory" else None, where)
        # Still visible to this process and still queued: nothing was dropped.
        assert await store.get(key) == SessionEntry(session_id="2")
        assert store.statistics().pending == 1 and store.statistics().failures >= 1
        fs.fail_write = False
        await store.flush()
        assert store.statistics().pending == 0
    async with aiosessions.open_store(store_path, mode=mode, fsync=False) as store:
        assert await store.get(key) == SessionEntry(session_id="2")


async def test_a_failed_flush_is_a_flush_error(open_test_store: Opener, store_path: Path, mode: str) -> None:
    fs = FaultyFileSystem()
    async with open_test_store(filesystem=fs) as store:
        await store.set("a", SessionEntry(session_id="a"))
        await store.set("b", SessionEntry(session_id="b"))
        fs.fail_write = True
        with pytest.raises(FlushError) as caught:
            await store.flush()
        error = caught.value
        assert isinstance(error, StoreIOError) and error.errno == errno.EIO
        assert set(error.failures) == {"a", "b"} and error.unwritten == 2
        assert "could not be written" in str(error)
        for failure in error.failures.values():
            assert isinstance(failure, StoreIOError) and isinstance(failure.__cause__, OSError)
        assert error.__cause__ is not None
        fs.fail_write = False
        await store.flush()
    async with open_test_store() as store:
        assert sorted([k async for k in store.keys()]) == ["a", "b"]


async def test_a_failed_read_is_a_store_io_error(store_path: Path, mode: str) -> None:
    key = "agent:main:k"
    async with aiosessions.open_store(store_path, mode=mode, fsync=False) as store:
        await store.set(key, SessionEntry(session_id="x"))
    fs = FaultyFileSystem()
    if mode == "json":
        fs.fail_read = True  # the legacy file is read whole when the store opens
        with pytest.raises(StoreIOError) as caught:
            async with aiosessions.open_store(store_path, filesystem=fs):
                pytest.fail("opened a store whose file cannot be read")
        check_io_error(caught.value, None, str(store_path))
        return
    async with aiosessions.open_store(store_path, filesystem=fs) as store:
        fs.fail_read = True
        with pytest.raises(StoreIOError) as caught:
            await store.get(key)
        check_io_error(caught.value, key, str(meta_path(store_path, key)))
        fs.fail_read = False
        assert await store.get(key) == SessionEntry(session_id="x")


# -- StoreClosedError ----------------------------------------------------------------------


async def test_store_closed_error_names_the_store(open_test_store: Opener) -> None:
    async with open_test_store() as store:
        pass
    with pytest.raises(StoreClosedError) as caught:
        await store.set("k", SessionEntry(session_id="x"))
    assert store.path in str(caught.value)
    assert isinstance(caught.value, SessionStoreError)


# -- LockTimeoutError ----------------------------------------------------------------------


@contextmanager
def held(lock_file: Path) -> Iterator[None]:
    """Hold ``lock_file`` the way another process would: flock on a descriptor of its own."""
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


async def test_a_lock_held_too_long_is_a_lock_timeout_error(
    open_test_store: Opener, store_path: Path, mode: str
) -> None:
    key = "agent:main:k"
    async with open_test_store(lock_timeout=0.2) as store:
        if mode == "directory":
            lock_file = Path(store.path) / ".locks" / f"{lock_stripe(key, LOCK_STRIPES):02x}"
        else:
            lock_file = store_path.with_name(".sessions.lock")
        with held(lock_file):
            with pytest.raises(LockTimeoutError) as caught:
                await store.set(key, SessionEntry(session_id="x"), durable=True)
            assert isinstance(caught.value, TimeoutError)
            assert str(lock_file) in str(caught.value) and "0.2s" in str(caught.value)
            with pytest.raises(FlushError) as flushing:
                await store.flush()
            assert isinstance(flushing.value.failures[key], LockTimeoutError)
            assert await store.get(key) == SessionEntry(session_id="x")
        # Once the other holder lets go, the queued change is written.
        await store.flush()
        assert store.statistics().pending == 0
    async with open_test_store() as store:
        assert await store.get(key) == SessionEntry(session_id="x")
