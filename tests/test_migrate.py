"""migrate() and export_json(): data survives, refusals change nothing, crashes leave one store.

Crash safety is shown three ways: a failure injected (through a FileSystem
subclass) at each named step; a failure at every Nth filesystem call in turn,
once and persisting (SQLite's I/O-error loop); and a kill -9 of a child process
frozen at a random filesystem call. After each, the store must open with every
original entry, and running migrate() again must finish the job.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

import aiosessions
from aiosessions import (
    CorruptSessionError,
    FileSystem,
    LockTimeoutError,
    MigrationError,
    StoreIOError,
    export_json,
    migrate,
    open_store,
)
from aiosessions._keys import encode_key, is_shortened
from aiosessions._layout import FORMAT_FILE, encode_format

pytestmark = pytest.mark.asyncio

HERE = Path(__file__).resolve().parent
LONG_KEY = "agent:main:" + "x" * 300
SYSCALLS = FileSystem.SYSCALLS


class FaultyFileSystem(FileSystem):
    """Counts every system call; fails the chosen one (or every one from it on).

    ``fail_at`` picks the call by number; ``when(name, args)`` picks the first
    call it accepts. ``fake_fsync`` counts fsyncs without doing them (fast loops;
    the call sequence is the same).
    """

    def __init__(
        self,
        fail_at: int | None = None,
        *,
        persistent: bool = False,
        when: Callable[[str, tuple[Any, ...]], bool] | None = None,
        fake_fsync: bool = False,
    ) -> None:
        self.fail_at = fail_at
        self.persistent = persistent
        self.when = when
        self.fake_fsync = fake_fsync
        self.calls = 0
        self.failed: list[str] = []
        self._lock = threading.Lock()

    def tick(self, name: str, args: tuple[Any, ...]) -> bool:
        with self._lock:
            self.calls += 1
            n = self.calls
            if self.when is not None:
                hit = (self.when(name, args) and not self.failed) or (self.persistent and bool(self.failed))
            else:
                hit = self.fail_at is not None and (
                    n == self.fail_at or (self.persistent and n > self.fail_at)
                )
            if hit:
                self.failed.append(f"{name}#{n}")
            return hit


def _make(name: str) -> Any:
    real = getattr(FileSystem, name)

    def method(self: FaultyFileSystem, *args: Any, **kwargs: Any) -> Any:
        fail = self.tick(name, args)
        if fail:
            if name == "close":
                real(self, *args, **kwargs)  # close(2) releases the descriptor even when it fails
            raise OSError(errno.EIO, f"injected failure of {name}")
        if name == "fsync" and self.fake_fsync:
            return None
        return real(self, *args, **kwargs)

    return method


for _name in SYSCALLS:
    setattr(FaultyFileSystem, _name, _make(_name))


# -- helpers ----------------------------------------------------------------------------------


def small_store(openclaw: dict[str, Any], count: int = 6) -> dict[str, Any]:
    """A few real-shaped entries, one key long enough to be shortened, odd values."""
    data = dict(list(openclaw.items())[:count])
    data[LONG_KEY] = {"sessionId": "long", "updatedAt": 5}
    data["agent:main:odd"] = {"updatedAt": "1700000000000", "n": [1, 2.5, None], "deep": {"a": {"b": []}}}
    return data


def write_legacy(path: Path, data: dict[str, Any]) -> bytes:
    raw = json.dumps(data, indent=2, ensure_ascii=False).encode("utf-8")
    path.write_bytes(raw)
    return raw


async def read_store(path: Path) -> tuple[str, dict[str, Any]]:
    async with open_store(path, entry_type=dict, flush_interval=3600, fsync=False) as store:
        return store.mode, {key: entry async for key, entry in store.items()}


async def assert_intact(path: Path, original: dict[str, Any]) -> str:
    """The store at ``path`` opens and holds exactly ``original``; return its mode."""
    directory = path.with_name(path.stem + ".d")
    if (directory / FORMAT_FILE).exists():
        assert (directory / FORMAT_FILE).read_bytes() == encode_format()
    elif directory.exists():
        # Never a partial store: without its marker the folder holds no session.
        assert not [p for p in directory.iterdir() if not p.name.startswith(".")]
    mode, entries = await read_store(path)
    assert entries == original
    return mode


async def assert_finished(path: Path, original: dict[str, Any], legacy_bytes: bytes) -> None:
    """A completed migration: directory store with everything, one backup, no leftovers."""
    assert await assert_intact(path, original) == "directory"
    assert not path.exists()
    backups = list(path.parent.glob("sessions.json.pre-directory-migration.*"))
    assert len(backups) == 1 and backups[0].read_bytes() == legacy_bytes
    assert not (path.parent / ".sessions.d.staging").exists()
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == [".sessions.lock"]


def listing(folder: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


# -- data survives ------------------------------------------------------------------------------


async def test_fixture_round_trip_is_json_equal(tmp_path: Path, openclaw_sessions_path: Path) -> None:
    path = tmp_path / "sessions.json"
    legacy = openclaw_sessions_path.read_bytes()
    path.write_bytes(legacy)
    original = json.loads(legacy)
    seen: list[tuple[int, int]] = []

    report = await migrate(path, progress=lambda done, total: seen.append((done, total)))

    assert report.entries == len(original) and report.bytes == len(legacy)
    assert report.problems == {} and report.skipped == 0 and not report.already_migrated
    assert report.backup is not None and Path(report.backup).read_bytes() == legacy
    assert seen[0] == (0, len(original)) and seen[-1] == (len(original), len(original))
    await assert_finished(path, original, legacy)
    for key, entry in original.items():
        meta = path.with_name("sessions.d") / encode_key(key) / "meta.json"
        assert json.loads(meta.read_bytes()) == entry
        assert meta.stat().st_mode & 0o777 == 0o600
        assert b"\n" not in meta.read_bytes()  # compact, like the store's own writes

    exported = tmp_path / "exported.json"
    assert await export_json(path, exported) == len(original)
    assert json.loads(exported.read_bytes()) == original
    assert exported.read_bytes().startswith(b'{\n  "')  # indented by 2, as OpenClaw writes it

    # And the export migrates into the same store again.
    again = tmp_path / "again" / "sessions.json"
    again.parent.mkdir()
    again.write_bytes(exported.read_bytes())
    await migrate(again, fsync=False)
    assert (await read_store(again))[1] == original


async def test_update_then_export_shows_exactly_that_change(
    tmp_path: Path, openclaw_sessions: dict[str, Any]
) -> None:
    path = tmp_path / "sessions.json"
    write_legacy(path, openclaw_sessions)
    await migrate(path, fsync=False)
    key = sorted(openclaw_sessions)[7]

    async with open_store(path, flush_interval=3600, fsync=False) as store:

        def bump(entry: aiosessions.SessionEntry | None) -> aiosessions.SessionEntry:
            assert entry is not None and isinstance(entry.updated_at, int)
            return msgspec.structs.replace(entry, updated_at=entry.updated_at + 1, label="changed")

        await store.update(key, bump)

    exported = tmp_path / "out.json"
    await export_json(path, exported)
    after = json.loads(exported.read_bytes())
    expected = json.loads(json.dumps(openclaw_sessions))
    expected[key] = {**expected[key], "updatedAt": expected[key]["updatedAt"] + 1, "label": "changed"}
    assert after == expected


async def test_odd_values_and_tokens_are_kept_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    legacy = (
        b'{\n  "a:b:c": {"updatedAt": "1700000000000", "x": 1.50,\n'
        b'   "big": 123456789012345678901234567890,\n'
        b'   "s": "\\ud83d\\ude00 caf\\u00e9 \\/ \xc3\xa9",\n'
        b'   "n": null, "f": false, "z": 0, "e": [], "o": {}},\n'
        b'  "a--b:c": {},\n  "A:b:c": {"pinnedAt": null}\n}\n'
    )
    path.write_bytes(legacy)
    await migrate(path, fsync=False)
    meta = path.with_name("sessions.d") / encode_key("a:b:c") / "meta.json"
    # Every token as it was (1.50, the big integer, the escapes), only the whitespace is gone.
    assert meta.read_bytes() == msgspec.json.format(
        msgspec.json.decode(legacy, type=dict[str, msgspec.Raw])["a:b:c"], indent=-1
    )
    assert b"1.50" in meta.read_bytes() and b"123456789012345678901234567890" in meta.read_bytes()
    _, entries = await read_store(path)
    assert entries == json.loads(legacy)
    async with open_store(path) as store:
        assert await store.updated_at("a:b:c") is None  # a string: kept, but not a recency
        entry = await store.get("a:b:c")
        assert entry is not None and entry.extra["updatedAt"] == "1700000000000"


async def test_hostile_keys_each_get_their_own_folder(tmp_path: Path, hostile_keys: list[str]) -> None:
    valid = [key for key in hostile_keys if "\x00" not in key]
    invalid = [key for key in hostile_keys if "\x00" in key]
    assert invalid, "the fixture is expected to hold a key with NUL"
    data = {key: {"sessionId": f"s{i}", "updatedAt": i} for i, key in enumerate(hostile_keys)}
    path = tmp_path / "sessions.json"
    write_legacy(path, data)
    before = listing(tmp_path)

    with pytest.raises(MigrationError) as refused:
        await migrate(path, fsync=False)
    assert set(refused.value.problems) == set(invalid)
    assert "NUL" in refused.value.problems[invalid[0]]
    after = listing(tmp_path)
    assert after.pop(".sessions.lock") == b""  # the legacy writers' lock file; nothing else changed
    assert after == before

    report = await migrate(path, skip_invalid=True, fsync=False)
    assert report.skipped == len(invalid) and set(report.problems) == set(invalid)
    assert report.entries == len(valid)
    _, entries = await read_store(path)
    assert entries == {key: data[key] for key in valid}
    assert json.loads(Path(report.backup or "").read_bytes()) == data  # the skipped stay in the backup
    record = json.loads((path.with_name("sessions.d") / ".migration.json").read_bytes())
    assert set(record["skipped"]) == set(invalid)
    # The long key's folder name was shortened; its key file holds the exact key.
    long_keys = [key for key in valid if is_shortened(encode_key(key))]
    assert long_keys
    for key in long_keys:
        folder = path.with_name("sessions.d") / encode_key(key)
        assert (folder / "key").read_bytes() == key.encode("utf-8")
    names = {p.name for p in path.with_name("sessions.d").iterdir()}
    assert all("/" not in name and name not in (".", "..") for name in names)


async def test_entries_that_are_not_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    legacy = write_legacy(path, {"ok": {}, "n": 1, "l": [1], "s": "x", "z": None, "t": True})
    with pytest.raises(MigrationError, match="5 entries") as refused:
        await migrate(path)
    assert refused.value.problems == {
        "n": "the entry is a number, not a JSON object",
        "l": "the entry is an array, not a JSON object",
        "s": "the entry is a string, not a JSON object",
        "z": "the entry is null, not a JSON object",
        "t": "the entry is a boolean, not a JSON object",
    }
    assert path.read_bytes() == legacy and not path.with_name("sessions.d").exists()
    dry = await migrate(path, dry_run=True)
    assert dry.dry_run and dry.entries == 1 and len(dry.problems) == 5


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"", "empty"), (b"  \n", "empty"), (b'{"a": {"b": 1}', "not a JSON object"), (b"[1, 2]", "not a JSON")],
)
async def test_corrupt_or_empty_legacy_file_changes_nothing(
    tmp_path: Path, content: bytes, match: str
) -> None:
    path = tmp_path / "sessions.json"
    path.write_bytes(content)
    with pytest.raises(CorruptSessionError, match=match) as caught:
        await migrate(path)
    assert caught.value.path == str(path)
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == [".sessions.lock", "sessions.json"]


async def test_no_store_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="no session store"):
        await migrate(tmp_path / "sessions.json")
    with pytest.raises(MigrationError, match="does not exist"):
        await migrate(tmp_path / "missing" / "sessions.json")
    (tmp_path / "sessions.d").mkdir()
    (tmp_path / "sessions.d" / "something").write_text("x")
    with pytest.raises(MigrationError, match="no FORMAT marker"):
        await migrate(tmp_path / "sessions.json")


async def test_dry_run_writes_nothing(tmp_path: Path, openclaw_sessions: dict[str, Any]) -> None:
    path = tmp_path / "sessions.json"
    write_legacy(path, openclaw_sessions)
    before = listing(tmp_path)
    report = await migrate(path, dry_run=True)
    assert report.dry_run and report.entries == len(openclaw_sessions) and report.backup is None
    assert listing(tmp_path) == before


# -- idempotence and leftovers ------------------------------------------------------------------


async def test_migrate_twice_reports_already_migrated(
    tmp_path: Path, openclaw_sessions: dict[str, Any]
) -> None:
    path = tmp_path / "sessions.json"
    legacy = write_legacy(path, openclaw_sessions)
    await migrate(path, fsync=False)
    report = await migrate(path, fsync=False)
    assert report.already_migrated and report.entries == 0 and report.backup is None
    assert not report.warnings
    await assert_finished(path, openclaw_sessions, legacy)


async def test_complete_store_beside_legacy_file_only_backs_it_up(
    tmp_path: Path, openclaw_sessions: dict[str, Any]
) -> None:
    path = tmp_path / "sessions.json"
    legacy = write_legacy(path, openclaw_sessions)
    # Crash between the switch and the backup: fail the rename of sessions.json.
    fs = FaultyFileSystem(when=lambda name, args: name == "rename" and args[0] == "sessions.json")
    with pytest.raises(StoreIOError, match="complete and authoritative"):
        await migrate(path, filesystem=fs, fsync=False)
    assert path.exists() and await assert_intact(path, openclaw_sessions) == "directory"

    report = await migrate(path, fsync=False)
    assert report.already_migrated and report.backup is not None and not report.warnings
    await assert_finished(path, openclaw_sessions, legacy)


async def test_legacy_file_changed_after_the_switch_is_kept_with_a_warning(
    tmp_path: Path, openclaw_sessions: dict[str, Any]
) -> None:
    path = tmp_path / "sessions.json"
    write_legacy(path, openclaw_sessions)
    fs = FaultyFileSystem(when=lambda name, args: name == "rename" and args[0] == "sessions.json")
    with pytest.raises(StoreIOError):
        await migrate(path, filesystem=fs, fsync=False)
    changed = write_legacy(path, {**openclaw_sessions, "late:write": {"updatedAt": 1}})

    report = await migrate(path, fsync=False)
    assert report.already_migrated and len(report.warnings) == 1 and "changed" in report.warnings[0]
    assert Path(report.backup or "").read_bytes() == changed  # moved aside, not lost
    assert (await read_store(path))[1] == openclaw_sessions


async def test_stale_staging_and_empty_unmarked_folder_are_cleared(
    tmp_path: Path, openclaw_sessions: dict[str, Any]
) -> None:
    path = tmp_path / "sessions.json"
    legacy = write_legacy(path, openclaw_sessions)
    staging = tmp_path / ".sessions.d.staging"
    (staging / "junk").mkdir(parents=True)
    (staging / "FORMAT").write_bytes(encode_format())  # even a sealed one is not the store
    (tmp_path / "sessions.d" / ".locks").mkdir(parents=True)  # a creation that died before its marker
    assert await assert_intact(path, openclaw_sessions) == "json"
    await migrate(path, fsync=False)
    await assert_finished(path, openclaw_sessions, legacy)


async def test_a_non_empty_unmarked_folder_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    legacy = write_legacy(path, {"a": {}})
    (tmp_path / "sessions.d").mkdir()
    (tmp_path / "sessions.d" / "precious").write_text("mine")
    with pytest.raises(MigrationError, match="not empty"):
        await migrate(path)
    assert (tmp_path / "sessions.d" / "precious").read_text() == "mine"
    assert path.read_bytes() == legacy and not (tmp_path / ".sessions.d.staging").exists()


async def test_it_waits_for_the_store_lock(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    legacy = write_legacy(path, {"a": {}})
    fd = os.open(tmp_path / ".sessions.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(LockTimeoutError, match=r"\.sessions\.lock"):
            await migrate(path, lock_timeout=0.05)
    finally:
        os.close(fd)
    assert path.read_bytes() == legacy and not (tmp_path / "sessions.d").exists()
    await migrate(path, fsync=False)


async def test_an_open_legacy_writer_carries_on_in_the_directory_store(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    write_legacy(path, {"a": {"updatedAt": 1}})
    async with open_store(path, entry_type=dict, flush_interval=3600, fsync=False) as store:
        assert store.mode == "json"
        await store.update("a", lambda e: {"updatedAt": e["updatedAt"] + 1})
        await migrate(path, fsync=False)
        await store.set("b", {"updatedAt": 2})
        await store.flush()
        assert store.mode == "directory"
        assert not path.exists()
    assert not path.exists()
    assert (await read_store(path)) == ("directory", {"a": {"updatedAt": 2}, "b": {"updatedAt": 2}})


async def test_export_refuses_corrupt_entries_and_missing_stores(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    write_legacy(path, {"a": {}, "b": {}})
    await migrate(path, fsync=False)
    (tmp_path / "sessions.d" / "b" / "meta.json").write_bytes(b"[not an object")
    with pytest.raises(CorruptSessionError, match="fsck") as caught:
        await export_json(path, tmp_path / "out.json")
    assert caught.value.key == "b"
    assert not (tmp_path / "out.json").exists()
    with pytest.raises(aiosessions.StoreFormatError, match="no session store"):
        await export_json(tmp_path / "other.json", tmp_path / "out.json")
    with pytest.raises(ValueError, match="inside"):
        await export_json(path, tmp_path / "sessions.d" / "x.json")


# -- crash safety -------------------------------------------------------------------------------


Predicate = Callable[[str, tuple[Any, ...]], bool]


def _is_staging_rename(name: str, args: tuple[Any, ...]) -> bool:
    return name == "rename" and args[0] == ".sessions.d.staging"


def _session_mkdir(name: str, args: tuple[Any, ...]) -> bool:
    return name == "mkdir" and isinstance(args[0], str) and not args[0].startswith(".")


def _nth(predicate: Predicate, n: int) -> Predicate:
    """A fresh predicate accepting only the ``n``-th call that ``predicate`` accepts."""
    seen = 0

    def check(name: str, args: tuple[Any, ...]) -> bool:
        nonlocal seen
        if predicate(name, args):
            seen += 1
            return seen == n
        return False

    return check


def _after(first: Predicate, then: Predicate) -> Predicate:
    """A fresh predicate accepting the first call ``then`` accepts once ``first`` has been seen."""
    began = False

    def check(name: str, args: tuple[Any, ...]) -> bool:
        nonlocal began
        if began:
            return then(name, args)
        began = first(name, args)
        return False

    return check


STEPS: dict[str, Callable[[], Predicate]] = {
    "after 3 entries": lambda: _nth(_session_mkdir, 4),
    "syncing an entry": lambda: _nth(lambda name, args: name == "fsync", 5),
    "before the marker": lambda: lambda name, args: name == "open" and str(args[0]).startswith(".FORMAT."),
    "before the rename": lambda: _is_staging_rename,
    "syncing the switch": lambda: _after(_is_staging_rename, lambda name, args: name == "fsync"),
    "before the backup": lambda: lambda name, args: name == "rename" and args[0] == "sessions.json",
}


@pytest.mark.parametrize("step", list(STEPS))
async def test_failure_at_each_step_leaves_one_store(
    tmp_path: Path, openclaw_sessions: dict[str, Any], step: str
) -> None:
    data = small_store(openclaw_sessions, count=12)
    path = tmp_path / "sessions.json"
    legacy = write_legacy(path, data)
    fs = FaultyFileSystem(when=STEPS[step](), fake_fsync=True)

    with pytest.raises(StoreIOError, match="run migrate again"):
        await migrate(path, filesystem=fs)
    assert fs.failed, "the fault was never injected"
    mode = await assert_intact(path, data)
    assert mode == ("directory" if step in ("syncing the switch", "before the backup") else "json")

    await migrate(path)
    await assert_finished(path, data, legacy)


@pytest.mark.parametrize("persistent", [False, True], ids=["once", "persisting"])
async def test_failure_at_every_nth_call(
    tmp_path: Path, openclaw_sessions: dict[str, Any], persistent: bool
) -> None:
    """SQLite's I/O-error loop: fail call N for N = 1, 2, ... until a run completes untouched."""
    data = small_store(openclaw_sessions, count=3)
    stride = 1 if not persistent else 2
    n = 1
    while True:
        folder = tmp_path / f"run{n}"
        folder.mkdir()
        path = folder / "sessions.json"
        legacy = write_legacy(path, data)
        fs = FaultyFileSystem(n, persistent=persistent, fake_fsync=True)
        try:
            await migrate(path, filesystem=fs)
        except StoreIOError:
            assert fs.failed
        if not fs.failed:
            break  # the run got through without reaching call N: every call has been failed once
        await assert_intact(path, data)
        await migrate(path, fsync=False)
        await assert_finished(path, data, legacy)
        n += stride
    assert n > 50  # the loop really went through the migration's calls


async def test_kill_minus_9_at_random_calls(tmp_path: Path, openclaw_sessions: dict[str, Any]) -> None:
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    data = small_store(openclaw_sessions, count=40)
    # How many calls a whole migration makes (a child that never freezes).
    probe = tmp_path / "probe" / "sessions.json"
    probe.parent.mkdir()
    write_legacy(probe, data)
    done = await anyio.to_thread.run_sync(_run_child, probe, 10**9)
    assert done.startswith("finished")
    total = int(done.split()[1])

    for point in sorted(rng.sample(range(1, total + 1), 3)):
        path = tmp_path / f"kill{point}" / "sessions.json"
        path.parent.mkdir()
        legacy = write_legacy(path, data)
        line = await anyio.to_thread.run_sync(_run_child, path, point)
        assert line.startswith("frozen"), line
        print(f"killed at call {point} of {total}: {line}")
        await assert_intact(path, data)
        await migrate(path, fsync=False)
        await assert_finished(path, data, legacy)


def _run_child(path: Path, freeze_at: int) -> str:
    """Start the child; kill -9 it as soon as it reports being frozen; return its report."""
    child = subprocess.Popen(
        [sys.executable, str(HERE / "_migrate_child.py"), str(path), str(freeze_at)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    try:
        line = child.stdout.readline().strip()
        if line.startswith("frozen"):
            os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=60)
        child.stdout.close()
    if line.startswith("frozen"):
        assert child.returncode == -signal.SIGKILL
    return line


# -- memory ---------------------------------------------------------------------------------------

MEMORY_CHILD = r"""
import sys
import anyio, aiosessions
sys.path.insert(0, sys.argv[2])
from measure_migration import peak_rss_kb
before = peak_rss_kb()
anyio.run(lambda: aiosessions.migrate(sys.argv[1], fsync=False))
print(before, peak_rss_kb())
"""


@pytest.mark.slow
async def test_peak_memory_is_a_small_multiple_of_the_file(tmp_path: Path) -> None:
    """A 20 MB store: the peak RSS grows by less than twice the file (which it must hold once)."""
    # Built in a child too: a child inherits its parent's peak RSS across fork+exec.
    built = await anyio.run_process(
        [sys.executable, str(HERE / "measure_migration.py"), "--mb", "20", "--build-in", str(tmp_path)]
    )
    size = json.loads(built.stdout)["size"]
    out = await anyio.run_process(
        [sys.executable, "-c", MEMORY_CHILD, str(tmp_path / "sessions.json"), str(HERE)]
    )
    before_kb, after_kb = map(int, out.stdout.split())
    growth = (after_kb - before_kb) * 1024
    print(f"file {size / 1e6:.1f} MB, peak RSS growth {growth / 1e6:.1f} MB = {growth / size:.2f}x")
    assert growth < 2 * size
