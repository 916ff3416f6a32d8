"""Opening the file store at a path: which backend, detected from what is on disk."""

from __future__ import annotations

import anyio

from .._errors import StoreFormatError, io_error
from .._fs import FileSystem
from .._layout import StorePaths, detect_mode, detect_mode_inline
from ._base import Backend
from ._directory import DirectoryBackend
from ._json import JsonBackend

__all__ = ["file_backend"]


async def file_backend(
    paths: StorePaths,
    fs: FileSystem,
    mode: str | None,
    *,
    lock_timeout: float,
    max_entry_bytes: int,
    cache_bytes: int,
    tmp_max_age: float,
) -> Backend:
    """The backend for the store at ``paths``: an existing directory store (FORMAT marker),
    else an existing legacy file, else a new directory store; ``mode`` insists on one.

    Returns it unopened. :raises StoreFormatError: ``mode`` contradicts what is on disk.
    """
    try:
        # On the event loop when the page cache can answer (microseconds), else in a thread.
        detected = detect_mode_inline(fs, paths)
        if detected is False:
            detected = await anyio.to_thread.run_sync(detect_mode, fs, paths)
    except OSError as exc:
        raise io_error(exc, f"opening the store {paths.file}", path=str(paths.file)) from exc
    if mode == "json" and detected == "directory":
        raise StoreFormatError(
            f"{paths.file} was migrated to {paths.directory}; "
            "open it in directory mode (mode=None), or export_json() it back first"
        )
    if mode == "directory" and detected == "json":
        raise StoreFormatError(
            f"{paths.file} is a legacy JSON store; run aiosessions.migrate() first, "
            "or open it with mode='json'"
        )
    chosen = mode or detected or "directory"
    create = detected is None
    if chosen == "json":
        return JsonBackend(
            paths,
            fs,
            create=create,
            lock_timeout=lock_timeout,
            tmp_max_age=tmp_max_age,
            # For the directory store a migration may make of the file while it is open.
            max_entry_bytes=max_entry_bytes,
            cache_bytes=cache_bytes,
        )
    return DirectoryBackend(
        paths,
        fs,
        create=create,
        lock_timeout=lock_timeout,
        max_entry_bytes=max_entry_bytes,
        cache_bytes=cache_bytes,
        tmp_max_age=tmp_max_age,
    )
