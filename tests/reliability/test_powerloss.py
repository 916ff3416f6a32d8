"""Simulated power loss: drop everything that was not fsynced, then reopen.

A workload runs on :class:`PowerLossFS`; the machine dies just before a random system call N
(every later call fails), the store is abandoned, and the disk is rebuilt as a power cut leaves
it: each file's data as of its last fsync, each folder's entries as of its last fsync (unsynced
creates vanish, unsynced renames are undone, a name synced without its data comes back empty).
Half of the cuts also let the kernel have written back a random half of the folders on its own
(with their files' data, as ext4's ``data=ordered`` does): a cut at another moment of writeback.

* ``fsync=True``: every acknowledged change survives; each key holds the state of a change no
  older than its last acknowledged one; every file parses.
* ``fsync=False``: nothing is promised about recent changes, but the store opens, every file
  parses (or is absent) and each key holds a state it really had.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import aiosessions
from aiosessions import SessionStoreError, _journal
from aiosessions._keys import encode_key
from aiosessions.backends import _directory

from .._v1_store import build_v1_store
from .conftest import PowerLossFS, Scale, disk_state, large, open_plain, record

pytestmark = pytest.mark.asyncio

KEYS = ["agent:main:telegram:direct:7", "agent:main:TELEGRAM:direct:7", "x/../../y", "long:" + "ж" * 150]
OPS_PER_RUN = 40


def value(key: str, n: int) -> dict[str, Any]:
    """Two of three values are large enough to be stored split (a blob kept across values,
    one new each time); the third is whole: writes go from split to whole and back."""
    split = n % 3 != 0
    return {
        "sessionId": key,
        "n": n,
        "blob": "b" * (n % 5) * 300,
        "snapshot": large(key),
        "report": large(f"{key} {n}") if split else "small",
    }


class Log:
    """Attempted and acknowledged changes per key; states are values or None (deleted)."""

    def __init__(self, start: dict[str, Any]) -> None:
        self.start = start
        self.tried: dict[str, list[tuple[int, Any]]] = {key: [] for key in start}
        self.acked: dict[str, int] = {}
        self.acks = 0
        #: The power went while the workload ran (not after it).
        self.cut_midway = True

    def allowed(self, key: str, *, durable: bool) -> list[Any]:
        """States ``key`` may hold after the cut: with durability, none older than its last ack."""
        last = self.acked.get(key) if durable else None
        states = [state for n, state in self.tried[key] if last is None or n >= last]
        if last is None:
            states.append(self.start[key])
        return states


async def workload(store: Any, log: Log, rng: random.Random, write_through: bool) -> None:
    """Counters per key (set, update, delete); acknowledge what ``durable``/``flush`` confirmed."""
    n = 0
    visible = dict(log.start)
    for _ in range(OPS_PER_RUN // (1 if write_through else 4)):
        burst = 1 if write_through else rng.randint(1, 8)
        touched: dict[str, int] = {}
        for _ in range(burst):
            key = rng.choice(KEYS)
            n += 1
            roll = rng.random()
            if roll < 0.15 and visible[key] is not None:
                log.tried[key].append((n, None))
                await store.delete(key)
                visible[key] = None
            elif roll < 0.6:
                log.tried[key].append((n, value(key, n)))
                await store.set(key, value(key, n))
                visible[key] = value(key, n)
            else:
                log.tried[key].append((n, value(key, n)))
                expected, new_value = visible[key], value(key, n)

                def fn(current: Any, expected: Any = expected, new: Any = new_value) -> Any:
                    assert current == expected, f"update saw {current!r}, not {expected!r}"
                    return new

                await store.update(key, fn)
                visible[key] = value(key, n)
            touched[key] = n
        if not write_through:
            await store.flush()
        for key, at in touched.items():
            log.acked[key] = at
            log.acks += 1


async def _baseline(store_path: Path, mode: str) -> dict[str, Any]:
    start = {key: value(key, 0) if i % 2 == 0 else None for i, key in enumerate(KEYS)}
    async with open_plain(store_path, mode=mode, fsync=True) as store:
        for key, entry in start.items():
            if entry is not None:
                await store.set(key, entry)
    return start


async def one_cut(
    base: Path,
    mode: str,
    fsync: bool,
    write_through: bool,
    rng: random.Random,
    fresh: bool,
    restart: Callable[[], None] = lambda: None,
) -> tuple[Log, dict[str, Any], bool]:
    """Run the workload until the power goes; rebuild the disk; reopen; return what was seen."""
    base.mkdir()
    store_path = base / "sessions.json"
    start = {key: None for key in KEYS} if fresh else await _baseline(store_path, mode)
    fs = PowerLossFS(base)
    fs.arm(rng.randint(1, 700))
    log = Log(start)
    try:
        async with aiosessions.open_store(
            store_path,
            mode=mode,
            entry_type=dict,
            flush_interval=0 if write_through else 3600,
            fsync=fsync,
            filesystem=fs,
        ) as store:
            try:
                await workload(store, log, rng, write_through)
            except SessionStoreError:
                pass  # the machine died under the workload
            log.cut_midway = fs.dead
            fs.crash()  # if it had not yet: the cut comes now, with nothing in flight
    except SessionStoreError:
        pass  # opening, or the final flush of the abandoned store, met the dead disk
    writeback = rng.random() < 0.5
    fs.power_cut(rng if writeback else None)
    restart()  # the machine starts again: a journal of the last start is replayed at open
    async with open_plain(store_path, mode=mode) as store:
        on_disk = disk_state(store_path, mode)  # every file parses with plain json, or is absent
        seen = {key: await store.get(key) for key in KEYS}
        assert seen == {key: on_disk.get(key) for key in KEYS}
        # The store is usable again: a write lands and reads back.
        await store.set(KEYS[0], value(KEYS[0], 10_000))
        await store.flush()
    assert disk_state(store_path, mode)[KEYS[0]] == value(KEYS[0], 10_000)
    return log, seen, writeback


CONFIGS = (
    [
        pytest.param(
            mode, fsync, through, "fsync", id=f"{mode}-fsync{int(fsync)}-{'through' if through else 'behind'}"
        )
        for mode in ("directory", "json")
        for fsync in (True, False)
        for through in (True, False)
    ]
    + [
        # Durable directory batches made durable by the syncfs barrier (every batch, forced).
        pytest.param("directory", True, through, "syncfs", id=f"directory-syncfs-{way}")
        for through, way in ((True, "through"), (False, "behind"))
    ]
    + [
        # Durable directory batches made durable by the batch journal (format version 3).
        pytest.param("directory", True, through, "journal", id=f"directory-journal-{way}")
        for through, way in ((True, "through"), (False, "behind"))
    ]
)


@pytest.mark.parametrize(("mode", "fsync", "write_through", "barrier"), CONFIGS)
async def test_power_loss(
    tmp_path: Path,
    scale: Scale,
    seed: int,
    mode: str,
    fsync: bool,
    write_through: bool,
    barrier: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Random power cuts: with fsync every acknowledged change survives; without, files parse."""
    monkeypatch.setattr(_directory, "BARRIER", "syncfs" if barrier == "journal" else barrier)
    monkeypatch.setattr(_directory, "JOURNAL_MODE", "on" if barrier == "journal" else "off")
    starts = itertools.count()
    boot = [f"boot-{next(starts)}"]
    monkeypatch.setattr(_journal, "current_boot", lambda: boot[0])
    rng = random.Random(seed)
    started = time.monotonic()
    acks = survived_newer = writebacks = midway = 0
    for cut in range(scale.power_cuts):
        fresh = cut % 4 == 3  # now and then the store itself is made under the failing disk
        log, seen, writeback = await one_cut(
            tmp_path / f"cut-{cut}",
            mode,
            fsync,
            write_through,
            rng,
            fresh,
            restart=lambda: boot.__setitem__(0, f"boot-{next(starts)}"),
        )
        writebacks += writeback
        midway += log.cut_midway
        acks += log.acks
        for key in KEYS:
            allowed = log.allowed(key, durable=fsync)
            assert seen[key] in allowed, (
                f"cut {cut} (seed {seed}): {key!r} holds {seen[key]!r}; last acknowledged "
                f"n={log.acked.get(key)}, allowed {[None if s is None else s['n'] for s in allowed]}"
            )
            if fsync and seen[key] is not None and seen[key]["n"] > log.acked.get(key, -1):
                survived_newer += 1
    record(
        "power_loss",
        scale=scale.name,
        mode=mode,
        fsync=fsync,
        write_through=write_through,
        barrier=barrier,
        power_cuts=scale.power_cuts,
        with_writeback=writebacks,
        cut_mid_workload=midway,
        unacknowledged_that_survived=survived_newer,
        acknowledged=acks,
        lost_acknowledged=0,
        seconds=round(time.monotonic() - started, 1),
    )


async def test_power_loss_while_a_version_1_store_is_moved_forward(
    tmp_path: Path, scale: Scale, seed: int
) -> None:
    """The power goes at a random call of the upgrade (an open of a version-1 store): the next
    open finds every entry, whole, and leaves a version-2 store; what the upgrade does not carry
    over (a stray file, a session folder's extra file) is in its quarantine, once."""
    rng = random.Random(seed)
    entries = {key: value(key, n) for n, key in enumerate(KEYS, start=1)}  # split and whole ones
    template = tmp_path / "template"
    template.mkdir()
    old = build_v1_store(template / "sessions.json", entries)
    strays = {"notes.txt": b"operator notes", "attachment.bin": b"a session's extra file"}
    (old / "notes.txt").write_bytes(strays["notes.txt"])
    (old / encode_key(KEYS[0]) / "attachment.bin").write_bytes(strays["attachment.bin"])
    probe = tmp_path / "probe"
    shutil.copytree(template, probe)
    fs = PowerLossFS(probe)
    fs.arm(None)
    async with open_plain(probe / "sessions.json", filesystem=fs):
        pass
    calls = fs.calls  # what a whole upgrade makes
    assert calls > 100
    writebacks = 0
    for cut in range(scale.power_cuts):
        work = tmp_path / f"cut-{cut}"
        shutil.copytree(template, work)
        fs = PowerLossFS(work)
        at = rng.randint(1, calls)
        fs.arm(at)
        try:
            async with open_plain(work / "sessions.json", filesystem=fs):
                fs.crash()
        except SessionStoreError:
            pass  # the machine died under the upgrade
        writeback = rng.random() < 0.5
        writebacks += writeback
        fs.power_cut(rng if writeback else None)
        where = f"cut {cut} at call {at} of {calls} (seed {seed})"
        async with open_plain(work / "sessions.json") as store:
            assert {key: await store.get(key) for key in KEYS} == entries, where
        marker = json.loads((work / "sessions.d" / "FORMAT").read_bytes())
        assert marker["version"] == 3, where
        assert disk_state(work / "sessions.json", "directory") == entries, where
        for name, data in strays.items():
            (kept,) = (work / "sessions.d" / ".quarantine").glob(f"format-1-*/**/{name}")
            assert kept.read_bytes() == data, where
    record(
        "power_loss_upgrade",
        scale=scale.name,
        power_cuts=scale.power_cuts,
        with_writeback=writebacks,
        calls_of_an_upgrade=calls,
    )


async def test_power_loss_model_is_strict(tmp_path: Path) -> None:
    """The model really drops what was not synced (so the tests above can fail)."""
    store_path = tmp_path / "sessions.json"
    async with open_plain(store_path, fsync=True) as store:
        await store.set("kept", {"v": 1})
    fs = PowerLossFS(tmp_path)
    with pytest.raises(SessionStoreError):
        async with aiosessions.open_store(
            store_path, entry_type=dict, flush_interval=3600, fsync=False, filesystem=fs
        ) as store:
            await store.set("kept", {"v": 2})
            await store.set("new", {"v": 1})
            await store.flush()  # written and renamed, never fsynced
            assert disk_state(store_path, "directory") == {"kept": {"v": 2}, "new": {"v": 1}}
            fs.crash()
            await store.set("more", {"v": 1}, durable=True)
    fs.power_cut()
    assert disk_state(store_path, "directory") == {"kept": {"v": 1}}
    # A name made durable without its data comes back empty (the classic zero-length file).
    fs = PowerLossFS(tmp_path)
    folder = store_path.with_name("sessions.d")
    fd = fs.open_dir(str(folder))
    try:
        inner = fs.open("late", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=fd)
        fs.write(inner, b"data never synced")
        fs.close(inner)
        fs.fsync(fd)
    finally:
        fs.close(fd)
    fs.power_cut()
    assert (folder / "late").read_bytes() == b""


class _SyncfsDoesNothing(PowerLossFS):
    """A barrier that makes nothing durable: the model must notice."""

    def syncfs(self, fd: int) -> None:
        self._point("syncfs")
        self.fsyncs += 1


#: The batch of the two tests below: 20 sessions changed and one made, in one durable batch.
BATCH_KEYS = [f"agent:main:k{i}" for i in range(20)]
AFTER_THE_BATCH = {**{key: {"v": 2} for key in BATCH_KEYS}, "agent:main:new": {"v": 1}}


async def _one_batch_then_the_power_goes(tmp_path: Path, fs_type: type[PowerLossFS], syncs: int) -> Path:
    """The 20 sessions written durably; then, on ``fs_type``, the batch, acknowledged after
    ``syncs`` fsyncs or syncfs calls; then the power cut. Returns the store's path."""
    store_path = tmp_path / "sessions.json"
    async with open_plain(store_path, fsync=True) as store:
        for key in BATCH_KEYS:
            await store.set(key, {"v": 1})
    fs = fs_type(tmp_path)
    async with aiosessions.open_store(
        store_path, entry_type=dict, flush_interval=3600, fsync=True, filesystem=fs
    ) as store:
        for key in BATCH_KEYS:
            await store.set(key, {"v": 2})
        await store.set("agent:main:new", {"v": 1})
        await store.flush()  # acknowledged: durable, as far as the store's way of syncing says
        assert fs.fsyncs == syncs
        fs.crash()
    fs.power_cut()
    return store_path


@pytest.mark.parametrize("honest", [True, False], ids=["syncfs", "syncfs-dropped"])
async def test_power_loss_model_is_strict_about_the_barrier(
    tmp_path: Path, honest: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A durable batch behind the syncfs barrier survives a power cut; with the barrier made a
    no-op in the model, the same batch is lost (so the barrier tests above can fail)."""
    monkeypatch.setattr(_directory, "BARRIER", "syncfs")
    monkeypatch.setattr(_directory, "JOURNAL_MODE", "off")
    # One batch, two barriers, no per-file fsync.
    store_path = await _one_batch_then_the_power_goes(
        tmp_path, PowerLossFS if honest else _SyncfsDoesNothing, 2
    )
    state = disk_state(store_path, "directory")
    assert (state == AFTER_THE_BATCH) is honest


class _JournalFsyncDoesNothing(PowerLossFS):
    """A journal whose fsync makes nothing durable: the model must notice."""

    def fsync(self, fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("/.journal"):
            self._point("fsync")
            self.fsyncs += 1
            return
        super().fsync(fd)


@pytest.mark.parametrize("honest", [True, False], ids=["journal", "journal-fsync-dropped"])
async def test_power_loss_model_is_strict_about_the_journal(
    tmp_path: Path, honest: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A durable batch through the journal survives a power cut (replayed at the next start);
    with the journal's fsync made a no-op in the model, the same batch is lost."""
    monkeypatch.setattr(_directory, "JOURNAL_MODE", "on")
    boot = ["before"]
    monkeypatch.setattr(_journal, "current_boot", lambda: boot[0])
    # One batch, one fsync: the journal's.
    fs_type = PowerLossFS if honest else _JournalFsyncDoesNothing
    store_path = await _one_batch_then_the_power_goes(tmp_path, fs_type, 1)
    boot[0] = "after"
    async with open_plain(store_path) as store:
        state = {key: await store.get(key) for key in AFTER_THE_BATCH}
    assert (state == AFTER_THE_BATCH) is honest
