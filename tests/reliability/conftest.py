"""Shared machinery of the reliability suite.

* :class:`FaultFS` — a :class:`aiosessions.FileSystem` that counts every system call and
  fails the Nth one (once, or from then on) with a chosen errno: SQLite's I/O-error loop.
* :class:`PowerLossFS` — a :class:`aiosessions.FileSystem` that remembers what was fsynced
  (per file, its data at its last fsync; per directory, its entries at its last fsync) and can
  rebuild the disk as a power cut would leave it: LevelDB's ``fault_injection_test`` Env.
* :class:`Scale` and the ``scale`` fixture: each test that takes ``scale`` runs once short (CI)
  and once long (marked ``soak``, deselected unless ``-m soak``).
* Independent checkers that read the disk with ``json`` and ``os`` only, not with the library.
* :func:`record`: figures for docs/reliability.md, appended as JSON lines to the file named by
  ``AIOSESSIONS_RELIABILITY_LOG`` (and printed).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import stat as stat_module
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import aiosessions
from aiosessions import FileSystem
from aiosessions._keys import decode_name

#: The fixture files of the repository (tests/fixtures).
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
#: The hostile keys of tests/fixtures/hostile-keys.json.
FIXTURE_KEYS: list[str] = json.loads((FIXTURES / "hostile-keys.json").read_text("utf-8"))

# -- sizes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """How long a test runs: ``ci`` keeps the whole suite within a few minutes on 2 cores."""

    name: str
    #: SIGKILLs per crash configuration.
    kills: int
    #: Simulated power cuts per configuration.
    power_cuts: int
    #: Hypothesis examples for fuzzers and the state machine.
    examples: int
    #: Steps per state-machine example.
    steps: int
    #: Seconds of the multi-process race.
    race_seconds: float
    #: Processes in the race.
    race_processes: int
    #: Concurrent tasks (and keys) of the in-process stress test.
    tasks: int
    stress_keys: int

    @property
    def soak(self) -> bool:
        return self.name == "soak"


CI = Scale(
    "ci",
    kills=4,
    power_cuts=12,
    examples=25,
    steps=25,
    race_seconds=2.0,
    race_processes=3,
    tasks=10_000,
    stress_keys=1_000,
)
SOAK = Scale(
    "soak",
    kills=25,
    power_cuts=120,
    examples=200,
    steps=40,
    race_seconds=20.0,
    race_processes=4,
    tasks=50_000,
    stress_keys=5_000,
)


@pytest.fixture(
    params=[
        pytest.param(CI, id="ci"),
        pytest.param(SOAK, id="soak", marks=[pytest.mark.soak, pytest.mark.timeout(1800)]),
    ]
)
def scale(request: pytest.FixtureRequest) -> Scale:
    """The size of this run: ``ci`` (default) or ``soak`` (``python -m pytest -m soak``)."""
    value: Scale = request.param
    return value


def seed_for(request: pytest.FixtureRequest) -> int:
    """A seed for this test: ``AIOSESSIONS_SEED`` if set, else fresh; printed either way."""
    given = os.environ.get("AIOSESSIONS_SEED")
    seed = int(given) if given else random.SystemRandom().randrange(2**32)
    print(f"\n{request.node.nodeid}: seed {seed} (rerun with AIOSESSIONS_SEED={seed})")
    return seed


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    return seed_for(request)


def record(test: str, **figures: Any) -> None:
    """Print the figures of a run and append them to ``$AIOSESSIONS_RELIABILITY_LOG``."""
    line = json.dumps({"test": test, **figures}, sort_keys=True)
    print(line)
    target = os.environ.get("AIOSESSIONS_RELIABILITY_LOG")
    if target:
        with open(target, "a", encoding="utf-8") as log:
            log.write(line + "\n")


# -- fault injection ------------------------------------------------------------------------

#: Every system call of FileSystem; each counts as one fault point.
PRIMITIVES = FileSystem.SYSCALLS


class FaultFS(FileSystem):
    """Counts every system call while armed and fails the Nth with ``err``.

    ``persistent=False`` fails only call N (a transient fault); ``persistent=True`` fails
    every call from N on until :meth:`disarm` (a disk that stays full or broken). Errors look
    like the kernel's: calls on a path carry the path as ``filename``, calls on a descriptor
    carry none. A failed ``close`` still closes the descriptor, as Linux does.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self.armed = False
        self.calls = 0
        self.fail_at: int | None = None
        self.err = errno.EIO
        self.persistent = False
        #: (call number, primitive, path or None) of every injected failure.
        self.injected: list[tuple[int, str, str | None]] = []
        #: The primitives called while armed, in order.
        self.trace: list[str] = []

    def arm(self, fail_at: int | None, err: int = errno.EIO, *, persistent: bool = False) -> None:
        with self._mutex:
            self.armed, self.calls, self.fail_at = True, 0, fail_at
            self.err, self.persistent = err, persistent
            self.injected, self.trace = [], []

    def disarm(self) -> None:
        with self._mutex:
            self.armed = False

    @property
    def triggered(self) -> bool:
        return bool(self.injected)

    def _point(self, name: str, path: str | None) -> None:
        with self._mutex:
            if not self.armed:
                return
            self.calls += 1
            self.trace.append(name)
            n, at = self.calls, self.fail_at
            fail = at is not None and (n == at or (self.persistent and n > at))
            if fail:
                self.injected.append((n, name, path))
        if fail:
            # flock(2) cannot return ENOSPC/EIO/EACCES; ENOLCK is its resource error.
            err = errno.ENOLCK if name == "flock" else self.err
            text = f"{os.strerror(err)} (injected at call {n}, {name})"
            if path is None:
                raise OSError(err, text)
            raise OSError(err, text, path)

    def open(self, path: str, flags: int, mode: int = 0o600, *, dir_fd: int | None = None) -> int:
        self._point("open", path)
        return super().open(path, flags, mode, dir_fd=dir_fd)

    def close(self, fd: int) -> None:
        try:
            self._point("close", None)
        except OSError:
            super().close(fd)
            raise
        super().close(fd)

    def read(self, fd: int, size: int) -> bytes:
        self._point("read", None)
        return super().read(fd, size)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self._point("write", None)
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self._point("fsync", None)
        super().fsync(fd)

    def truncate(self, fd: int, length: int) -> None:
        self._point("truncate", None)
        super().truncate(fd, length)

    def fstat(self, fd: int) -> os.stat_result:
        self._point("fstat", None)
        return super().fstat(fd)

    def stat(self, path: str, *, dir_fd: int | None = None) -> os.stat_result:
        self._point("stat", path)
        return super().stat(path, dir_fd=dir_fd)

    def rename(
        self, src: str, dst: str, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None
    ) -> None:
        self._point("rename", src)
        super().rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    def mkdir(self, path: str, *, dir_fd: int | None = None) -> None:
        self._point("mkdir", path)
        super().mkdir(path, dir_fd=dir_fd)

    def rmdir(self, path: str, *, dir_fd: int | None = None) -> None:
        self._point("rmdir", path)
        super().rmdir(path, dir_fd=dir_fd)

    def unlink(self, path: str, *, dir_fd: int | None = None) -> None:
        self._point("unlink", path)
        super().unlink(path, dir_fd=dir_fd)

    def scandir(self, fd: int) -> AbstractContextManager[Iterator[os.DirEntry[str]]]:
        self._point("scandir", None)
        return super().scandir(fd)

    def listdir(self, fd: int) -> list[str]:
        self._point("listdir", None)
        return super().listdir(fd)

    def flock(self, fd: int, operation: int) -> None:
        self._point("flock", None)
        super().flock(fd, operation)

    def syncfs(self, fd: int) -> None:
        self._point("syncfs", None)
        super().syncfs(fd)


# -- simulated power loss ---------------------------------------------------------------------

#: One directory entry as a power cut may leave it: (kind, incarnation, permission bits).
DirEntry = tuple[str, int, int]


class PowerLossFS(FileSystem):
    """Remembers what was made durable, and rebuilds the disk as a power cut would leave it.

    The model is POSIX's, as LevelDB's fault-injection Env and ALICE use it: a file's data is
    durable as of its last ``fsync``; a directory's entries (names, and the files or folders
    they point to) are durable as of the last ``fsync`` of that directory; anything else may be
    lost. So an unsynced rename is undone, a file created and renamed but not synced comes back
    empty if its name was synced, and an entry created in a folder never synced vanishes.

    Inode numbers are reused by the kernel, so files are tracked by *incarnation*: a new number
    each time a file or folder is created through this object.

    ``crash_at=N`` kills the machine just before call N (counted from :meth:`arm`): that call
    and every later one fail with EIO, as on a dead disk, so the store stops touching the disk
    and can be abandoned. :meth:`power_cut` then rewrites ``root`` to its durable state.
    """

    def __init__(self, root: Path, *, real_fsync: bool = False) -> None:
        self.root = root
        self.real_fsync = real_fsync
        self._mutex = threading.Lock()
        self._next = 0
        self._incarnation: dict[int, int] = {}  # inode -> current incarnation
        self.synced_dirs: dict[int, dict[str, DirEntry]] = {}
        self.synced_data: dict[int, bytes] = {}
        self.dead = False
        self.calls = 0
        self.crash_at: int | None = None
        self.fsyncs = 0
        self._root_inc = self._new_incarnation(os.stat(root).st_ino)
        self._baseline_dirs: dict[int, dict[str, DirEntry]] = {}
        self._baseline_data: dict[int, bytes] = {}
        self._snapshot_tree(root, self._root_inc)

    # bookkeeping

    def _new_incarnation(self, inode: int) -> int:
        self._next += 1
        self._incarnation[inode] = self._next
        return self._next

    def _incarnation_of(self, inode: int) -> int:
        found = self._incarnation.get(inode)
        return found if found is not None else self._new_incarnation(inode)

    def _snapshot_tree(self, path: Path, inc: int) -> None:
        entries = self._list(str(path))
        self._baseline_dirs[inc] = entries
        for name, (kind, child, _) in entries.items():
            if kind == "dir":
                self._snapshot_tree(path / name, child)
            elif kind == "file":
                self._baseline_data[child] = (path / name).read_bytes()

    def _list(self, path: str | int) -> dict[str, DirEntry]:
        """The entries of a directory (by path or descriptor) with their incarnations."""
        own = os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=path) if isinstance(path, int) else None
        try:
            entries: dict[str, DirEntry] = {}
            with os.scandir(own if own is not None else path) as scan:
                for entry in scan:
                    st = entry.stat(follow_symlinks=False)
                    kind = (
                        "dir"
                        if stat_module.S_ISDIR(st.st_mode)
                        else "file"
                        if stat_module.S_ISREG(st.st_mode)
                        else "other"
                    )
                    inc = self._incarnation_of(st.st_ino)
                    entries[entry.name] = (kind, inc, stat_module.S_IMODE(st.st_mode))
            return entries
        finally:
            if own is not None:
                os.close(own)

    def arm(self, crash_at: int | None) -> None:
        with self._mutex:
            self.calls, self.crash_at = 0, crash_at

    def crash(self) -> None:
        """The power goes out now: every later call fails."""
        with self._mutex:
            self.dead = True

    def _point(self, name: str) -> None:
        with self._mutex:
            if not self.dead:
                self.calls += 1
                if self.crash_at is not None and self.calls >= self.crash_at:
                    self.dead = True
            if self.dead:
                raise OSError(errno.EIO, f"{os.strerror(errno.EIO)} (simulated power loss before {name})")

    # the system calls

    def open(self, path: str, flags: int, mode: int = 0o600, *, dir_fd: int | None = None) -> int:
        self._point("open")
        creating = bool(flags & os.O_CREAT)
        if creating and not flags & os.O_EXCL:
            try:
                os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
                creating = False
            except FileNotFoundError:
                pass
        fd = super().open(path, flags, mode, dir_fd=dir_fd)
        if creating:
            with self._mutex:
                self._new_incarnation(os.fstat(fd).st_ino)
        return fd

    def close(self, fd: int) -> None:
        super().close(fd)  # a dead machine still lets go of its descriptors

    def read(self, fd: int, size: int) -> bytes:
        self._point("read")
        return super().read(fd, size)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self._point("write")
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self._point("fsync")
        if self.real_fsync:
            super().fsync(fd)
        st = os.fstat(fd)
        with self._mutex:
            self.fsyncs += 1
            inc = self._incarnation_of(st.st_ino)
            if stat_module.S_ISDIR(st.st_mode):
                self.synced_dirs[inc] = self._list(fd)
            elif stat_module.S_ISREG(st.st_mode):
                reader = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
                try:
                    self.synced_data[inc] = os.pread(reader, st.st_size + 1, 0)
                finally:
                    os.close(reader)

    def truncate(self, fd: int, length: int) -> None:
        self._point("truncate")
        super().truncate(fd, length)

    def fstat(self, fd: int) -> os.stat_result:
        self._point("fstat")
        return super().fstat(fd)

    def stat(self, path: str, *, dir_fd: int | None = None) -> os.stat_result:
        self._point("stat")
        return super().stat(path, dir_fd=dir_fd)

    def rename(
        self, src: str, dst: str, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None
    ) -> None:
        self._point("rename")
        super().rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    def mkdir(self, path: str, *, dir_fd: int | None = None) -> None:
        self._point("mkdir")
        super().mkdir(path, dir_fd=dir_fd)
        with self._mutex:
            self._new_incarnation(os.stat(path, dir_fd=dir_fd, follow_symlinks=False).st_ino)

    def rmdir(self, path: str, *, dir_fd: int | None = None) -> None:
        self._point("rmdir")
        super().rmdir(path, dir_fd=dir_fd)

    def unlink(self, path: str, *, dir_fd: int | None = None) -> None:
        self._point("unlink")
        super().unlink(path, dir_fd=dir_fd)

    def scandir(self, fd: int) -> AbstractContextManager[Iterator[os.DirEntry[str]]]:
        self._point("scandir")
        return super().scandir(fd)

    def listdir(self, fd: int) -> list[str]:
        self._point("listdir")
        return super().listdir(fd)

    def flock(self, fd: int, operation: int) -> None:
        if operation & 8:  # LOCK_UN: a dead machine holds no locks
            super().flock(fd, operation)
            return
        self._point("flock")
        super().flock(fd, operation)

    def syncfs(self, fd: int) -> None:
        """Everything of the filesystem becomes durable: every folder's entries, every
        file's data, as they are now (the model's filesystem is the store's tree)."""
        self._point("syncfs")
        if self.real_fsync:
            super().syncfs(fd)
        with self._mutex:
            self.fsyncs += 1
            dirs: dict[int, dict[str, DirEntry]] = {}
            data: dict[int, bytes] = {}
            self._read_current(self.root, self._root_inc, dirs, data)
            self.synced_dirs.update(dirs)
            self.synced_data.update(data)

    # the power cut

    def power_cut(self, rng: random.Random | None = None) -> dict[str, int]:
        """Rewrite ``root`` to what a power cut leaves; return counts of what was dropped.

        With ``rng`` given, the kernel is also taken to have written back a random subset of
        directories on its own (with the data of the files they name, as ext4's
        ``data=ordered`` guarantees): a crash at a different moment of writeback.
        """
        with self._mutex:
            self.dead = True
            current_dirs: dict[int, dict[str, DirEntry]] = {}
            current_data: dict[int, bytes] = {}
            self._read_current(self.root, self._root_inc, current_dirs, current_data)
            durable_dirs = {**self._baseline_dirs, **self.synced_dirs}
            durable_data = {**self._baseline_data, **self.synced_data}
            if rng is not None:
                for inc, entries in current_dirs.items():
                    if rng.random() < 0.5:
                        durable_dirs[inc] = entries
                        for _, child, _ in entries.values():
                            if child in current_data:
                                durable_data[child] = current_data[child]
            before = sum(len(e) for e in current_dirs.values())
            tree = self._durable_tree(self._root_inc, durable_dirs, durable_data, set())
        self._clear(self.root)
        kept = self._materialise(self.root, tree)
        return {"entries_before": before, "entries_after": kept}

    def _read_current(
        self, path: Path, inc: int, dirs: dict[int, dict[str, DirEntry]], data: dict[int, bytes]
    ) -> None:
        entries = self._list(str(path))
        dirs[inc] = entries
        for name, (kind, child, _) in entries.items():
            if kind == "dir":
                self._read_current(path / name, child, dirs, data)
            elif kind == "file":
                data[child] = (path / name).read_bytes()

    def _durable_tree(
        self,
        inc: int,
        dirs: dict[int, dict[str, DirEntry]],
        data: dict[int, bytes],
        seen: set[int],
    ) -> dict[str, Any]:
        """``{name: bytes | (mode, subtree)}`` of the durable contents of directory ``inc``."""
        tree: dict[str, Any] = {}
        if inc in seen:  # a folder renamed into its own subtree cannot happen; be safe anyway
            return tree
        seen = seen | {inc}
        for name, (kind, child, mode) in dirs.get(inc, {}).items():
            if kind == "dir":
                tree[name] = (mode, self._durable_tree(child, dirs, data, seen))
            elif kind == "file":
                # A name that is durable for a file whose data never was: it comes back empty.
                tree[name] = (mode, data.get(child, b""))
        return tree

    @staticmethod
    def _clear(path: Path) -> None:
        with os.scandir(path) as scan:
            entries = list(scan)
        for entry in entries:
            target = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                PowerLossFS._clear(target)
                target.rmdir()
            else:
                target.unlink()

    @staticmethod
    def _materialise(path: Path, tree: dict[str, Any]) -> int:
        count = 0
        for name, (mode, content) in tree.items():
            target = path / name
            count += 1
            if isinstance(content, dict):
                target.mkdir(mode=0o700)
                count += PowerLossFS._materialise(target, content)
                os.chmod(target, mode)
            else:
                target.write_bytes(content)
                os.chmod(target, mode)
        return count


# -- independent checkers ---------------------------------------------------------------------


def tmp_files(root: Path) -> list[Path]:
    """Every in-flight tmp file (``.<name>.<pid>-<rand>.tmp``) anywhere under ``root``."""
    found = []
    for folder, dirs, files in os.walk(root):
        for name in files + dirs:
            if name.startswith(".") and name.endswith(".tmp"):
                found.append(Path(folder) / name)
    return found


def large(tag: str, size: int = 9_000) -> dict[str, Any]:
    """A member large enough to be stored apart (format version 2: 8 KiB or more, in an
    entry of 16 KiB or more), naming ``tag`` so it can never pass for another's."""
    return {"tag": tag, "text": "s" * size}


def _reassemble(folder: Path, value: Any) -> Any:
    """A split entry put back together with ``json``, ``hashlib`` and ``os`` only: each blob
    the ``$parts`` member names must be there and hold the bytes its digest says."""
    if not isinstance(value, dict) or "$parts" not in value:
        return value
    parts = value.pop("$parts")
    members = list(value.items())
    for name, position, digest in sorted(parts, key=lambda part: part[1]):
        blob = folder / f"blob-{digest}.json"
        assert blob.exists(), f"{blob} is missing: {folder / 'meta.json'} names it"
        data = blob.read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, f"{blob} does not hold its digest's bytes"
        members.insert(position, (name, json.loads(data)))
    return dict(members)


def disk_state(store_path: Path, mode: str) -> dict[str, Any]:
    """Every stored entry, read with ``json`` and ``os`` only (not through aiosessions);
    a directory store's split entries are put back together from their blobs.

    :raises AssertionError: a file that does not parse, a blob that is missing or wrong, or a
        folder whose key cannot be told.
    """
    if mode == "json":
        if not store_path.exists():
            return {}
        text = store_path.read_bytes()
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise AssertionError(f"{store_path} does not parse: {exc}: {text[:200]!r}") from None
        assert isinstance(data, dict), f"{store_path} is not an object"
        return data
    directory = store_path.with_name(store_path.stem + ".d")
    state: dict[str, Any] = {}
    if not directory.exists():
        return state
    with os.scandir(directory) as scan:
        entries = list(scan)
    for entry in entries:
        if entry.name.startswith(".") or entry.name == "FORMAT":
            continue
        meta = Path(entry.path) / "meta.json"
        if not meta.exists():
            continue
        raw = meta.read_bytes()
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise AssertionError(f"{meta} does not parse: {exc}: {raw[:200]!r}") from None
        if "=" in entry.name:
            key_file = Path(entry.path) / "key"
            assert key_file.exists(), f"{key_file} is missing for a shortened name"
            key = key_file.read_bytes().decode("utf-8")
        else:
            key = decode_name(entry.name)
        state[key] = _reassemble(Path(entry.path), value)
    return state


def open_plain(store_path: Path, **options: Any) -> Any:
    """A store on the real filesystem with test settings (fsync off, no timer flushes)."""
    settings: dict[str, Any] = {"flush_interval": 3600, "fsync": False, "entry_type": dict}
    settings.update(options)
    return aiosessions.open_store(store_path, **settings)


def plant_old_orphan(store_path: Path, mode: str) -> Path:
    """Leave an orphaned tmp file, a day old, where the store's sweep looks for them, and make
    the next open's sweep due (a directory store sweeps when its last sweep is that old)."""
    day_ago = time.time() - 86400
    if mode == "json":
        orphan = store_path.with_name(f".{store_path.name}.99999-deadbeef.tmp")
    else:
        orphan = store_path.with_name(store_path.stem + ".d") / ".FORMAT.99999-deadbeef.tmp"
        stamp = orphan.with_name(".swept")
        if stamp.exists():
            os.utime(stamp, (day_ago, day_ago))
    orphan.write_bytes(b"{half a wri")
    os.utime(orphan, (day_ago, day_ago))
    return orphan


async def wait_swept(store: Any, at_least: int = 1) -> None:
    """Wait until the background sweep after open has removed ``at_least`` orphans.

    The fault loop counts system calls from a known point; the sweep runs in the background
    after open and would otherwise interleave its calls with the operation under test.
    """
    import anyio

    with anyio.fail_after(30):
        while store.statistics().swept < at_least:
            await anyio.sleep(0.001)
