"""Disk faults: SQLite's I/O-error loop over every system call of every write path.

For each operation (set, update, delete, a new session, a batch flush; migrate and prune when
the library has them) and each backend, the Nth system call fails with ENOSPC, EIO or EACCES —
once (a transient fault) or from then on (a full or broken disk) — for N = 1, 2, 3 … until the
operation runs without reaching call N. After each run:

* every key reads its old or its new value, through the store and straight from disk (never a
  torn file, never another key's value);
* a failure reached the caller as a ``StoreIOError`` that names a file of the store;
* changes that did not reach the disk are still queued (``statistics().pending``);
* once the fault clears, ``flush()`` succeeds, the disk holds every new value, no tmp file is
  left anywhere and a fresh open reads the same.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import aiosessions
from aiosessions import FileSystem, SessionStoreError, StoreIOError
from aiosessions.backends import _directory

from .._v1_store import build_v1_store
from .conftest import (
    FaultFS,
    disk_state,
    large,
    open_plain,
    plant_old_orphan,
    record,
    tmp_files,
    wait_swept,
)

pytestmark = pytest.mark.asyncio

LONG = "agent:main:" + "é" * 200  # shortened name: a `key` file beside meta.json
KEYS = ["agent:main:telegram:direct:james", "agent:main:Telegram:direct:James", "../../etc/passwd", LONG]
NEW_KEY = "agent:main:discord:channel:42"
ERRNOS = {"ENOSPC": errno.ENOSPC, "EIO": errno.EIO, "EACCES": errno.EACCES}
#: The loop stops here at the latest; no operation makes this many calls.
MAX_CALLS = 400


def entry(key: str, version: int) -> dict[str, Any]:
    """An entry that names its own key, so a value can never pass for another key's.

    About 18 KB: stored split (format version 2), ``skillsSnapshot`` the same blob in every
    version of a key (written once, then found), ``systemPromptReport`` a new one each time.
    """
    return {
        "sessionId": key,
        "updatedAt": version,
        "pad": "x" * (version % 7) * 100,
        "skillsSnapshot": large(key),
        "systemPromptReport": large(f"{key} {version}"),
    }


OLD = {key: entry(key, 1) for key in KEYS}


def bump(value: dict[str, Any] | None) -> dict[str, Any]:
    assert value is not None
    return entry(value["sessionId"], value["updatedAt"] + 1)


@dataclass
class Op:
    """One operation under test: what it does and the state it leaves when it succeeds."""

    name: str
    run: Callable[[Any], Awaitable[None]]
    new: dict[str, dict[str, Any] | None]
    #: Whether the operation itself (not only a flush) reads the disk first.
    reads_first: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


async def _set(store: Any) -> None:
    await store.set(KEYS[0], entry(KEYS[0], 2), durable=True)


async def _update(store: Any) -> None:
    await store.update(KEYS[1], bump, durable=True)


async def _delete(store: Any) -> None:
    assert await store.delete(KEYS[2], durable=True)


async def _create(store: Any) -> None:
    await store.set(NEW_KEY, entry(NEW_KEY, 1), durable=True)


async def _update_long(store: Any) -> None:
    await store.update(LONG, bump, durable=True)


async def _batch(store: Any) -> None:
    await store.set(KEYS[0], entry(KEYS[0], 2))
    await store.update(KEYS[1], bump)
    await store.delete(KEYS[2])
    await store.update(LONG, bump)
    await store.set(NEW_KEY, entry(NEW_KEY, 1))
    await store.flush()


OPS = {
    op.name: op
    for op in [
        Op("set", _set, {KEYS[0]: entry(KEYS[0], 2)}),
        Op("update", _update, {KEYS[1]: entry(KEYS[1], 2)}, reads_first=True),
        Op("update-long-key", _update_long, {LONG: entry(LONG, 2)}, reads_first=True),
        Op("delete", _delete, {KEYS[2]: None}, reads_first=True),
        Op("create", _create, {NEW_KEY: entry(NEW_KEY, 1)}),
        Op(
            "flush-batch",
            _batch,
            {
                KEYS[0]: entry(KEYS[0], 2),
                KEYS[1]: entry(KEYS[1], 2),
                KEYS[2]: None,
                LONG: entry(LONG, 2),
                NEW_KEY: entry(NEW_KEY, 1),
            },
            reads_first=True,
        ),
    ]
}


@dataclass
class Tally:
    """What one fault loop did."""

    runs: int = 0
    injected: int = 0
    errors: int = 0
    points: set[str] = field(default_factory=set)


async def _template(base: Path, mode: str) -> Path:
    """A store holding OLD, made once and copied for every run of the loop."""
    template = base / "template"
    template.mkdir()
    async with open_plain(template / "sessions.json", mode=mode) as store:
        for key, value in OLD.items():
            await store.set(key, value)
    return template


def _fresh_copy(template: Path, target: Path) -> Path:
    shutil.copytree(template, target, symlinks=True)
    return target / "sessions.json"


def _assert_names_store_file(error: BaseException, root: Path) -> None:
    assert isinstance(error, StoreIOError), f"{type(error).__name__} is not a StoreIOError: {error!r}"
    assert error.errno is not None
    filename = error.filename
    assert isinstance(filename, str) and filename, f"{error!r} names no file"
    assert os.path.isabs(filename) and Path(filename).is_relative_to(root), (
        f"{error!r} names {filename!r}, not a file of the store under {root}"
    )
    assert filename in str(error), f"the message of {error!r} does not show {filename}"


async def _one_run(
    template: Path, work: Path, mode: str, op: Op, err: int, persistent: bool, n: int, tally: Tally
) -> bool:
    """Run ``op`` with call ``n`` failing; check everything; return whether the fault fired."""
    store_path = _fresh_copy(template, work)
    plant_old_orphan(store_path, mode)
    fs = FaultFS()
    expected_new = {**OLD, **op.new}
    error: BaseException | None = None
    async with aiosessions.open_store(
        store_path,
        mode=mode,
        entry_type=dict,
        flush_interval=3600,
        fsync=True,
        lock_timeout=2,
        filesystem=fs,
    ) as store:
        await wait_swept(store)
        fs.arm(n, err, persistent=persistent)
        try:
            await op.run(store)
        except SessionStoreError as exc:
            error = exc
        finally:
            fs.disarm()
        fired = fs.triggered
        tally.runs += 1
        tally.injected += len(fs.injected)
        tally.points.update(f"{name}" for _, name, _ in fs.injected)
        where = f"{op.name} {mode} {errno.errorcode[err]} {'persistent' if persistent else 'once'} call {n}"
        if fired:
            where += f" ({fs.injected[0][1]} {fs.injected[0][2] or ''})"
        if error is not None:
            tally.errors += 1
            assert fired, f"{where}: {error!r} without an injected fault"
            _assert_names_store_file(error, work)
        # Every key reads its old or its new value, through the store and from disk.
        on_disk = disk_state(store_path, mode)
        mismatched = 0
        for key in expected_new.keys() | OLD.keys():
            old, new = OLD.get(key), expected_new.get(key)
            visible = await store.get(key)
            assert visible in (old, new), f"{where}: {key!r} reads {visible!r}"
            assert on_disk.get(key) in (old, new), f"{where}: {key!r} on disk is {on_disk.get(key)!r}"
            if error is None:
                assert visible == new, f"{where}: succeeded but {key!r} reads {visible!r}"
            if visible != on_disk.get(key):
                mismatched += 1
        assert store.statistics().pending >= mismatched, (
            f"{where}: {mismatched} key(s) differ from disk but only {store.statistics().pending} are queued"
        )
        # The fault clears: one flush writes everything, and nothing is left behind.
        await store.flush()
        assert store.statistics().pending == 0, where
        accepted = {key: await store.get(key) for key in expected_new}
        assert disk_state(store_path, mode) == {k: v for k, v in accepted.items() if v is not None}, where
        if error is None or not op.reads_first:
            assert accepted == expected_new, where
    left = tmp_files(work)
    assert not left, f"{where}: tmp files left after recovery: {left}"
    if mode == "directory":
        trash = list((work / "sessions.d" / ".trash").iterdir())
        assert not trash, f"{where}: deleted folders left in the trash after close: {trash}"
    async with open_plain(store_path) as reopened:
        for key, value in accepted.items():
            assert await reopened.get(key) == value, where
    shutil.rmtree(work)
    return fired


async def fault_loop(base: Path, mode: str, op: Op, err: int, persistent: bool) -> Tally:
    """N = 1, 2, 3 … until the operation completes without reaching call N."""
    template = await _template(base, mode)
    tally = Tally()
    for n in range(1, MAX_CALLS):
        if not await _one_run(template, base / f"run-{n}", mode, op, err, persistent, n, tally):
            return tally
    raise AssertionError(f"{op.name} still reached call {MAX_CALLS}")


#: CI runs three of the six errno x once/persistent combinations of every fault point; the
#: soak runs the other three (the code paths differ by errno only in the messages).
CI_FAULTS = {("EIO", False), ("ENOSPC", True), ("EACCES", False)}


def _fault_params(*prefix: str, ops: list[str] | None = None) -> list[Any]:
    params = []
    for op in ops if ops is not None else [""]:
        for name in ERRNOS:
            for persistent in (False, True):
                marks = [] if (name, persistent) in CI_FAULTS else [pytest.mark.soak]
                args = (op, name, persistent) if op else (name, persistent)
                how = "persistent" if persistent else "once"
                label = "-".join([*prefix, *([op] if op else []), name, how])
                params.append(pytest.param(*args, id=label, marks=marks))
    return params


CASES = _fault_params(ops=list(OPS))


# -- migrate and prune --------------------------------------------------------------------------

STALE = {f"agent:main:cron:stale-{i}": {"sessionId": f"stale-{i}", "updatedAt": 1_000 + i} for i in range(3)}
FRESH_AT = 1_900_000_000_000


async def _legacy_template(base: Path) -> Path:
    template = base / "template"
    template.mkdir()
    async with open_plain(template / "sessions.json", mode="json") as store:
        for key, value in OLD.items():
            await store.set(key, value)
    return template


async def _prune_template(base: Path, mode: str) -> Path:
    template = base / "template"
    template.mkdir()
    async with open_plain(template / "sessions.json", mode=mode) as store:
        for key in OLD:
            await store.set(key, {**OLD[key], "updatedAt": FRESH_AT})
        for key, value in STALE.items():
            await store.set(key, value)
    return template


async def _stored(store_path: Path) -> tuple[str, dict[str, Any]]:
    """The mode a fresh open finds and every entry it reads (on the real filesystem)."""
    async with open_plain(store_path) as store:
        return store.mode, {key: value async for key, value in store.items()}


async def _maintenance_loop(
    base: Path,
    template: Path,
    run: Callable[[Path, FaultFS], Awaitable[object]],
    check: Callable[[Path, str, dict[str, Any], bool], None],
    err: int,
    persistent: bool,
    label: str,
    max_calls: int = MAX_CALLS,
) -> Tally:
    """The I/O-error loop for a whole-store operation: it either finishes or leaves a state
    that is valid as it is, and running it again after the fault clears finishes the job."""
    tally = Tally()
    for n in range(1, max_calls):
        work = base / f"run-{n}"
        store_path = _fresh_copy(template, work)
        fs = FaultFS()
        fs.arm(n, err, persistent=persistent)
        error: BaseException | None = None
        try:
            await run(store_path, fs)
        except SessionStoreError as exc:
            error = exc
        finally:
            fs.disarm()
        where = f"{label} {errno.errorcode[err]} {'persistent' if persistent else 'once'} call {n}"
        tally.runs += 1
        tally.injected += len(fs.injected)
        tally.points.update(name for _, name, _ in fs.injected)
        if fs.injected:
            where += f" ({fs.injected[0][1]} {fs.injected[0][2] or ''})"
        if error is not None:
            tally.errors += 1
            assert fs.triggered, f"{where}: {error!r} without an injected fault"
            _assert_names_store_file(error, work)
        mode, entries = await _stored(store_path)
        check(work, mode, entries, False)
        # The fault clears: running it again finishes the job and leaves nothing behind.
        await run(store_path, FileSystem())
        mode, entries = await _stored(store_path)
        check(work, mode, entries, True)
        left = tmp_files(work)
        assert not left, f"{where}: tmp files left after recovery: {left}"
        await _assert_trash_swept(work)
        shutil.rmtree(work)
        if not fs.triggered:
            return tally
    raise AssertionError(f"{label} still reached call {max_calls}")


async def _assert_trash_swept(work: Path) -> None:
    """Deleted folders left in the trash (their removal failed) go with the next open's sweep."""
    trash = work / "sessions.d" / ".trash"
    if not trash.is_dir():
        return
    left = len(list(trash.iterdir()))
    if left:
        # Trash is an orphan once older than tmp_max_age (0 here: at once).
        async with open_plain(work / "sessions.json", tmp_max_age=0) as store:
            await wait_swept(store, left)
        assert not list(trash.iterdir())


def _check_migrated(work: Path, mode: str, entries: dict[str, Any], finished: bool) -> None:
    """Either the legacy file or a complete directory store, holding every entry unchanged."""
    assert entries == OLD, f"{mode} store reads {sorted(entries)}"
    assert not (work / ".sessions.d.staging").exists() or not finished
    if finished:
        assert mode == "directory"
        assert not (work / "sessions.json").exists()
        assert list(work.glob("sessions.json.pre-directory-migration.*"))


def _check_pruned(work: Path, mode: str, entries: dict[str, Any], finished: bool) -> None:
    """Fresh entries untouched; each stale one there (unchanged) or gone; all gone when done."""
    fresh = {key: {**value, "updatedAt": FRESH_AT} for key, value in OLD.items()}
    assert {k: v for k, v in entries.items() if k in fresh} == fresh
    for key, value in entries.items():
        if key not in fresh:
            assert not finished and STALE.get(key) == value, f"{key!r} reads {value!r}"


@pytest.mark.parametrize(("err_name", "persistent"), _fault_params())
async def test_fault_loop_migrate(tmp_path: Path, err_name: str, persistent: bool) -> None:
    """Every call of migrate() fails in turn: one store stays authoritative, a rerun finishes."""

    async def run(store_path: Path, fs: FaultFS) -> object:
        return await aiosessions.migrate(store_path, filesystem=fs, lock_timeout=2)

    template = await _legacy_template(tmp_path)
    tally = await _maintenance_loop(
        tmp_path, template, run, _check_migrated, ERRNOS[err_name], persistent, "migrate"
    )
    _record_tally("migrate", "json", err_name, persistent, tally)


def _check_upgraded(work: Path, mode: str, entries: dict[str, Any], finished: bool) -> None:
    """Every entry reads back; once the upgrade has run on a healthy disk, it is version 2,
    with nothing of the old store or the staging folder left."""
    assert entries == OLD, f"{mode} store reads {sorted(entries)}"
    if finished:
        assert mode == "directory" and not (work / ".sessions.d.staging").exists()
        assert json.loads((work / "sessions.d" / "FORMAT").read_bytes())["version"] == 3
        assert any((work / "sessions.d").rglob("blob-*.json"))


def _upgrade_state(work: Path, where: str) -> None:
    """Right after a failed upgrade, before anything opens the store: the old store whole (version
    1), or the new one (version 2), or the sealed new one in staging between the two renames."""
    store, staging = work / "sessions.d", work / ".sessions.d.staging"
    if store.exists():
        version = json.loads((store / "FORMAT").read_bytes())["version"]
        assert disk_state(work / "sessions.json", "directory") == OLD, f"{where}: version {version}"
    else:
        assert json.loads((staging / "FORMAT").read_bytes())["version"] == 3, where
        assert disk_state(work / ".sessions.d.staging" / "sessions.json", "directory") == {}, where
        staging.rename(work / "copy.d")  # read it as a store folder of its own
        try:
            assert disk_state(work / "copy.json", "directory") == OLD, where
        finally:
            (work / "copy.d").rename(staging)


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~350 calls, each run copying the store and opening it three times
@pytest.mark.parametrize(("err_name", "persistent"), _fault_params())
async def test_fault_loop_upgrade(tmp_path: Path, err_name: str, persistent: bool) -> None:
    """Every call of moving a version-1 store forward (at open) fails in turn: the old store stays
    whole, or the new one is complete; the next open finishes the job."""

    async def run(store_path: Path, fs: FaultFS) -> object:
        try:
            async with open_plain(store_path, filesystem=fs, lock_timeout=2):
                return None
        finally:
            if isinstance(fs, FaultFS) and fs.triggered:
                _upgrade_state(store_path.parent, f"upgrade call {fs.injected[0] if fs.injected else '?'}")

    template = tmp_path / "template"
    template.mkdir()
    build_v1_store(template / "sessions.json", OLD)
    tally = await _maintenance_loop(
        tmp_path, template, run, _check_upgraded, ERRNOS[err_name], persistent, "upgrade", 1_000
    )
    _record_tally("upgrade", "directory", err_name, persistent, tally)


@pytest.mark.parametrize(("err_name", "persistent"), _fault_params())
async def test_fault_loop_prune(tmp_path: Path, mode: str, err_name: str, persistent: bool) -> None:
    """Every call of prune() fails in turn: stale entries go or stay whole, a rerun finishes."""

    async def run(store_path: Path, fs: FaultFS) -> object:
        return await aiosessions.prune(
            store_path, older_than=3600, now=FRESH_AT / 1000, lock_timeout=2, filesystem=fs
        )

    template = await _prune_template(tmp_path, mode)
    tally = await _maintenance_loop(
        tmp_path, template, run, _check_pruned, ERRNOS[err_name], persistent, f"prune {mode}"
    )
    _record_tally("prune", mode, err_name, persistent, tally)


def _record_tally(op: str, mode: str, err_name: str, persistent: bool, tally: Tally) -> None:
    assert tally.injected > 0
    record(
        "fault_loop",
        mode=mode,
        op=op,
        errno=err_name,
        persistent=persistent,
        fault_points=tally.runs - 1,
        injected=tally.injected,
        errors=tally.errors,
        primitives=sorted(tally.points),
    )


@pytest.mark.parametrize(("op_name", "err_name", "persistent"), CASES)
async def test_fault_loop(tmp_path: Path, mode: str, op_name: str, err_name: str, persistent: bool) -> None:
    """Every system call of the operation fails in turn; nothing is lost or torn."""
    tally = await fault_loop(tmp_path, mode, OPS[op_name], ERRNOS[err_name], persistent)
    _record_tally(op_name, mode, err_name, persistent, tally)


#: The batch covers a set, an update, a delete, a shortened name and a new folder at once.
BARRIER_CASES = _fault_params("syncfs", ops=["set", "create", "flush-batch"])


@pytest.mark.parametrize(
    ("op_name", "err_name", "persistent"), _fault_params("journal", ops=["set", "create", "flush-batch"])
)
async def test_fault_loop_journal(
    tmp_path: Path, op_name: str, err_name: str, persistent: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same loop with every durable batch made durable by the batch journal (staged tmp
    files, one record appended and fsynced, renames): a failed append loses and tears nothing."""
    monkeypatch.setattr(_directory, "JOURNAL_MODE", "on")
    tally = await fault_loop(tmp_path, "directory", OPS[op_name], ERRNOS[err_name], persistent)
    assert "fsync" in tally.points, "the journal was never fsynced"
    _record_tally(f"{op_name} (journal)", "directory", err_name, persistent, tally)


@pytest.mark.parametrize(
    ("op_name", "err_name", "persistent"), _fault_params("per-file", ops=["set", "create", "flush-batch"])
)
async def test_fault_loop_fsync_per_file(
    tmp_path: Path, op_name: str, err_name: str, persistent: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same loop with every durable batch fsynced file by file (filesystems where neither
    the journal nor the barrier is taken)."""
    monkeypatch.setattr(_directory, "JOURNAL_MODE", "off")
    monkeypatch.setattr(_directory, "BARRIER", "fsync")
    tally = await fault_loop(tmp_path, "directory", OPS[op_name], ERRNOS[err_name], persistent)
    assert "fsync" in tally.points
    _record_tally(f"{op_name} (fsync per file)", "directory", err_name, persistent, tally)


@pytest.mark.parametrize(("op_name", "err_name", "persistent"), BARRIER_CASES)
async def test_fault_loop_syncfs_barrier(
    tmp_path: Path, op_name: str, err_name: str, persistent: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same loop with every durable batch made durable by the syncfs barrier (staged tmp
    files, syncfs, renames, syncfs): a failed barrier loses and tears nothing either."""
    monkeypatch.setattr(_directory, "BARRIER", "syncfs")
    monkeypatch.setattr(_directory, "JOURNAL_MODE", "off")
    tally = await fault_loop(tmp_path, "directory", OPS[op_name], ERRNOS[err_name], persistent)
    assert "syncfs" in tally.points, "the barrier was never reached"
    _record_tally(f"{op_name} (syncfs barrier)", "directory", err_name, persistent, tally)
