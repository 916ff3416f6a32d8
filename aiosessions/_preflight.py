"""What a real migration needs, checked by a dry run without writing anything.

A dry run reads and checks the legacy file; this module checks the rest of what
the real run will do to the folder around it: create ``.<stem>.d.staging`` and
rename it to ``<stem>.d``, rename the legacy file aside (and make the lock file
if there is none), all on a disk with room for one small file and one folder per
session. Each check looks (``access``, ``stat``, ``statvfs``); none writes.
"""

from __future__ import annotations

import os
import stat as stat_module
from collections.abc import Mapping
from pathlib import Path

import msgspec

from ._layout import StorePaths

__all__ = ["migration_blockers"]


def migration_blockers(
    paths: StorePaths,
    *,
    entries: Mapping[str, msgspec.Raw] | None,
    staging: str,
    problems: Mapping[str, str],
    skip_invalid: bool,
) -> list[str]:
    """Why a real :func:`~aiosessions.migrate` would fail where a dry run just looked.

    ``entries`` are those the real run would write (None when the store is already
    migrated and only the legacy file is left to move aside). Blocking: run it in a
    worker thread.
    """
    blockers: list[str] = []
    folder = paths.file.parent
    if problems and not skip_invalid:
        count = "1 entry" if len(problems) == 1 else f"{len(problems)} entries"
        blockers.append(
            f"{count} cannot be migrated (listed; skip_invalid=True, --skip-invalid, leaves them out)"
        )
    needs = f"renames {paths.file.name} aside"
    if entries is not None:
        needs = f"creates {staging} there, renames it to {paths.directory.name} and {needs}"
    if not _may(folder, os.W_OK | os.X_OK):
        where = " (a read-only filesystem)" if _read_only_fs(folder) else ""
        blockers.append(f"{folder} is not writable by this user{where}: migrate {needs}")
    elif not _may_rename(folder, paths.file):
        blockers.append(
            f"{paths.file} belongs to another user in a sticky folder: migrate cannot rename it aside"
        )
    if paths.lock.exists() and not _may(paths.lock, os.R_OK | os.W_OK):
        blockers.append(f"{paths.lock} (the store's lock file) cannot be opened for writing by this user")
    if entries is not None:
        leftover = _unmarked_leftover(paths.directory)
        if leftover:
            blockers.append(leftover)
        blockers.extend(_room(folder, entries))
    return blockers


def _may(path: Path, mode: int) -> bool:
    effective = os.access in os.supports_effective_ids
    try:
        return os.access(path, mode, effective_ids=effective)
    except OSError:
        return False


def _read_only_fs(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _may_rename(folder: Path, file: Path) -> bool:
    """In a sticky folder (``/tmp``-like) only the file's or the folder's owner may rename it."""
    try:
        folder_st, file_st = os.stat(folder), os.lstat(file)
    except OSError:
        return True  # nothing to rename (or nothing known): the other checks speak
    if not folder_st.st_mode & stat_module.S_ISVTX:
        return True
    uid = os.geteuid()
    return uid == 0 or uid in (folder_st.st_uid, file_st.st_uid)


def _unmarked_leftover(directory: Path) -> str:
    """A ``<stem>.d`` without a marker holding anything: the real run refuses to overwrite it."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return ""
    except OSError as exc:
        return f"{directory} cannot be read ({exc.strerror}): migrate must check it is empty"
    for name in names:
        if name in (".locks", ".trash"):
            try:
                if not os.listdir(directory / name):
                    continue
            except OSError:
                pass
        return (
            f"{directory} exists without a FORMAT marker and is not empty: migrate will not "
            "overwrite it; move it aside first"
        )
    return ""


def _room(folder: Path, entries: Mapping[str, msgspec.Raw]) -> list[str]:
    """Roughly the blocks and inodes a directory store of ``entries`` takes, against what is free.

    One folder and one ``meta.json`` per session, each rounded up to whole blocks; the
    entries are sized as they are in the legacy file (indented), a little more than the
    compact JSON written, so the estimate errs on the safe side.
    """
    try:
        fs = os.statvfs(folder)
    except OSError:
        return []
    block = fs.f_frsize or fs.f_bsize or 4096
    root = os.geteuid() == 0  # root may use the blocks reserved for it
    free_bytes = (fs.f_bfree if root else fs.f_bavail) * block
    need_bytes = sum((-(-len(raw) // block) + 1) * block for raw in entries.values())
    found = []
    if need_bytes > free_bytes:
        found.append(
            f"{folder} has {_size(free_bytes)} free, and the directory store needs about "
            f"{_size(need_bytes)} ({len(entries)} folders and files)"
        )
    if fs.f_files:  # 0: a filesystem without a fixed number of inodes
        free_inodes = fs.f_ffree if root else fs.f_favail
        need_inodes = 2 * len(entries) + 8
        if need_inodes > free_inodes:
            found.append(
                f"{folder}'s filesystem has {free_inodes:,} free inodes, and the directory store needs "
                f"about {need_inodes:,} (a folder and a file per session)"
            )
    return found


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")
