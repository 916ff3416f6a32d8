"""Where a store lives on disk, which kind it is, and its FORMAT marker.

Everything a store creates beside its file is named after the file's stem:
``X/foo.json`` (legacy file), ``X/foo.d/`` (directory store) and
``X/.foo.lock`` (the store-wide cross-process lock), so two stores in one
folder never share anything.
"""

from __future__ import annotations

import os
import stat as stat_module
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec

from ._entry import DECODE_ERRORS
from ._errors import StoreFormatError
from ._fs import FileSystem, NotRegularFileError, TooLargeError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "StorePaths",
    "detect_mode",
    "encode_format",
    "refuse_inside_store",
]

Mode = Literal["directory", "json"]

FORMAT_FILE = "FORMAT"
FORMAT_NAME = "aiosessions.directory"
FORMAT_VERSION = 1


class _Format(msgspec.Struct):
    format: str
    version: int


@dataclass(frozen=True)
class StorePaths:
    """The paths of one store, all derived from the path the user gave."""

    file: Path
    directory: Path
    lock: Path

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> StorePaths:
        """Derive the paths from ``X/foo.json`` (or from ``X/foo.d``, the directory itself)."""
        given = Path(os.fspath(path)).absolute()
        stem = given.stem
        if given.suffix == ".d":
            given = given.with_name(stem + ".json")
        if not stem:
            raise StoreFormatError(f"{path!r} does not name a store file (expected e.g. sessions.json)")
        return cls(file=given, directory=given.with_name(stem + ".d"), lock=given.with_name(f".{stem}.lock"))


def encode_format() -> bytes:
    """The bytes of the FORMAT marker this release writes."""
    return msgspec.json.encode(_Format(FORMAT_NAME, FORMAT_VERSION)) + b"\n"


def check_format(data: bytes, where: Path) -> None:
    """Accept the bytes of a FORMAT marker, or raise :class:`StoreFormatError` saying why not."""
    try:
        marker = msgspec.json.decode(data, type=_Format)
    except DECODE_ERRORS as exc:
        raise StoreFormatError(f"{where} is not a valid aiosessions FORMAT marker: {exc}") from exc
    if marker.format != FORMAT_NAME:
        raise StoreFormatError(f"{where} names format {marker.format!r}, not {FORMAT_NAME!r}")
    if marker.version != FORMAT_VERSION:
        raise StoreFormatError(
            f"{where} is format version {marker.version}; this aiosessions reads version "
            f"{FORMAT_VERSION} (upgrade aiosessions to open it)"
        )


def refuse_inside_store(fs: FileSystem, paths: StorePaths) -> None:
    """Refuse a path inside a directory store (blocking; run it in a worker thread).

    ``X/sessions.d/FORMAT`` or ``X/sessions.d/<name>/meta.json`` would otherwise be
    taken for a legacy file of its own, read as nonsense sessions and get a lock file
    made beside it, inside the store.

    :raises StoreFormatError: a folder above ``paths.file`` is a directory store.
    """
    for folder in paths.file.parents:
        if not folder.name.endswith(".d"):
            continue
        try:
            found = fs.read_file(str(folder / FORMAT_FILE), max_bytes=4096)
            ours = found is not None and msgspec.json.decode(found[0], type=_Format).format == FORMAT_NAME
        except OSError:
            ours = False
        except DECODE_ERRORS:
            ours = False  # another program's FORMAT file: a folder that happens to end in .d
        if ours:
            raise StoreFormatError(
                f"{paths.file} is inside the directory store {folder}: open the store itself, "
                f"{folder.with_name(folder.name[: -len('.d')] + '.json')} (or {folder})"
            )


def detect_mode(fs: FileSystem, paths: StorePaths) -> Mode | None:
    """Which store is at ``paths`` (blocking; run it in a worker thread).

    A directory holding a valid FORMAT marker is a directory store; otherwise an
    existing legacy file is a JSON store; otherwise there is none (None). A
    directory without the marker (say, a half-made migration) is never trusted.

    :raises StoreFormatError: the marker exists but is invalid or of another version;
        the path is inside a directory store, or names a folder.
    """
    refuse_inside_store(fs, paths)
    marker = paths.directory / FORMAT_FILE
    try:
        found = fs.read_file(str(marker), max_bytes=4096)
    except (TooLargeError, NotRegularFileError) as exc:
        raise StoreFormatError(f"{marker} is not a valid aiosessions FORMAT marker: {exc.strerror}") from None
    if found is not None:
        check_format(found[0], paths.directory / FORMAT_FILE)
        return "directory"
    try:
        st = fs.stat(str(paths.file))
    except FileNotFoundError:
        return None
    if stat_module.S_ISDIR(st.st_mode):
        raise StoreFormatError(
            f"{paths.file} is a folder, not a store file: name the store file in it "
            f"(e.g. {paths.file / 'sessions.json'})"
        )
    return "json"
