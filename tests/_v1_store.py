"""Builds a directory store of format version 1 (the layout of releases before large members
were stored apart) for the upgrade tests. Not a test module.

Kept in tests/ on purpose: the upgrade is tested against this fixed description of the old
layout, not by checking out old code. Version 1, as docs/format.md described it:

    sessions.d/FORMAT            {"format": "aiosessions.directory", "version": 1}
    sessions.d/.locks/           lock stripes (made by writers; may be missing)
    sessions.d/.trash/
    sessions.d/.swept            empty
    sessions.d/<name>/meta.json  the whole entry, compact JSON (a top-level "$parts" is the entry's own)
    sessions.d/<name>/key        the exact key, only when <name> is shortened (contains "=")
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiosessions._keys import encode_key, is_shortened

V1_MARKER = b'{"format":"aiosessions.directory","version":1}\n'


def build_v1_store(path: Path, entries: Mapping[str, Any], *, record: bool = True) -> Path:
    """A version-1 store of ``entries`` (key -> JSON value, or bytes written verbatim) for the
    store file ``path`` (``X/sessions.json``); returns its folder ``X/sessions.d``."""
    directory = path.with_name(path.stem + ".d")
    directory.mkdir(parents=True)
    for sub in (".locks", ".trash"):
        (directory / sub).mkdir()
    (directory / ".swept").write_bytes(b"")
    if record:
        (directory / ".migration.json").write_bytes(
            b'{"source":"sessions.json","entries":%d}\n' % len(entries)
        )
    for key, entry in entries.items():
        name = encode_key(key)
        folder = directory / name
        folder.mkdir()
        if is_shortened(name):
            (folder / "key").write_bytes(key.encode("utf-8"))
        data = entry if isinstance(entry, bytes) else json.dumps(entry, separators=(",", ":")).encode()
        (folder / "meta.json").write_bytes(data)
    (directory / "FORMAT").write_bytes(V1_MARKER)
    return directory
