"""Two processes on one store: a real child process writes, the parent's open store sees it.

The parent has already read (and so cached) the old values; freshness is checked
per entry on every read, with no TTL, so its next read sees the child's write.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

pytestmark = pytest.mark.asyncio

Opener = Callable[..., Any]

CHILD = textwrap.dedent(
    """
    import json, sys
    import anyio, aiosessions

    async def main() -> None:
        path, actions = sys.argv[1], json.loads(sys.argv[2])
        # Write-through with fsync: every call returns once its change is on disk.
        async with aiosessions.open_store(path, entry_type=dict, flush_interval=0, fsync=True) as store:
            print(store.mode)
            for op, key, value in actions:
                if op == "set":
                    await store.set(key, value)
                elif op == "delete":
                    assert await store.delete(key), key
                elif op == "update":
                    await store.update(key, lambda e: {**(e or {}), **value})

    anyio.run(main)
    """
)


async def run_child(store_path: Path, actions: list[tuple[str, str, Any]]) -> str:
    """Run the writer in a separate Python process; return what it printed (its store's mode)."""
    result = await anyio.run_process(
        [sys.executable, "-c", CHILD, str(store_path), json.dumps(actions)], check=False
    )
    if result.returncode != 0:
        raise subprocess.CalledProcessError(
            result.returncode, "child writer", result.stdout, result.stderr.decode(errors="replace")
        )
    return result.stdout.decode().strip()


async def test_child_writes_are_seen_on_the_parents_next_read(
    open_test_store: Opener, store_path: Path, mode: str
) -> None:
    async with open_test_store(entry_type=dict) as store:
        await store.set("changed", {"v": 1, "updatedAt": 1})
        await store.set("deleted", {"v": 1})
        await store.set("kept", {"v": 1})
        await store.flush()
        # Read everything once: the parent now holds the old values.
        assert await store.get("changed") == {"v": 1, "updatedAt": 1}
        assert await store.get("deleted") == {"v": 1}
        assert await store.updated_at("changed") == 1
        assert sorted([k async for k in store.keys()]) == ["changed", "deleted", "kept"]

        child_mode = await run_child(
            store_path,
            [
                ("set", "changed", {"v": 2, "updatedAt": 2}),  # same size as before
                ("delete", "deleted", None),
                ("set", "agent:main:new", {"v": "new"}),
            ],
        )
        assert child_mode == mode

        assert await store.get("changed") == {"v": 2, "updatedAt": 2}
        assert await store.updated_at("changed") == 2
        assert await store.get("deleted") is None
        assert await store.contains("deleted") is False
        assert await store.get("agent:main:new") == {"v": "new"}
        assert sorted([k async for k in store.keys()]) == ["agent:main:new", "changed", "kept"]
        assert {k: v async for k, v in store.items()} == {
            "agent:main:new": {"v": "new"},
            "changed": {"v": 2, "updatedAt": 2},
            "kept": {"v": 1},
        }

        # And again: a second child changes the same entry once more.
        await run_child(store_path, [("set", "changed", {"v": 3, "updatedAt": 3})])
        assert await store.get("changed") == {"v": 3, "updatedAt": 3}
        # The parent's own update applies to the child's value.
        assert await store.update("changed", lambda e: {**e, "v": e["v"] * 10}) == {"v": 30, "updatedAt": 3}


async def test_the_parents_flush_keeps_the_childs_writes(
    open_test_store: Opener, store_path: Path, mode: str
) -> None:
    """A pending change in the parent, flushed after the child wrote, loses nothing of the child's."""
    async with open_test_store(entry_type=dict) as store:
        await store.set("base", {"v": 0})
        await store.flush()
        await store.set("parent", {"by": "parent"})  # pending, not on disk yet
        await store.update("base", lambda e: {**e, "parent": True})  # pending update of a shared key
        await run_child(store_path, [("set", "child", {"by": "child"}), ("update", "base", {"child": True})])
        await store.flush()
    async with open_test_store(entry_type=dict) as store:
        assert {k: v async for k, v in store.items()} == {
            "base": {"v": 0, "child": True, "parent": True},
            "parent": {"by": "parent"},
            "child": {"by": "child"},
        }
    if mode == "json":
        assert set(json.loads(store_path.read_bytes())) == {"base", "parent", "child"}
