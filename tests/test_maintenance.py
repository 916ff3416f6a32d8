"""prune() and fsck(): OpenClaw's pruning rules on both backends; fsck finds, repairs, never deletes data.

The pruning policy is pure and tested synchronously (with hypothesis), so async tests carry
their own ``pytest.mark.asyncio`` instead of a module-wide ``pytestmark``.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.streams.text
import pytest
from hypothesis import given
from hypothesis import strategies as st

import aiosessions
from aiosessions import (
    CorruptSessionError,
    FileSystem,
    FsckReport,
    LockTimeoutError,
    StoreFormatError,
    fsck,
    migrate,
    open_store,
    prune,
)
from aiosessions._keys import encode_key, lock_stripe
from aiosessions._layout import LOCK_STRIPES, encode_format
from aiosessions._maintenance import _drop_if, plan_prune

DAY_MS = 86_400_000
NOW = 1_800_000_000.0  # epoch seconds, injected
NOW_MS = int(NOW * 1000)


# -- the policy (pure) ------------------------------------------------------------------------


def test_plan_prune_follows_openclaw() -> None:
    recency = {
        "fresh": NOW_MS - 1 * DAY_MS,
        "old": NOW_MS - 40 * DAY_MS,
        "older": NOW_MS - 50 * DAY_MS,
        "unknown": None,  # no (integer) updatedAt: never stale ...
        "mid": NOW_MS - 10 * DAY_MS,
        "mid2": NOW_MS - 10 * DAY_MS,
    }
    stale, capped = plan_prune(recency, cutoff_ms=NOW_MS - 30 * DAY_MS, max_entries=2)
    assert stale == ["older", "old"]  # oldest first
    # ... but the first to go when capping; ties broken by key (mid2 goes before mid).
    assert capped == ["unknown", "mid2"]
    assert plan_prune(recency, cutoff_ms=None, max_entries=None) == ([], [])
    assert plan_prune(recency, cutoff_ms=None, max_entries=0)[1] == [
        "unknown",
        "older",
        "old",
        "mid",
        "mid2",
        "fresh",
    ]
    with pytest.raises(ValueError):
        plan_prune(recency, cutoff_ms=None, max_entries=-1)


@given(
    st.dictionaries(st.text(min_size=1, max_size=4), st.one_of(st.none(), st.integers(0, 100)), max_size=30),
    st.one_of(st.none(), st.integers(0, 100)),
    st.one_of(st.none(), st.integers(0, 40)),
)
def test_plan_prune_properties(recency: dict[str, int | None], cutoff: int | None, cap: int | None) -> None:
    stale, capped = plan_prune(recency, cutoff_ms=cutoff, max_entries=cap)
    assert not set(stale) & set(capped)
    kept = set(recency) - set(stale) - set(capped)
    for key in stale:
        at = recency[key]
        assert cutoff is not None and at is not None and at < cutoff
    for key in kept:
        at = recency[key]
        assert cutoff is None or at is None or at >= cutoff
    if cap is None:
        assert capped == []
    else:
        assert len(kept) == min(cap, len(recency) - len(stale))

        def rank(k: str) -> tuple[float, str]:
            at = recency[k]
            return (float("-inf") if at is None else at, k)

        # Every kept entry is newer than every capped one.
        if kept and capped:
            assert min(rank(k) for k in kept)[0] >= max(rank(k) for k in capped)[0]


def test_drop_if_keeps_an_entry_changed_meanwhile() -> None:
    spared: list[str] = []
    fn = _drop_if("k", spared, lambda at: at == 5)
    assert fn({"updatedAt": 5}) is aiosessions.DELETE
    assert fn(None) is aiosessions.DELETE
    assert fn({"updatedAt": 6}) == {"updatedAt": 6} and spared == ["k"]


# -- prune on a store ---------------------------------------------------------------------------


def _sessions() -> dict[str, dict[str, Any]]:
    sessions: dict[str, dict[str, Any]] = {
        f"agent:main:telegram:direct:{i}": {"sessionId": f"s{i}", "updatedAt": NOW_MS - i * DAY_MS, "x": i}
        for i in range(10)
    }
    sessions["agent:main:cron:no-time"] = {"sessionId": "n"}
    sessions["agent:main:cron:odd-time"] = {"sessionId": "o", "updatedAt": "1700000000000"}
    return sessions


async def _make_store(path: Path, mode: str, sessions: dict[str, dict[str, Any]]) -> None:
    path.write_text(json.dumps(sessions, indent=2))
    if mode == "directory":
        await migrate(path, fsync=False)


async def _contents(path: Path) -> dict[str, Any]:
    async with open_store(path, entry_type=dict, flush_interval=3600, fsync=False) as store:
        return {key: entry async for key, entry in store.items()}


@pytest.mark.asyncio
async def test_prune_by_age_then_count(store_path: Path, mode: str) -> None:
    sessions = _sessions()
    await _make_store(store_path, mode, sessions)

    dry = await prune(store_path, older_than=timedelta(days=5.5), max_entries=4, dry_run=True, now=NOW)
    assert await _contents(store_path) == sessions  # a dry run deletes nothing
    report = await prune(store_path, older_than=5.5 * 86400, max_entries=4, now=NOW, fsync=False)

    assert dry.removed == report.removed and dry.dry_run and not report.dry_run
    assert report.total == 12
    assert report.stale == tuple(f"agent:main:telegram:direct:{i}" for i in (9, 8, 7, 6))
    # 8 left; cap 4: the two without an integer updatedAt go first, then the oldest.
    assert report.capped == (
        "agent:main:cron:no-time",
        "agent:main:cron:odd-time",
        "agent:main:telegram:direct:5",
        "agent:main:telegram:direct:4",
    )
    assert report.kept == 4 and report.spared == ()
    left = await _contents(store_path)
    assert left == {
        f"agent:main:telegram:direct:{i}": sessions[f"agent:main:telegram:direct:{i}"] for i in range(4)
    }


@pytest.mark.asyncio
async def test_prune_needs_a_rule_and_a_store(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="older_than"):
        await prune(tmp_path / "sessions.json")
    with pytest.raises(StoreFormatError, match="no session store"):
        await prune(tmp_path / "sessions.json", max_entries=1)
    assert list(tmp_path.iterdir()) == []  # and it did not create one
    with pytest.raises(ValueError, match="non-negative"):
        await prune(tmp_path / "sessions.json", older_than=-1)


# -- fsck --------------------------------------------------------------------------------------


async def _migrated(tmp_path: Path, sessions: dict[str, Any]) -> Path:
    path = tmp_path / "sessions.json"
    path.write_text(json.dumps(sessions))
    await migrate(path, fsync=False)
    return path


def _kinds(report: FsckReport) -> list[str]:
    return sorted(p.kind for p in report.problems)


@pytest.mark.asyncio
async def test_fsck_a_healthy_store(tmp_path: Path, openclaw_sessions: dict[str, Any]) -> None:
    path = await _migrated(tmp_path, openclaw_sessions)
    report = await fsck(path)
    assert report.ok and report.mode == "directory" and report.sessions == len(openclaw_sessions)
    assert report.problems == () and report.unrepaired == ()


@pytest.mark.asyncio
async def test_fsck_finds_and_repairs_without_deleting_data(tmp_path: Path) -> None:
    sessions = {f"k:{i}": {"updatedAt": i} for i in range(6)}
    long_key = "k:" + "y" * 300
    sessions[long_key] = {"updatedAt": 99}
    path = await _migrated(tmp_path, sessions)
    d = tmp_path / "sessions.d"
    (d / encode_key("k:0") / "meta.json").write_bytes(b'{"truncated": ')  # corrupt
    (d / encode_key("k:1") / "meta.json").write_bytes(b"[1, 2]")  # not an object
    orphan = d / encode_key("k:2") / ".meta.json.123-abcd.tmp"
    orphan.write_bytes(b"{}")
    (d / ".FORMAT.9-ffff.tmp").write_bytes(b"x")  # an orphan at the top
    (d / encode_key("k:3") / "meta.json").unlink()  # a folder without meta.json, holding other things
    (d / encode_key("k:3") / "notes.txt").write_text("keep me")
    (d / encode_key("k:4") / "meta.json").unlink()  # an empty folder: a creation that died
    (d / "not%zzvalid").mkdir()
    (d / "not%zzvalid" / "meta.json").write_bytes(b"{}")
    (d / encode_key(long_key) / "key").write_bytes(b"k:another")
    (d / "stray.txt").write_text("stray")
    trash = d / ".trash" / "0123456789abcdef"
    trash.mkdir()
    (trash / "meta.json").write_bytes(b"{}")
    before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file() and "/.locks/" not in str(p)}

    found = await fsck(path, tmp_max_age=0)
    assert _kinds(found) == sorted(
        [
            "corrupt-entry",
            "corrupt-entry",
            "orphaned-tmp",
            "orphaned-tmp",
            "missing-meta",
            "missing-meta",
            "undecodable-name",
            "undecodable-name",
            "stray-file",
            "stale-trash",
        ]
    )
    assert found.sessions == 2 and not any(p.repaired for p in found.problems)  # k:2 and k:5
    after = {p: p.read_bytes() for p in d.rglob("*") if p.is_file() and "/.locks/" not in str(p)}
    assert after == before  # checking changes nothing

    repaired = await fsck(path, repair=True, tmp_max_age=0)
    assert _kinds(repaired) == _kinds(found) and repaired.unrepaired == ()
    assert not orphan.exists() and not (d / ".FORMAT.9-ffff.tmp").exists() and not trash.exists()
    quarantine = d / ".quarantine"
    kept = sorted(p.read_bytes() for p in quarantine.rglob("*") if p.is_file())
    # Every byte of data that was wrong is still there, in quarantine (and nothing else is).
    assert kept == sorted(
        [b'{"truncated": ', b"[1, 2]", b"keep me", b"{}", b"stray", b"k:another", b'{"updatedAt":99}']
    )
    assert not (d / encode_key("k:4")).exists()  # the empty folder is gone
    assert (await fsck(path)).ok
    assert await _contents(path) == {"k:2": {"updatedAt": 2}, "k:5": {"updatedAt": 5}}


@pytest.mark.asyncio
async def test_fsck_waits_for_a_writer_in_flight(tmp_path: Path) -> None:
    """A tmp file is an orphan only if its key's lock is free: an in-flight write is left alone."""
    path = await _migrated(tmp_path, {"k:1": {"updatedAt": 1}})
    folder = tmp_path / "sessions.d" / encode_key("k:1")
    tmp = folder / ".meta.json.7-beef.tmp"
    tmp.write_bytes(b'{"updatedAt": 2}')
    stripe = tmp_path / "sessions.d" / ".locks" / f"{lock_stripe('k:1', LOCK_STRIPES):02x}"
    writer = os.open(stripe, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(writer, fcntl.LOCK_EX)
    blocked = threading.Event()

    class Watching(FileSystem):
        def flock(self, fd: int, operation: int) -> None:
            try:
                super().flock(fd, operation)
            except BlockingIOError:
                blocked.set()
                raise

    try:
        async with anyio.create_task_group() as tg:
            result: list[FsckReport] = []

            async def run() -> None:
                result.append(await fsck(path, repair=True, filesystem=Watching()))

            tg.start_soon(run)
            await anyio.to_thread.run_sync(blocked.wait)
            os.replace(tmp, folder / "meta.json")  # the writer finishes its write ...
            fcntl.flock(writer, fcntl.LOCK_UN)  # ... and lets go
    finally:
        os.close(writer)
    assert result[0].ok and result[0].sessions == 1
    assert json.loads((folder / "meta.json").read_bytes()) == {"updatedAt": 2}


@pytest.mark.asyncio
async def test_fsck_times_out_on_a_lock_that_stays_held(tmp_path: Path) -> None:
    path = await _migrated(tmp_path, {"k:1": {}})
    (tmp_path / "sessions.d" / encode_key("k:1") / ".meta.json.1-aa.tmp").write_bytes(b"{}")
    stripe = tmp_path / "sessions.d" / ".locks" / f"{lock_stripe('k:1', LOCK_STRIPES):02x}"
    fd = os.open(stripe, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(LockTimeoutError):
            await fsck(path, repair=True, lock_timeout=0.05)
    finally:
        os.close(fd)


@pytest.mark.asyncio
async def test_fsck_format_marker(tmp_path: Path) -> None:
    path = await _migrated(tmp_path, {"k:1": {}})
    marker = tmp_path / "sessions.d" / "FORMAT"

    marker.unlink()
    report = await fsck(path)
    assert _kinds(report) == ["missing-format"] and report.unrepaired
    assert _kinds(await fsck(path, repair=True)) == ["missing-format"]
    assert marker.read_bytes() == encode_format() and (await fsck(path)).ok

    marker.write_bytes(b"garbage")
    report = await fsck(path, repair=True)
    assert _kinds(report) == ["bad-format"] and report.unrepaired == ()
    assert marker.read_bytes() == encode_format()
    assert [p.read_bytes() for p in (tmp_path / "sessions.d" / ".quarantine").iterdir()] == [b"garbage"]

    marker.write_bytes(b'{"format": "aiosessions.directory", "version": 99}')
    with pytest.raises(StoreFormatError, match="upgrade"):
        await fsck(path, repair=True)
    assert b"99" in marker.read_bytes()  # a newer store is never touched


@pytest.mark.asyncio
async def test_fsck_leaves_an_unmarked_folder_beside_a_legacy_file(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    path.write_text(json.dumps({"a": {}, "": {}, "b": 3}))
    (tmp_path / "sessions.d" / "x").mkdir(parents=True)
    (tmp_path / ".sessions.d.staging").mkdir()
    (tmp_path / ".sessions.json.1-ab.tmp").write_text("{")

    report = await fsck(path)
    assert report.mode == "json"
    assert _kinds(report) == [
        "invalid-entry",
        "invalid-entry",
        "missing-format",
        "orphaned-tmp",
        "stale-staging",
    ]
    report = await fsck(path, repair=True)
    assert {p.kind for p in report.unrepaired} == {"invalid-entry", "missing-format"}
    assert (
        not (tmp_path / ".sessions.d.staging").exists()
        and not (tmp_path / ".sessions.json.1-ab.tmp").exists()
    )
    assert (tmp_path / "sessions.d" / "x").is_dir() and not (tmp_path / "sessions.d" / "FORMAT").exists()


@pytest.mark.asyncio
async def test_fsck_reports_a_legacy_file_left_beside_a_complete_store(tmp_path: Path) -> None:
    path = await _migrated(tmp_path, {"k:1": {}})
    path.write_text("{}")
    report = await fsck(path, repair=True)
    assert _kinds(report) == ["stale-legacy"] and "migrate" in report.problems[0].detail
    assert report.unrepaired and path.read_text() == "{}"  # migrate, not fsck, moves it aside
    assert (await migrate(path, fsync=False)).backup is not None
    assert (await fsck(path)).ok


@pytest.mark.asyncio
async def test_fsck_corrupt_legacy_file_is_reported_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "sessions.json"
    path.write_bytes(b"")
    report = await fsck(path, repair=True)
    assert _kinds(report) == ["corrupt-legacy"] and report.unrepaired
    assert path.read_bytes() == b""
    with pytest.raises(StoreFormatError, match="no session store"):
        await fsck(tmp_path / "other.json")


@pytest.mark.asyncio
async def test_fsck_repair_of_a_legacy_store_spares_another_stores_tmp_file(tmp_path: Path) -> None:
    """``.X.json.json.<pid>-<rand>.tmp`` is a write of the store X.json.json, not an orphan of X.json."""
    path = tmp_path / "X.json"
    path.write_text("{}\n", encoding="utf-8")
    ours = tmp_path / ".X.json.123-ab12cd34.tmp"
    theirs = tmp_path / ".X.json.json.123-ab12cd34.tmp"
    ours.write_bytes(b"{")
    theirs.write_bytes(b"{")
    report = await fsck(path, repair=True)
    assert [problem.path for problem in report.problems] == [str(ours)]
    assert not ours.exists()
    assert theirs.exists()


# -- fsck beside a live writer (issue 15.1) ------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.anyio
async def test_fsck_repair_beside_a_live_writer_moves_nothing_live(
    tmp_path: Path, anyio_backend: str
) -> None:
    """A writer process sets, re-sets and deletes 400 long-key sessions (shortened names with a
    ``key`` file) while fsck(repair=True) runs in a loop: nothing it acknowledged is moved."""
    path = tmp_path / "sessions.json"
    async with open_store(path, entry_type=dict, fsync=False) as store:
        await store.set("short:key", {"sessionId": "short"})
    worker = Path(__file__).with_name("_mp_worker.py")
    process = await anyio.open_process(
        [sys.executable, str(worker), "churn", str(path), "directory", "400", "4", "15"]
    )
    assert process.stdout is not None
    lines = anyio.streams.text.TextReceiveStream(process.stdout)
    received = ""
    runs = 0
    async with process:
        with anyio.fail_after(120):
            while "ready" not in received:
                received += await lines.receive()
            async with anyio.create_task_group() as tg:

                async def read_rest() -> None:
                    nonlocal received
                    async for text in lines:
                        received += text
                    tg.cancel_scope.cancel()

                tg.start_soon(read_rest)
                while True:  # until the writer is done (the task group is cancelled)
                    report = await fsck(path, repair=True, lock_timeout=30)
                    runs += 1
                    moved = [problem for problem in report.problems if "moved to" in problem.action]
                    assert not moved, f"fsck run {runs} moved live sessions: {moved}"
                    await anyio.sleep(0)
        assert await process.wait() == 0
    acknowledged = json.loads(received.split("ready", 1)[1])
    assert runs >= 2 and len(acknowledged) > 100
    assert not (tmp_path / "sessions.d" / ".quarantine").exists()
    assert await _contents(path) == {"short:key": {"sessionId": "short"}, **acknowledged}


# -- fsck and the reader agree (issue 15.3) -------------------------------------------------------


def _nested(depth: int) -> bytes:
    return b'{"sessionId": "deep", "v": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.anyio
async def test_fsck_calls_valid_exactly_what_the_reader_gives_back(
    tmp_path: Path, anyio_backend: str
) -> None:
    """Too large for the store's max_entry_bytes, nested deeper than set() accepts: get() refuses
    them and fsck reports them; what get() reads, fsck passes."""
    path = tmp_path / "sessions.json"
    planted = {
        "k:big": b'{"sessionId": "' + b"x" * 2000 + b'"}',
        "k:deep": _nested(300),
        "k:fine": _nested(200),
        "k:small": b'{"sessionId": "small"}',
    }
    async with open_store(path, entry_type=dict, fsync=False) as store:
        for key in planted:
            await store.set(key, {"sessionId": "placeholder"})
    for key, data in planted.items():
        (tmp_path / "sessions.d" / encode_key(key) / "meta.json").write_bytes(data)
    readable = set()
    async with open_store(path, entry_type=dict, max_entry_bytes=1000, fsync=False) as store:
        for key in planted:
            try:
                await store.get(key)
            except CorruptSessionError:
                continue
            readable.add(key)
    assert readable == {"k:fine", "k:small"}
    report = await fsck(path, max_entry_bytes=1000)
    flagged = {problem.path for problem in report.problems}
    assert flagged == {str(tmp_path / "sessions.d" / encode_key(key)) for key in ("k:big", "k:deep")}
    assert all(problem.kind == "corrupt-entry" for problem in report.problems)
    assert report.sessions == 2
    # With the default max_entry_bytes (16 MiB) the 2 KB entry is valid for both.
    async with open_store(path, entry_type=dict, fsync=False) as store:
        assert (await store.get("k:big")) == {"sessionId": "x" * 2000}
    assert {p.path for p in (await fsck(path)).problems} == {
        str(tmp_path / "sessions.d" / encode_key("k:deep"))
    }
