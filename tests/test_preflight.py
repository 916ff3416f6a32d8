"""What a migration dry run checks beyond the file: free space and inodes, from statvfs.

Permissions and a folder in the way are checked through the command line (tests/test_cli.py);
a full disk cannot be made on demand, so its arithmetic is checked here against the numbers
``os.statvfs`` would report for a nearly full one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
import pytest

from aiosessions._layout import StorePaths
from aiosessions._preflight import migration_blockers


class FakeStatvfs:
    def __init__(self, **fields: int) -> None:
        values = {"f_frsize": 4096, "f_bsize": 4096, "f_bfree": 0, "f_bavail": 0, "f_files": 0}
        values.update(f_ffree=0, f_favail=0, f_flag=0)
        values.update(fields)
        self.__dict__.update(values)


def blockers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entries: int, **fields: Any) -> list[str]:
    monkeypatch.setattr(os, "statvfs", lambda _: FakeStatvfs(**fields))
    sessions = {f"agent:main:{i}": msgspec.Raw(b'{"updatedAt": 1}') for i in range(entries)}
    paths = StorePaths.of(tmp_path / "sessions.json")
    return migration_blockers(
        paths, entries=sessions, staging=".sessions.d.staging", problems={}, skip_invalid=False
    )


def test_room_for_a_folder_and_a_file_per_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 100 sessions need 2 blocks each (a folder and a small file): 800 KB with 4 KB blocks.
    free = {"f_bfree": 1000, "f_bavail": 1000, "f_files": 10_000, "f_ffree": 5000, "f_favail": 5000}
    assert blockers(tmp_path, monkeypatch, 100, **free) == []
    short = blockers(tmp_path, monkeypatch, 100, **{**free, "f_bfree": 150, "f_bavail": 150})
    assert len(short) == 1 and "614.4 KB free" in short[0] and "needs about 819.2 KB" in short[0]
    no_inodes = blockers(tmp_path, monkeypatch, 100, **{**free, "f_ffree": 50, "f_favail": 50})
    assert len(no_inodes) == 1 and "50 free inodes" in no_inodes[0] and "about 208" in no_inodes[0]
    # A filesystem without a fixed number of inodes (btrfs reports 0) is not held to one.
    assert blockers(tmp_path, monkeypatch, 100, **{**free, "f_files": 0, "f_ffree": 0}) == []


def test_refused_entries_are_a_blocker_unless_skipped(tmp_path: Path) -> None:
    paths = StorePaths.of(tmp_path / "sessions.json")
    found = migration_blockers(paths, entries={}, staging="s", problems={"k": "bad"}, skip_invalid=False)
    assert found == [
        "1 entry cannot be migrated (listed; skip_invalid=True, --skip-invalid, leaves them out)"
    ]
    assert migration_blockers(paths, entries={}, staging="s", problems={"k": "bad"}, skip_invalid=True) == []
