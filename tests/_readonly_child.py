"""Read a store the process may not write, then try one write (not a test module).

    python tests/_readonly_child.py STORE_PATH EXPORT_DEST BACKEND [--as-nobody]

BACKEND is ``asyncio`` or ``trio``. The parent makes STORE_PATH's folder unwritable (a
read-only mount, or permissions that only bind a non-root user); ``--as-nobody`` makes
this process drop root for the user ``nobody`` once everything it needs is imported (a
root process ignores permissions, and the interpreter may live where ``nobody`` cannot
read). Prints one JSON object: what was read, what fsck and export_json said, and how
the write failed.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import anyio

# Imported now, while the modules are still readable: after the drop to `nobody` they may not be.
import anyio._backends._asyncio
import anyio._backends._trio
import trio  # noqa: F401

import aiosessions
from aiosessions import FlushError, SessionEntry, StoreIOError

NOBODY = 65534


def drop_root() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    if os.geteuid() == 0 or os.access("/", os.W_OK):
        raise SystemExit("still privileged after the drop")


async def main(path: str, dest: str) -> dict[str, Any]:
    out: dict[str, Any] = {"uid": os.geteuid()}
    async with aiosessions.open_store(path, entry_type=dict, flush_interval=3600) as store:
        out["mode"] = store.mode
        keys = sorted([key async for key in store.keys()])
        out["keys"] = keys
        out["items"] = {key: entry async for key, entry in store.items()}
        out["get"] = await store.get(keys[0])
        out["contains"] = await store.contains(keys[-1])
        out["updated_at"] = await store.updated_at(keys[0])
        out["exported"] = await aiosessions.export_json(path, dest, fsync=False)
        report = await aiosessions.fsck(path)
        out["fsck"] = {
            "ok": report.ok,
            "sessions": report.sessions,
            "problems": [str(p) for p in report.problems],
        }
        try:
            await store.set("agent:main:new", {"sessionId": "new"}, durable=True)
        except StoreIOError as exc:
            out["write_error"] = {"type": type(exc).__name__, "errno": exc.errno, "message": str(exc)}
        else:
            out["write_error"] = None
        try:
            await store.aclose()
        except FlushError as exc:
            out["close_error"] = {"unwritten": exc.unwritten, "message": str(exc)}
    # The entry type is irrelevant here; SessionEntry keeps the import honest for the drop.
    assert SessionEntry is not None
    return out


if __name__ == "__main__":
    store_path, export_dest, backend = sys.argv[1:4]
    if "--as-nobody" in sys.argv[4:]:
        drop_root()
    result = anyio.run(main, store_path, export_dest, backend=backend)
    print(json.dumps(result), flush=True)
