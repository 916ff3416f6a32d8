"""``copy_store()``: every session of one store into another, whatever their backends.

The way from a directory store or a legacy ``sessions.json`` to Redis and back (``aiosessions
copy``). It copies entries as they are stored (compact JSON bytes, never decoded into entries)
and compares before writing, so running it again copies only what changed since: an
interrupted copy is resumed by running it again, and a last run after stopping the bot picks
up the few sessions changed meanwhile.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import msgspec

from ._defaults import DEFAULT_CACHE_BYTES, DEFAULT_LOCK_TIMEOUT, DEFAULT_MAX_ENTRY_BYTES, DEFAULT_TMP_MAX_AGE
from ._errors import SessionStoreError, StoreFormatError
from ._fs import FileSystem
from ._layout import StorePaths, detect_mode
from ._targets import is_redis_url, redis_backend
from .backends import Backend, Write
from .backends._files import file_backend

__all__ = ["CopyReport", "copy_store"]

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class CopyReport:
    """What :func:`copy_store` did."""

    #: Where the sessions came from (a path, or a server and prefix).
    source: str
    #: Where they went.
    destination: str
    #: Sessions in the source.
    sessions: int
    #: Sessions written to the destination (absent there, or different).
    copied: int
    #: Sessions the destination already held with the same bytes.
    unchanged: int
    #: Sessions of the destination that are not in the source.
    extra: int
    #: Of those, how many were deleted (all of them with ``delete=True``, else none).
    deleted: int
    #: Sessions that could not be read from the source, and why (they were not copied).
    problems: dict[str, str] = field(default_factory=dict)
    #: How long the copy took.
    seconds: float = 0.0


async def copy_store(
    source: str | os.PathLike[str] | Backend,
    destination: str | os.PathLike[str] | Backend,
    *,
    delete: bool = False,
    progress: Progress | None = None,
    chunk: int = 512,
) -> CopyReport:
    """Copy every session of ``source`` into ``destination``; return what was done.

    Each is a store path (``X/sessions.json``: a directory store or a legacy file), a
    ``redis://``/``rediss://``/``unix://`` URL, or a backend object. The source must exist;
    the destination is created if needed. Sessions the destination holds with other bytes
    are overwritten (the source wins); sessions only the destination holds are kept, or
    deleted with ``delete=True``. Every batch is written durably. Run it while your bot
    writes to the source, never while it writes to the destination.

    :param source: the store to copy from; it must exist.
    :param destination: the store to copy into; made if there is none.
    :param delete: also delete the destination's sessions that the source does not have.
    :param progress: called as ``progress(done, total)`` after each chunk of sessions.
    :param chunk: sessions read, compared and written per round.
    :raises StoreFormatError: there is no store at ``source``, or both name one store.
    :raises StoreIOError: reading or writing failed (run it again: it resumes).
    """
    started = time.perf_counter()
    src = await _backend(source, must_exist=True)
    try:
        dst = await _backend(destination, must_exist=False)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await src.aclose()
        raise
    try:
        if src.location() == dst.location():
            raise StoreFormatError(f"the source and the destination are the same store: {src.location()}")
        await src.open()
        await dst.open()
        keys = [key async for part in src.key_chunks() for key in part]
        wanted = set(keys)
        copied = unchanged = deleted = extra = 0
        problems: dict[str, str] = {}
        whole = dst.batch_size is None  # the legacy file: one rewrite for everything
        held: list[Write] = []
        for start in range(0, len(keys), chunk):
            part = keys[start : start + chunk]
            found = await src.read_many(part)
            have = await dst.read_many(part)
            writes: list[Write] = []
            for key, data, current in zip(part, found, have, strict=True):
                if isinstance(current, BaseException):
                    raise current
                if isinstance(data, BaseException) or data is None:
                    if data is not None:
                        problems[key] = str(data)
                    else:
                        wanted.discard(key)  # deleted in the source since it was listed
                    continue
                try:
                    data = msgspec.json.format(data, indent=-1)  # compact, as in a meta.json
                except msgspec.DecodeError as exc:
                    problems[key] = f"not JSON: {exc}"
                    continue
                if data == current:
                    unchanged += 1
                else:
                    writes.append(Write(key, data))
            copied += len(writes)
            if whole:
                held.extend(writes)
            else:
                await _write(dst, writes)
            if progress is not None:
                progress(min(start + chunk, len(keys)), len(keys))
        gone = [key async for part in dst.key_chunks() for key in part if key not in wanted]
        gone = [key for key in gone if key not in problems]
        extra = len(gone)
        if delete and gone:
            removals = [Write(key, None) for key in gone]
            if whole:
                held.extend(removals)
            else:
                for start in range(0, len(removals), chunk):
                    await _write(dst, removals[start : start + chunk])
            deleted = len(gone)
        if held:
            await _write(dst, held)
        return CopyReport(
            source=src.location(),
            destination=dst.location(),
            sessions=len(keys),
            copied=copied,
            unchanged=unchanged,
            extra=extra,
            deleted=deleted,
            problems=problems,
            seconds=time.perf_counter() - started,
        )
    finally:
        with anyio.CancelScope(shield=True):  # closing what never opened (or half did) is fine
            await dst.aclose()
            await src.aclose()


async def _write(backend: Backend, writes: list[Write]) -> None:
    if not writes:
        return
    result = await backend.write_batch(writes, durable=True)
    for errors in (result.failed, result.in_doubt, result.unsynced):
        for error in errors.values():
            raise error  # the first one; running the copy again resumes
    if result.conflicts:  # blind writes do not conflict; a backend that says so is wrong
        key = next(iter(result.conflicts))
        raise SessionStoreError(f"copying {key!r} into {backend.location()} conflicted with another writer")


async def _backend(target: str | os.PathLike[str] | Backend, *, must_exist: bool) -> Backend:
    """The unopened backend ``target`` names (as ``open_store`` reads it)."""
    if is_redis_url(target):
        assert isinstance(target, str)
        return redis_backend(target, create=not must_exist)
    if isinstance(target, (str, os.PathLike)):
        paths = StorePaths.of(target)
        fs = FileSystem()
        if must_exist and await anyio.to_thread.run_sync(detect_mode, fs, paths) is None:
            raise StoreFormatError(f"no session store at {os.fspath(target)}")
        return await file_backend(
            paths,
            fs,
            None,
            lock_timeout=DEFAULT_LOCK_TIMEOUT,
            max_entry_bytes=DEFAULT_MAX_ENTRY_BYTES,
            cache_bytes=DEFAULT_CACHE_BYTES,
            tmp_max_age=DEFAULT_TMP_MAX_AGE,
        )
    return target
