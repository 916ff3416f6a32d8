"""The stores the benchmark runs on, built once per size for every contender.

The sessions come from :func:`aiosessions._bench.generate_sessions` (OpenClaw's
shapes, entries mostly 1-12 KB with a few 40-150 KB blobs) and
:func:`aiosessions._bench.headline_sessions` (650 sessions, 80 MB). One set of
files serves every contender of a kind: the legacy file (and a copy for the
library's JSON mode), the directory store (shared with the aiofiles store and
the physical limit, which use the same layout), a SQLite database and a
diskcache folder.
"""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import msgspec

from aiosessions._bench import (
    DEFAULT_SEED,
    HEADLINE_BYTES,
    HEADLINE_SESSIONS,
    Sessions,
    encode_legacy,
    generate_sessions,
    zipf_sampler,
)
from aiosessions._keys import encode_key

from .contenders import DiskcacheContender, SqliteContender

__all__ = ["SIZES", "Workload", "build_workload", "zipf_sampler"]

#: name -> (sessions, target bytes of the legacy file or None for the natural mix)
SIZES: dict[str, tuple[int, int | None]] = {
    "100": (100, None),
    "1k": (1_000, None),
    "10k": (10_000, None),
    "headline": (HEADLINE_SESSIONS, HEADLINE_BYTES),
}

_encode = msgspec.json.Encoder().encode


@dataclass
class Workload:
    """One generated store, laid out for every contender, and the keys to drive it with."""

    name: str
    seed: int
    folder: Path
    sessions: Sessions
    legacy_bytes: int
    #: Seconds ``aiosessions.migrate`` took to build the directory store (fsync off).
    migration_seconds: float
    kinds: set[str] = field(default_factory=set)

    @property
    def keys(self) -> list[str]:
        return list(self.sessions)

    @property
    def legacy(self) -> Path:
        return self.folder / "legacy" / "sessions.json"

    @property
    def json_mode(self) -> Path:
        return self.folder / "jsonmode" / "sessions.json"

    @property
    def directory(self) -> Path:
        return self.folder / "directory" / "sessions.json"

    @property
    def naive(self) -> Path:
        """The naive directory contenders' folder: ``<name>/meta.json`` of whole entries.

        Not aiosessions' folder, whose ``meta.json`` holds only the small members of a large
        entry (format version 2): reading it, they would skip the large ones.
        """
        return self.folder / "naive"

    @property
    def sqlite(self) -> Path:
        return self.folder / "sqlite" / "sessions.db"

    @property
    def diskcache(self) -> Path:
        return self.folder / "diskcache"

    def payload(self, key: str) -> bytes:
        """The entry's compact JSON as generated (what the physical limit writes)."""
        return _encode(self.sessions[key])

    def sample(self, count: int, salt: int) -> list[str]:
        """``count`` keys drawn uniformly (with repeats when count > sessions), seeded."""
        rng = random.Random(self.seed * 1_000 + salt)
        keys = self.keys
        return [rng.choice(keys) for _ in range(count)]

    def zipf(self, salt: int) -> Any:
        return zipf_sampler(len(self.sessions), random.Random(self.seed * 1_000 + salt))


async def build_workload(
    name: str, folder: Path, *, seed: int = DEFAULT_SEED, kinds: set[str], count: int | None = None
) -> Workload:
    """Generate the ``name`` store (see :data:`SIZES`) and lay it out for ``kinds`` of contender.

    ``kinds`` holds any of ``legacy``, ``jsonmode``, ``directory``, ``sqlite``, ``diskcache``.
    """
    from aiosessions import migrate

    sessions_count, target = SIZES[name]
    if count is not None:
        sessions_count = count
        target = None if target is None else int(target * count / SIZES[name][0])
    sessions = await anyio.to_thread.run_sync(
        lambda: generate_sessions(sessions_count, seed=seed, target_bytes=target)
    )
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    data = encode_legacy(sessions)
    work = Workload(name, seed, folder, sessions, len(data), float("nan"), set(kinds))
    for kind, path in (("legacy", work.legacy), ("jsonmode", work.json_mode), ("directory", work.directory)):
        if kind in kinds:
            path.parent.mkdir(parents=True)
            await anyio.to_thread.run_sync(path.write_bytes, data)
    del data
    if "directory" in kinds:
        started = time.perf_counter()
        await migrate(work.directory, fsync=False)
        work.migration_seconds = time.perf_counter() - started
        # The backup of the migrated file is not part of the store.
        for leftover in work.directory.parent.glob("sessions.json.pre-directory-migration.*"):
            leftover.unlink()
        await anyio.to_thread.run_sync(_write_whole_entries, work.naive, sessions)
    if "sqlite" in kinds:
        await anyio.to_thread.run_sync(SqliteContender.build, work.sqlite, sessions)
    if "diskcache" in kinds:
        await anyio.to_thread.run_sync(DiskcacheContender.build, work.diskcache, sessions)
    return work


def _write_whole_entries(folder: Path, sessions: Sessions) -> None:
    """One folder per session holding the whole entry, with aiosessions' folder names."""
    for key, entry in sessions.items():
        session = folder / encode_key(key)
        session.mkdir(parents=True)
        (session / "meta.json").write_bytes(_encode(entry))
