"""The one small protocol every backend implements.

The store does keys, validation, locks, the write-behind queue, codecs and
errors once; a backend only reads raw entry bytes, writes batches of them and
lists keys. Blocking work runs in worker threads, a whole batch or chunk per
hop; cheap reads of what the page cache holds may run inline on the event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .._layout import Mode

__all__ = ["Backend", "BatchResult", "Write"]


@dataclass(frozen=True, slots=True)
class Write:
    """One change in a batch: new bytes for ``key``, or ``None`` to delete it."""

    key: str
    data: bytes | None
    #: Compare-and-swap guard: unless ``blind``, the write happens only if the stored
    #: entry's bytes still equal ``expected`` (None: the entry must be absent). The
    #: comparison runs in the worker thread, under the key's cross-process lock.
    expected: bytes | None = None
    blind: bool = True


@dataclass(slots=True)
class BatchResult:
    """What became of each write of a batch."""

    #: Keys written (or deleted) and now on disk.
    landed: list[str] = field(default_factory=list)
    #: Keys not written because the stored entry changed: its current bytes (None = absent).
    conflicts: dict[str, bytes | None] = field(default_factory=dict)
    #: Keys not written because of an error (already translated to the library's errors).
    failed: dict[str, BaseException] = field(default_factory=dict)
    #: Keys whose new bytes replaced the file (readers see them) but whose fsync then
    #: failed, so their durability is unknown: the queue writes them again.
    unsynced: dict[str, BaseException] = field(default_factory=dict)


class Backend(Protocol):
    """Raw storage of entry bytes by key."""

    @property
    def mode(self) -> Mode:
        """``"directory"`` or ``"json"``."""
        ...

    @property
    def batch_size(self) -> int | None:
        """Most keys per batch; None: everything pending (a batch rewrites the whole store)."""
        ...

    #: Orphaned tmp files (and trash) removed by :meth:`maintain` so far.
    swept: int

    def location(self, key: str | None = None) -> str:
        """The path that holds ``key`` (or the store itself), for messages."""
        ...

    async def open(self, *, create: bool) -> None:
        """Open (creating a new empty store when ``create``)."""
        ...

    async def aclose(self) -> None:
        """Release file descriptors; idempotent."""
        ...

    async def read(self, key: str) -> bytes | None:
        """The stored bytes of ``key`` as another process may have left them; None if absent."""
        ...

    async def read_many(self, keys: Sequence[str]) -> list[bytes | BaseException | None]:
        """Like :meth:`read` for many keys in one hop; a failure is returned in its place."""
        ...

    async def exists(self, key: str) -> bool:
        """Whether ``key`` is stored (cheaply: no decoding)."""
        ...

    async def write_batch(self, writes: Sequence[Write], *, durable: bool) -> BatchResult:
        """Apply ``writes`` under the cross-process lock(s); each lands, conflicts or fails alone."""
        ...

    def key_chunks(self) -> AsyncIterator[list[str]]:
        """Every stored key, a chunk at a time, without reading entries."""
        ...

    async def maintain(self) -> None:
        """Background upkeep after open (the orphaned-tmp sweep); returns when done."""
        ...
