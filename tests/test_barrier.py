"""The durability barrier of durable directory batches: when syncfs may stand in for per-file
fsyncs, which one a batch takes, and that a barrier batch is two syncfs calls whatever its size.

What a barrier batch leaves after a power cut or a failing system call is checked in
tests/reliability (test_powerloss.py, test_faults.py, test_model.py)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

import aiosessions
from aiosessions import FileSystem
from aiosessions._barrier import BarrierPolicy, syncfs_filesystem
from aiosessions._keys import encode_key
from aiosessions.backends import _directory

MOUNTINFO = """\
22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
23 22 0:21 / /proc rw,nosuid - proc proc rw
24 22 0:5 / /mnt/nfs rw shared:7 - nfs4 server:/export rw,vers=4.2
25 22 0:45 / /var/lib/docker/x rw - overlay overlay rw,lowerdir=/a,upperdir=/b
26 22 0:46 / /dev/shm rw - tmpfs tmpfs rw
"""


def test_syncfs_filesystem_reads_the_type_of_the_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    monkeypatch.setattr(os, "uname", lambda: os.uname_result(("Linux", "h", "6.18.0", "#1", "x86_64")))
    assert syncfs_filesystem(os.makedev(252, 0), mountinfo=str(info)) == "ext4"
    assert syncfs_filesystem(os.makedev(0, 46), mountinfo=str(info)) == "tmpfs"
    # Network, FUSE-like and overlay filesystems keep per-file fsync.
    assert syncfs_filesystem(os.makedev(0, 5), mountinfo=str(info)) is None
    assert syncfs_filesystem(os.makedev(0, 45), mountinfo=str(info)) is None
    assert syncfs_filesystem(os.makedev(9, 9), mountinfo=str(info)) is None
    assert syncfs_filesystem(os.makedev(252, 0), mountinfo=str(tmp_path / "absent")) is None
    # Before Linux 5.8 syncfs did not report write-back errors: never trusted there.
    monkeypatch.setattr(os, "uname", lambda: os.uname_result(("Linux", "h", "5.4.0", "#1", "x86_64")))
    assert syncfs_filesystem(os.makedev(252, 0), mountinfo=str(info)) is None


def test_policy_takes_the_barrier_when_it_is_cheaper() -> None:
    policy = BarrierPolicy("auto", available=True)
    assert not policy.use_barrier(BarrierPolicy.MIN_BATCH - 1)  # too small to pay off
    assert policy.use_barrier(100)  # not measured yet: try it
    policy.barriered(0.05, 0.04, 100)  # 40 ms of syncfs + 0.1 ms per key
    policy.fsynced(0.02, 10)  # 2 ms per key with fsyncs (in running average)
    assert policy.per_key_fsync > 0.0015
    assert policy.use_barrier(100)  # 40 + 10 ms < 100 x ~1.6 ms
    assert not policy.use_barrier(10)  # 40 + 1 ms > 10 x ~1.6 ms
    # A barrier that lost is tried again now and then, not ruled out for good.
    taken = [policy.use_barrier(10) for _ in range(BarrierPolicy.REPROBE)]
    assert taken.count(True) == 1


def test_policy_forced_and_unavailable() -> None:
    assert BarrierPolicy("syncfs", available=True).use_barrier(1)
    assert not BarrierPolicy("fsync", available=True).use_barrier(10_000)
    assert not BarrierPolicy("auto", available=False).use_barrier(10_000)
    assert not BarrierPolicy("syncfs", available=False).use_barrier(10_000)


def test_filesystem_syncfs_is_a_system_call_method(tmp_path: Path) -> None:
    assert "syncfs" in FileSystem.SYSCALLS
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        FileSystem().syncfs(fd)  # Linux: the real call succeeds
    finally:
        os.close(fd)
    with pytest.raises(OSError) as caught:
        FileSystem().syncfs(987_654)
    assert caught.value.errno == errno.EBADF


class CountingFS(FileSystem):
    def __init__(self) -> None:
        self.fsyncs = 0
        self.syncfs_calls = 0

    def fsync(self, fd: int) -> None:
        self.fsyncs += 1
        super().fsync(fd)

    def syncfs(self, fd: int) -> None:
        self.syncfs_calls += 1
        super().syncfs(fd)


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.anyio
@pytest.mark.parametrize("keys", [10, 1000])
async def test_a_durable_batch_costs_two_barriers_whatever_its_size(
    tmp_path: Path, anyio_backend: str, keys: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_directory, "BARRIER", "syncfs")
    monkeypatch.setattr(_directory, "JOURNAL_MODE", "off")
    path = tmp_path / "sessions.json"
    fs = CountingFS()
    names = [f"agent:main:k{i}" for i in range(keys - 1)] + ["long:" + "ж" * 150]
    async with aiosessions.open_store(
        path, entry_type=dict, flush_interval=3600, fsync=True, filesystem=fs
    ) as store:
        for key in names:
            await store.set(key, {"sessionId": key})
        fs.fsyncs = fs.syncfs_calls = 0
        await store.flush()
        assert (fs.syncfs_calls, fs.fsyncs) == (2, 0)
        await store.update(names[0], lambda e: {**e, "n": 1})
        await store.delete(names[1])
        await store.flush()
        assert (fs.syncfs_calls, fs.fsyncs) == (4, 0)
    folder = tmp_path / "sessions.d"
    assert json.loads((folder / encode_key(names[0]) / "meta.json").read_bytes()) == {
        "sessionId": names[0],
        "n": 1,
    }
    assert not (folder / encode_key(names[1])).exists()
    assert (folder / encode_key(names[-1]) / "key").read_text("utf-8") == names[-1]
    leftovers = [p for p in folder.rglob("*.tmp")]
    assert leftovers == []
    async with aiosessions.open_store(path, entry_type=dict) as store:
        assert len([key async for key in store.keys()]) == keys - 1


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_compare_and_swap_under_the_barrier(
    tmp_path: Path, anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An update whose stored bytes changed under it conflicts and is re-applied, as without
    the barrier; another process's write in between is kept."""
    monkeypatch.setattr(_directory, "BARRIER", "syncfs")
    monkeypatch.setattr(_directory, "JOURNAL_MODE", "off")
    path = tmp_path / "sessions.json"
    async with aiosessions.open_store(path, entry_type=dict, flush_interval=3600, fsync=True) as a:
        await a.set("k", {"n": 0})
        await a.flush()
        async with aiosessions.open_store(path, entry_type=dict, flush_interval=0, fsync=True) as b:
            await a.update("k", lambda e: {**e, "n": e["n"] + 1, "a": True})
            await b.update("k", lambda e: {**e, "n": e["n"] + 1, "b": True})
            await a.flush()
            assert a.statistics().conflicts == 1
        assert await a.get("k") == {"n": 2, "a": True, "b": True}
