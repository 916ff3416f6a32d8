"""The batch journal of a directory store (format version 3): its record format, one fsync per
durable batch whatever its size, replay after the machine started again, checkpoints, and a
store of the previous release (version 2) moved forward.

Power cuts at every system call, with the journal, are in tests/reliability/test_powerloss.py;
failures at every call in tests/reliability/test_faults.py.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from typing import Any

import msgspec
import pytest

import aiosessions
from aiosessions import _journal
from aiosessions._bench import sized_sessions
from aiosessions._fs import FileSystem
from aiosessions._journal import HEADER_SIZE, JOURNAL, header, parse, record
from aiosessions.backends import _directory

from .reliability.conftest import PowerLossFS, disk_state
from .test_barrier import CountingFS

pytestmark = pytest.mark.anyio

FIXTURE = Path(__file__).parent / "fixtures" / "v2-release-store.tar.gz"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def journal_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every durable batch of these tests goes through the journal, whatever the disk."""
    monkeypatch.setattr(_directory, "JOURNAL_MODE", "on")


class Boots:
    """The machine's boot id as the store sees it: :meth:`restart` is a new start."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.n = 0
        monkeypatch.setattr(_journal, "current_boot", lambda: f"test-boot-{self.n}")

    def restart(self) -> None:
        self.n += 1


@pytest.fixture
def boots(monkeypatch: pytest.MonkeyPatch) -> Boots:
    return Boots(monkeypatch)


def journal_of(path: Path) -> tuple[str | None, list[list[Any]]]:
    return parse((path.with_name("sessions.d") / JOURNAL).read_bytes())


# -- the record format ------------------------------------------------------------------------


def test_a_record_cut_short_or_damaged_ends_the_journal() -> None:
    one = record([("a", "a", b'{"n":1}', {})])
    two = record([("b", "b", None, {}), ("c", "c", b"{}", {"d" * 64: b'"blob"'})])
    whole = header("boot-1") + one + two
    assert parse(whole) == (
        "boot-1",
        [[("a", "a", b'{"n":1}', {})], [("b", "b", None, {}), ("c", "c", b"{}", {"d" * 64: b'"blob"'})]],
    )
    assert parse(whole[:-1])[1] == [[("a", "a", b'{"n":1}', {})]]  # torn: never fsynced, never acknowledged
    damaged = bytearray(whole)
    damaged[len(header("boot-1")) + len(one) + 20] ^= 0xFF
    assert parse(bytes(damaged))[1] == [[("a", "a", b'{"n":1}', {})]]
    assert parse(b"") == (None, [])
    assert parse(header("boot-1")[:-3]) == (None, [])
    assert len(header("x" * 100)) == HEADER_SIZE


# -- what a durable batch costs ---------------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.parametrize("keys", [1, 10, 1000])
async def test_a_durable_batch_costs_one_fsync_whatever_its_size(tmp_path: Path, keys: int) -> None:
    path = tmp_path / "sessions.json"
    fs = CountingFS()
    async with aiosessions.open_store(
        path, entry_type=dict, flush_interval=3600, fsync=True, filesystem=fs
    ) as store:
        await store.set("warm", {"n": 0}, durable=True)  # makes the journal (its header, its name)
        before, barriers = fs.fsyncs, fs.syncfs_calls
        for i in range(keys):
            await store.set(f"agent:main:{i}", {"n": i})  # new sessions: folders made too
        await store.flush()
        assert fs.fsyncs - before == 1 and fs.syncfs_calls == barriers
        before = fs.fsyncs
        await store.update("agent:main:0", lambda e: {**e, "n": -1}, durable=True)
        assert fs.fsyncs - before == 1
    boot, records = journal_of(path)
    assert boot == _journal.current_boot() and len(records) == 3
    assert len(records[1]) == keys
    async with aiosessions.open_store(path, entry_type=dict) as store:
        assert await store.get("agent:main:0") == {"n": -1}
        assert await store.count() == keys + 1


async def test_a_record_holds_the_blobs_not_durable_yet_and_then_what_changed(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    key, entry = next(iter(sized_sessions(1, 121_000, seed=21).items()))
    async with aiosessions.open_store(path, entry_type=dict, fsync=True, flush_interval=0) as store:
        await store.set(key, entry)
        await store.update(key, lambda e: {**e, "updatedAt": 1})
    _, records = journal_of(path)
    (_, _, _first_meta, first_blobs), (_, _, second_meta, second_blobs) = records[0][0], records[1][0]
    assert len(first_blobs) == 2 and sum(map(len, first_blobs.values())) > 100_000
    assert second_blobs == {} and len(second_meta) < 2_000  # the update costs what it changes


# -- after the machine started again ----------------------------------------------------------


@pytest.mark.parametrize("keys", [1, 40])
async def test_a_power_cut_after_a_durable_batch_is_replayed_at_the_next_start(
    tmp_path: Path, boots: Boots, keys: int
) -> None:
    """Acknowledged through the journal, renamed but never synced: a power cut loses the
    renames; the first open after the restart replays the record."""
    path = tmp_path / "sessions.json"
    big = next(iter(sized_sessions(1, 121_000, seed=22).values()))
    async with aiosessions.open_store(path, entry_type=dict, fsync=True) as store:
        await store.set("kept", {"v": 1})
        await store.set("gone", {"v": 1})
    fs = PowerLossFS(tmp_path)
    async with aiosessions.open_store(
        path, entry_type=dict, flush_interval=3600, fsync=True, filesystem=fs
    ) as store:
        for i in range(keys):
            await store.set(f"agent:main:{i}", {**big, "i": i} if i % 2 else {"i": i})
        await store.set("kept", {"v": 2})
        await store.delete("gone")
        await store.flush()  # acknowledged: durable, as far as the journal says
        fs.crash()
    fs.power_cut()
    expected = {
        "kept": {"v": 2},
        **{f"agent:main:{i}": {**big, "i": i} if i % 2 else {"i": i} for i in range(keys)},
    }
    assert disk_state(path, "directory") != expected  # the renames were lost...
    boots.restart()
    async with aiosessions.open_store(path, entry_type=dict) as store:  # ... and are replayed
        assert {key: value async for key, value in store.items()} == expected
        assert await store.count() == len(expected)
    assert disk_state(path, "directory") == expected
    assert journal_of(path) == (_journal.current_boot(), [])  # cut back once replayed


async def test_fsck_reports_an_unreplayed_journal_and_repair_replays_it(tmp_path: Path, boots: Boots) -> None:
    path = tmp_path / "sessions.json"
    async with aiosessions.open_store(path, entry_type=dict, fsync=True) as store:
        await store.set("k", {"v": 1})
    fs = PowerLossFS(tmp_path)
    async with aiosessions.open_store(path, entry_type=dict, fsync=True, filesystem=fs) as store:
        await store.set("k", {"v": 2}, durable=True)
        fs.crash()
    fs.power_cut()
    boots.restart()
    report = await aiosessions.fsck(path)
    assert [problem.kind for problem in report.problems] == ["unreplayed-journal"]
    assert "2 write(s)" in report.problems[0].detail  # both stores wrote through the journal
    assert disk_state(path, "directory") == {"k": {"v": 1}}  # a check writes nothing
    repaired = await aiosessions.fsck(path, repair=True)
    assert repaired.problems == () and disk_state(path, "directory") == {"k": {"v": 2}}


async def test_without_a_restart_the_journal_is_not_replayed(tmp_path: Path, boots: Boots) -> None:
    """Records of this start of the machine: only processes died, and the page cache holds
    every rename, newer writes made without the journal included; nothing is written back."""
    path = tmp_path / "sessions.json"
    async with aiosessions.open_store(path, entry_type=dict, fsync=True) as store:
        await store.set("k", {"v": 1})
    async with aiosessions.open_store(path, entry_type=dict, fsync=False) as store:
        await store.set("k", {"v": 2})
    async with aiosessions.open_store(path, entry_type=dict) as store:
        assert await store.get("k") == {"v": 2}
    assert len(journal_of(path)[1]) == 1


async def test_a_journal_past_its_bound_is_checkpointed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_directory, "JOURNAL_MAX", 2_000)
    path = tmp_path / "sessions.json"
    fs = CountingFS()
    async with aiosessions.open_store(
        path, entry_type=dict, fsync=True, flush_interval=0, filesystem=fs
    ) as store:
        for i in range(30):
            await store.set(f"k{i}", {"pad": "x" * 300, "i": i})
        assert fs.syncfs_calls >= 3
        assert (path.with_name("sessions.d") / JOURNAL).stat().st_size < 2_000 + 1_000
    async with aiosessions.open_store(path, entry_type=dict) as store:
        assert await store.count() == 30


async def test_a_failed_append_fails_the_batch_and_changes_nothing(tmp_path: Path) -> None:
    class FailingJournal(FileSystem):
        fail = False

        def fsync(self, fd: int) -> None:
            if self.fail and os.readlink(f"/proc/self/fd/{fd}").endswith(JOURNAL):
                raise OSError(5, "Input/output error (injected)")
            super().fsync(fd)

    path = tmp_path / "sessions.json"
    fs = FailingJournal()
    async with aiosessions.open_store(
        path, entry_type=dict, fsync=True, flush_interval=3600, filesystem=fs
    ) as store:
        await store.set("k", {"v": 1}, durable=True)
        fs.fail = True
        with pytest.raises(aiosessions.StoreIOError, match="journal"):
            await store.set("k", {"v": 2}, durable=True)
        assert disk_state(path, "directory") == {"k": {"v": 1}}
        assert [p.name for p in (path.with_name("sessions.d")).glob("k/*") if ".tmp" in p.name] == []
        fs.fail = False
        await store.flush()  # still queued: written again
    assert disk_state(path, "directory") == {"k": {"v": 2}}


# -- a store of the previous release ----------------------------------------------------------


async def test_a_store_of_the_previous_release_moves_to_version_3_as_it_is(tmp_path: Path) -> None:
    """``tests/fixtures/v2-release-store.tar.gz`` was written by the last release of format
    version 2 (``make_v2_release_store.py``), beside its own export of every session."""
    with tarfile.open(FIXTURE) as archive:
        options = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        archive.extractall(tmp_path, **options)
    expected = json.loads((tmp_path / "expected.json").read_bytes())
    path = tmp_path / "sessions.json"
    folder = path.with_name("sessions.d")
    marker = folder / "FORMAT"
    assert json.loads(marker.read_bytes())["version"] == 2
    blobs = sorted(p.relative_to(folder) for p in folder.glob("*/blob-*.json"))
    assert len(blobs) == 4
    async with aiosessions.open_store(path, entry_type=dict) as store:
        assert json.loads(marker.read_bytes())["version"] == 3
        assert {key: value async for key, value in store.items()} == expected
        key = "agent:main:telegram:direct:large"
        await store.update_members(key, ["updatedAt"], lambda m: {"updatedAt": 8}, durable=True)
    assert sorted(p.relative_to(folder) for p in folder.glob("*/blob-*.json")) == blobs  # kept as they are
    _, records = journal_of(path)
    assert [entry[1] for entry in records[0]] == [key] and records[0][0][3] != {}  # its blobs, once
    async with aiosessions.open_store(path, entry_type=dict) as store:
        assert await store.get(key) == {**expected[key], "updatedAt": 8}


async def test_a_version_2_store_read_only_stays_version_2(tmp_path: Path) -> None:
    with tarfile.open(FIXTURE) as archive:
        options = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        archive.extractall(tmp_path, **options)
    expected = json.loads((tmp_path / "expected.json").read_bytes())
    count = await aiosessions.export_json(tmp_path / "sessions.json", tmp_path / "out.json")
    assert count == len(expected) and json.loads((tmp_path / "out.json").read_bytes()) == expected
    assert msgspec.json.decode((tmp_path / "sessions.d" / "FORMAT").read_bytes())["version"] == 2
    assert not (tmp_path / "sessions.d" / JOURNAL).exists()
