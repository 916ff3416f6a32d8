"""Moving stores: a directory store or a legacy sessions.json into Redis and back.

``copy_store()`` and ``aiosessions copy``.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from aiosessions import SessionEntry, StoreFormatError, copy_store, open_store

pytestmark = pytest.mark.asyncio


def entries(n: int) -> dict[str, dict[str, Any]]:
    return {
        f"agent:main:telegram:direct:{i}": {
            "sessionId": f"s{i}",
            "updatedAt": 1_700_000_000_000 + i,
            "n": [i, 1.5],
        }
        for i in range(n)
    }


async def fill(target: Any, data: dict[str, dict[str, Any]], **options: Any) -> None:
    async with open_store(target, entry_type=dict, **options) as store:
        for key, entry in data.items():
            await store.set(key, entry)


async def read_all(target: Any, **options: Any) -> dict[str, Any]:
    async with open_store(target, entry_type=dict, **options) as store:
        return {key: entry async for key, entry in store.items()}


async def test_a_directory_store_to_redis_and_back(tmp_path: Path, redis_url: str) -> None:
    data = entries(1200)
    await fill(tmp_path / "sessions.json", data)
    seen: list[tuple[int, int]] = []
    report = await copy_store(tmp_path / "sessions.json", redis_url, progress=lambda *p: seen.append(p))
    assert (report.sessions, report.copied, report.unchanged, report.problems) == (1200, 1200, 0, {})
    assert seen[-1] == (1200, 1200) and len(seen) == 3
    assert await read_all(redis_url) == data
    back = await copy_store(redis_url, tmp_path / "back" / "sessions.json")
    assert back.copied == 1200
    assert await read_all(tmp_path / "back" / "sessions.json") == data
    # The same bytes on both sides: a meta.json and the Redis entry are byte-equal.
    key = "agent:main:telegram:direct:7"
    async with open_store(redis_url) as store:
        stored = await store.backend.read(key)
    from aiosessions._keys import encode_key

    assert (tmp_path / "sessions.d" / encode_key(key) / "meta.json").read_bytes() == stored


async def test_a_legacy_file_to_redis_and_back(tmp_path: Path, redis_url: str) -> None:
    data = entries(50)
    legacy = tmp_path / "sessions.json"
    legacy.write_text(json.dumps(data, indent=2))
    report = await copy_store(legacy, redis_url)
    assert report.copied == 50 and await read_all(redis_url) == data
    async with open_store(redis_url) as store:  # compacted as a meta.json is
        raw = await store.backend.read("agent:main:telegram:direct:3")
    assert raw is not None and b"\n" not in raw and b": " not in raw
    legacy.unlink()
    await fill(tmp_path / "out.json", {}, mode="json")
    back = await copy_store(redis_url, tmp_path / "out.json")
    assert back.copied == 50
    assert json.loads((tmp_path / "out.json").read_text()) == data


async def test_an_interrupted_copy_resumes_and_a_last_run_copies_what_changed(
    tmp_path: Path, redis_url: str
) -> None:
    source = tmp_path / "sessions.json"
    data = entries(1500)
    await fill(source, data)

    class Interrupted(Exception):
        pass

    def stop_after_first_chunk(done: int, total: int) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        await copy_store(source, redis_url, progress=stop_after_first_chunk)
    assert len(await read_all(redis_url)) == 512
    resumed = await copy_store(source, redis_url)
    assert (resumed.copied, resumed.unchanged) == (1500 - 512, 512)
    # The bot kept running on the source: a change, a new session, a deletion.
    async with open_store(source, entry_type=dict) as store:
        await store.set("agent:main:telegram:direct:1", {"sessionId": "changed"})
        await store.set("new", {"sessionId": "new"})
        await store.delete("agent:main:telegram:direct:2")
    kept = await copy_store(source, redis_url)
    assert (kept.copied, kept.extra, kept.deleted) == (2, 1, 0)
    final = await copy_store(source, redis_url, delete=True)
    assert (final.copied, final.extra, final.deleted) == (0, 1, 1)
    assert await read_all(redis_url) == await read_all(source)


async def test_a_missing_source_or_the_same_store_is_refused(tmp_path: Path, redis_url: str) -> None:
    with pytest.raises(StoreFormatError, match="no session store at"):
        await copy_store(tmp_path / "nothing.json", redis_url)
    with pytest.raises(StoreFormatError, match="no session store with the prefix"):
        await copy_store(redis_url, tmp_path / "sessions.json")
    assert not (tmp_path / "sessions.d").exists()
    await fill(redis_url, {"k": {"sessionId": "k"}})
    with pytest.raises(StoreFormatError, match="same store"):
        await copy_store(redis_url, redis_url)


async def test_the_copy_command_shows_progress_on_a_terminal(tmp_path: Path, redis_url: str) -> None:
    await fill(tmp_path / "sessions.json", entries(700), flush_interval=0)
    primary, secondary = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "aiosessions", "copy", str(tmp_path), redis_url],
            stdout=subprocess.PIPE,
            stderr=secondary,
            timeout=60,
            env={**os.environ, "COLUMNS": "100", "TERM": "dumb"},
        )
        os.close(secondary)
        shown = b""
        while True:
            try:
                piece = os.read(primary, 65536)
            except OSError:
                break
            if not piece:
                break
            shown += piece
    finally:
        os.close(primary)
    assert done.returncode == 0, shown
    assert b"copying" in shown and b"700" in shown
    assert done.stdout.decode().startswith("copied 700 of 700 sessions from ")
    again = subprocess.run(
        [sys.executable, "-m", "aiosessions", "copy", str(tmp_path), redis_url, "--json"],
        capture_output=True,
        timeout=60,
    )
    report = msgspec.json.decode(again.stdout)
    assert (report["copied"], report["unchanged"]) == (0, 700)
    entry = (await read_all(redis_url))["agent:main:telegram:direct:5"]
    assert SessionEntry(session_id="s5").session_id == entry["sessionId"]


async def test_large_sessions_stored_apart_on_both_sides_copy_whole(tmp_path: Path, redis_url: str) -> None:
    """A directory store and a Redis store both keep large members apart, each its own way:
    a copy moves whole sessions, equal on arrival, and back."""
    data = {
        f"agent:main:telegram:direct:{i}": {
            "sessionId": f"s{i}",
            "updatedAt": 1_700_000_000_000 + i,
            "skillsSnapshot": {"prompt": "p" * 60_000, "i": i},
            "systemPromptReport": {"text": "r" * 30_000},
        }
        for i in range(5)
    }
    await fill(tmp_path / "sessions.json", data)
    assert (await copy_store(tmp_path / "sessions.json", redis_url)).copied == 5
    assert await read_all(redis_url) == data
    assert (await copy_store(redis_url, tmp_path / "back" / "sessions.json")).copied == 5
    assert await read_all(tmp_path / "back" / "sessions.json") == data
