"""Reading needs no write access and leaves nothing behind.

A store on a read-only disk, or in a folder the user may only read, opens, lists, reads,
exports and is checked by ``fsck`` (which finds a dead writer's tmp file under locks it cannot
make); nothing is created or changed; the first write fails with a
``StoreIOError`` naming the session and the file. Root ignores permissions and the test
suite runs as root in CI, so each case runs in a child process that either sees the store
through a read-only bind mount (in a mount namespace of its own: EROFS) or drops to the
user ``nobody`` (EACCES). Both backends, both event loops.

Also here: a wrong path given to a read-only operation is an error with a hint, and leaves
no file behind (a lock file of a store that does not exist, one made inside a store).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import aiosessions
from aiosessions import MigrationError, StoreFormatError
from aiosessions._keys import encode_key

pytestmark = pytest.mark.anyio

HERE = Path(__file__).resolve().parent
CHILD = HERE / "_readonly_child.py"
LONG_KEY = "agent:main:" + "x" * 300  # a shortened folder name with its `key` file
SESSIONS: dict[str, Any] = {
    "agent:main:telegram:direct:alice": {"sessionId": "a", "updatedAt": 1_700_000_000_000},
    "agent:main:discord:group:42": {"sessionId": "b", "updatedAt": 1_700_000_000_500, "model": "m"},
    LONG_KEY: {"sessionId": "c", "updatedAt": 1_700_000_001_000},
}


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every name under ``root`` (and root itself) with its kind, inode, size, mode and times."""
    seen: dict[str, tuple[Any, ...]] = {}
    for folder, dirs, files in os.walk(root):
        for name in [".", *dirs, *files]:
            path = Path(folder) / name
            st = path.lstat()
            seen[str(path.relative_to(root))] = (
                stat.S_IFMT(st.st_mode),
                st.st_ino,
                st.st_size,
                st.st_mode,
                st.st_mtime_ns,
                st.st_ctime_ns,
            )
    return seen


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    """A folder that the user ``nobody`` can reach (pytest's tmp_path is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="aiosessions-readonly-"))
    base.chmod(0o755)
    for folder in base.parents:
        assert folder.stat().st_mode & 0o001, f"{folder} is not searchable by other users"
    try:
        yield base
    finally:
        for folder, dirs, _ in os.walk(base):
            for name in dirs:
                (Path(folder) / name).chmod(0o755)
        shutil.rmtree(base)


async def make_store(folder: Path, kind: str, state: str) -> Path:
    """A store of SESSIONS in ``folder``: a legacy file, or a directory store made by migrate().

    ``pristine``: never written by aiosessions (no lock file at all). ``used``: written once
    (its lock files exist), and a dead writer's tmp file is left in it (fsck reports it,
    under the lock it must take without being able to write).
    """
    path = folder / "sessions.json"
    path.write_text(json.dumps(SESSIONS, indent=2), "utf-8")
    if kind == "directory":
        await aiosessions.migrate(path, fsync=False)
    if state == "used":
        async with aiosessions.open_store(path, entry_type=dict, fsync=False) as store:
            await store.set(LONG_KEY, SESSIONS[LONG_KEY])
        if kind == "directory":
            orphan = folder / "sessions.d" / encode_key(LONG_KEY) / ".meta.json.4242-deadbeef.tmp"
        else:
            orphan = folder / ".sessions.json.4242-deadbeef.tmp"
        orphan.write_text('{"half": ')
        os.utime(orphan, (1_000_000_000, 1_000_000_000))
    # The legacy store's lock, or the directory store's stripes (migrate made .sessions.lock).
    locks = list(folder.glob("sessions.d/.locks/*" if kind == "directory" else ".sessions.lock"))
    assert bool(locks) == (state == "used")
    return path


def make_read_only_for_nobody(folder: Path) -> None:
    """Owned by root, readable by everyone, writable by nobody else."""
    for parent, dirs, files in os.walk(folder):
        for name in dirs:
            (Path(parent) / name).chmod(0o555)
        for name in files:
            (Path(parent) / name).chmod(0o444)
    folder.chmod(0o555)


def run_child(store: Path, dest: Path, backend: str, how: str) -> dict[str, Any]:
    command = [sys.executable, str(CHILD), str(store), str(dest), backend]
    if how == "read-only-mount":
        # A mount namespace of its own: the read-only bind mount is seen by the child only,
        # and goes away with it.
        folder = str(store.parent)
        script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
        command = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            folder,
            *command,
        ]
    else:
        command.append("--as-nobody")
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"the child failed:\n{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("state", ["pristine", "used"])
@pytest.mark.parametrize("kind", ["json", "directory"])
@pytest.mark.parametrize("how", ["read-only-mount", "non-root-user"])
async def test_a_read_only_store_reads_and_creates_nothing(
    tmp_path: Path, world_readable_dir: Path, how: str, kind: str, state: str, anyio_backend: str
) -> None:
    """The child runs on the event loop this test runs on."""
    base = tmp_path if how == "read-only-mount" else world_readable_dir
    folder = base / "state"
    folder.mkdir()
    path = await make_store(folder, kind, state)
    out = base / "out"
    out.mkdir()
    out.chmod(0o777)  # export_json writes here: `nobody` must be able to
    if how == "non-root-user":
        make_read_only_for_nobody(folder)
    before = snapshot(folder)

    result = run_child(path, out / "exported.json", anyio_backend, how)

    assert snapshot(folder) == before, "reading the store changed or created something"
    assert result["uid"] == (0 if how == "read-only-mount" else 65534)
    assert result["mode"] == kind
    assert result["keys"] == sorted(SESSIONS)
    assert result["items"] == SESSIONS
    assert result["get"] == SESSIONS[sorted(SESSIONS)[0]]
    assert result["contains"] is True
    assert result["updated_at"] == SESSIONS[sorted(SESSIONS)[0]]["updatedAt"]
    assert result["exported"] == len(SESSIONS)
    assert json.loads((out / "exported.json").read_bytes()) == SESSIONS
    fsck = result["fsck"]
    assert fsck["sessions"] == len(SESSIONS)
    if state == "pristine":
        assert fsck["ok"] and fsck["problems"] == []
    else:
        assert len(fsck["problems"]) == 1 and "orphaned-tmp" in fsck["problems"][0]
    # The write fails, clearly: the session, the reason and the file that could not be made.
    error = result["write_error"]
    expected_errno = errno.EROFS if how == "read-only-mount" else errno.EACCES
    assert error is not None and error["type"] == "StoreIOError" and error["errno"] == expected_errno
    assert os.strerror(expected_errno) in error["message"]
    assert str(folder) in error["message"]
    if kind == "directory":
        assert "agent:main:new" in error["message"]
    else:
        assert str(path) in error["message"]
    assert result["close_error"]["unwritten"] == 1


async def test_a_wrong_path_is_an_error_with_a_hint_and_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    path.write_text(json.dumps(SESSIONS), "utf-8")
    await aiosessions.migrate(path, fsync=False)
    store = tmp_path / "sessions.d"
    before = snapshot(tmp_path)

    # A file inside the store is not a store of its own (it used to open as a legacy file
    # of two nonsense "sessions", with a .FORMAT.lock made inside the store).
    inside = [store / "FORMAT", store / ".migration.json", next(store.glob("agent*")) / "meta.json"]
    for wrong in inside:
        with pytest.raises(StoreFormatError, match="inside the directory store") as caught:
            async with aiosessions.open_store(wrong):
                pass
        assert str(tmp_path / "sessions.json") in str(caught.value)
        with pytest.raises(StoreFormatError, match="inside the directory store"):
            await aiosessions.fsck(wrong)
        with pytest.raises(StoreFormatError, match="inside the directory store"):
            await aiosessions.export_json(wrong, tmp_path.parent / f"{tmp_path.name}-export.json")
        with pytest.raises(StoreFormatError, match="inside the directory store"):
            await aiosessions.migrate(wrong)
    # A folder is not a store file: say which file to name.
    with pytest.raises(StoreFormatError, match="is a folder, not a store file"):
        async with aiosessions.open_store(tmp_path):
            pass
    # migrate of a store that does not exist made its lock file before finding out.
    with pytest.raises(MigrationError, match="no session store"):
        await aiosessions.migrate(tmp_path / "nope.json")
    assert snapshot(tmp_path) == before


async def test_a_folder_named_like_a_store_is_not_taken_for_one(tmp_path: Path) -> None:
    """Only a real FORMAT marker makes a ``.d`` folder a store: ``conf.d/`` with a FORMAT
    file of another program still holds stores of its own."""
    folder = tmp_path / "conf.d"
    folder.mkdir()
    (folder / "FORMAT").write_text("something else entirely\n")
    async with aiosessions.open_store(folder / "sessions.json", fsync=False) as store:
        await store.set("k", aiosessions.SessionEntry(session_id="s"))
    async with aiosessions.open_store(folder / "sessions.json", fsync=False) as store:
        assert await store.get("k") == aiosessions.SessionEntry(session_id="s")
