"""The one protocol every backend implements, and what a backend must guarantee.

The store does keys, validation, per-key locks, the write-behind queue, codecs,
limits and errors once; a backend only reads raw entry bytes, writes batches of
them and lists keys. Anything that implements :class:`Backend` can be handed to
:func:`aiosessions.open_store`; the contract suite in the repository's
``tests/contract.py`` checks a backend against these promises.

What a backend guarantees:

* **Whole entries.** :meth:`Backend.read` returns exactly the bytes of one
  :meth:`Backend.write_batch` (never a mix of two writes), or None.
* **Compare-and-swap per key.** A :class:`Write` that is not ``blind`` lands only
  if the stored bytes still equal ``expected`` (None: the key must be absent), checked
  atomically with the write against every other writer: other processes and hosts
  included. Otherwise it is reported in :attr:`BatchResult.conflicts` with the
  bytes found, and nothing is written for that key.
* **Each write alone.** Every write of a batch lands, conflicts or fails on its
  own; a failure of one key never marks another failed. A batch costs one
  worker-thread hop or one network round trip (or a few, for a cluster), never
  one per key.
* **Durable.** With ``durable=True``, a key reported landed survives a crash of
  the process and of the machine as far as the engine can promise it (a file
  backend: fsync of the file and its folder; a server: the server's own
  acknowledgement and persistence settings, documented by the backend).
* **Fresh reads.** A change another process or host has written is seen by the
  next :meth:`Backend.read`; a backend may cache, but must validate.
* **Listing in chunks.** :meth:`Backend.key_chunks` yields keys a chunk at a time
  without reading entries; keys changed while listing may or may not be seen, but
  a key that exists throughout is listed exactly once.
* **Recency.** :meth:`Backend.newest` and :meth:`Backend.count` answer from an
  index, not by reading every entry, exactly: what another process or host wrote
  is in the next answer, and a writer that died half-way never leaves it wrong.
* **Optional: a known base.** A backend may offer ``async read_base(key)``: the bytes an
  ``update()`` starts from when the backend knows them without a read (say, what it read or
  wrote a moment ago). They may be stale, because the update's write is a compare-and-swap that
  the backend checks against what is really stored: a stale base costs a retry, never an update.
  Without it (and for ``durable`` and write-through updates) the store calls :meth:`Backend.read`.
* **Optional: known members.** A backend that stores large top-level members apart may offer
  ``members_of(key, data)`` (not async): the top-level members of ``data`` as
  ``msgspec.Raw`` slices in the entry's order, when ``data`` is the entry of ``key`` it last
  read or wrote and it knows them without scanning ``data`` (else None). ``update_members()``
  starts from them instead of splitting the whole entry again.
* **Errors of the library.** Failures are :class:`~aiosessions.StoreIOError` (or
  another :class:`~aiosessions.SessionStoreError`) naming the key and where it
  lives; an entry that cannot be read back is
  :class:`~aiosessions.CorruptSessionError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

__all__ = ["Backend", "BatchResult", "Write"]


@dataclass(frozen=True, slots=True)
class Write:
    """One change in a batch: new bytes for ``key``, or ``None`` to delete it.

    Unless ``blind``, the write is a compare-and-swap: it happens only if the
    stored entry's bytes still equal ``expected`` (None: the entry must be absent).

    Attributes:
        key: The session's key.
        data: The entry's new bytes (compact JSON), or None to delete the entry.
        expected: The stored bytes the write requires (None: the entry must be absent).
        blind: Write whatever is stored (no compare-and-swap).
        members: The top-level members of ``data`` as slices, when the store has them
            (a change by ``update_members()``): a backend that splits entries may take
            them instead of scanning ``data``. Read-only; None when not known.
    """

    key: str
    data: bytes | None
    expected: bytes | None = None
    blind: bool = True
    members: Mapping[str, msgspec.Raw] | None = field(default=None, compare=False)


@dataclass(slots=True)
class BatchResult:
    """What became of each write of a batch.

    Attributes:
        landed: Keys written (or deleted) and now stored.
        conflicts: Keys not written because the stored entry changed: their current
            bytes (None = absent).
        failed: Keys not written because of an error (already one of the library's
            errors, naming the key).
        unsynced: Keys whose new bytes replaced the stored ones (readers see them) but
            whose durability is unknown (a failed fsync): the queue writes them again.
        in_doubt: Keys whose write may or may not have landed (a server's reply was lost):
            the queue sends that very write again, unchanged, and the backend tells then
            whether it had landed (by a receipt, say), so an update is never applied twice.
    """

    landed: list[str] = field(default_factory=list)
    conflicts: dict[str, bytes | None] = field(default_factory=dict)
    failed: dict[str, BaseException] = field(default_factory=dict)
    unsynced: dict[str, BaseException] = field(default_factory=dict)
    in_doubt: dict[str, BaseException] = field(default_factory=dict)


class Backend(Protocol):
    """Raw storage of entry bytes by key (see the module docstring for the guarantees)."""

    @property
    def mode(self) -> str:
        """What kind of backend this is: ``"directory"``, ``"json"``, ``"redis"`` ..."""
        ...

    @property
    def batch_size(self) -> int | None:
        """Most keys per batch; None: everything pending (a batch rewrites the whole store)."""
        ...

    def location(self, key: str | None = None) -> str:
        """Where ``key`` (or the whole store) lives, for messages: a path, a server and key.

        :param key: the session; None for the store itself.
        """
        ...

    async def open(self) -> None:
        """Connect or open files, detecting or creating the store as the backend's options say."""
        ...

    async def aclose(self) -> None:
        """Release files and connections; idempotent. Called once nothing else is running."""
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
        """Apply ``writes``; each lands, conflicts or fails alone (see the guarantees)."""
        ...

    def key_chunks(self, prefix: str = "") -> AsyncIterator[list[str]]:
        """Every stored key starting with ``prefix``, a chunk at a time, without reading entries.

        The cost should grow with the keys that match, not with the store.

        :param prefix: only keys starting with it ("" for all).
        """
        ...

    async def newest(
        self, limit: int, *, after: tuple[str, int | None] | None = None
    ) -> list[tuple[str, int | None]]:
        """Up to ``limit`` ``(key, updatedAt)`` pairs, the highest ``updatedAt`` first.

        Ties are broken by key (ascending, code point order); sessions without a
        recency (``updatedAt`` absent, not an integer, beyond +-2**53, or an entry
        that does not decode) come last with None, by key. Exact, including other
        processes' and hosts' written changes, without reading every entry (see
        ``aiosessions/_recency.py`` for the rule).

        :param limit: the most pairs to return.
        :param after: the last pair of the previous page: the page holds what sorts
            strictly after it (None: from the newest).
        """
        ...

    async def count(self) -> int:
        """How many sessions are stored, without reading them."""
        ...

    async def maintain(self) -> None:
        """Background upkeep while the store writes (say, sweeping orphaned files).

        Runs beside the flusher, from the store's first write (or from open, when
        :meth:`upkeep_due` says so) until the store closes; may return when done.
        """
        ...

    def upkeep_due(self) -> bool:
        """Whether :meth:`maintain` has work right after :meth:`open` (say, a sweep is due).

        The store starts its background tasks at its first write, so that opening a
        store only to read it costs no task; when this is True it starts them at open.
        Called once, on the event loop, after :meth:`open`: keep it to a ``stat``.
        """
        ...

    def counters(self) -> Mapping[str, int]:
        """The backend's own counters for :meth:`SessionStore.statistics` (say, ``{"swept": 3}``)."""
        ...
