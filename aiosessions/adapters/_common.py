"""What the framework adapters share: holding a store, the clock, key parts, prefix listing.

Frameworks open their storage in one task (a startup hook, a fixture) and close it
in another (a shutdown hook): :class:`StoreHandle` opens its store lazily on first
use and closes it from whichever task asks, or uses a store the caller opened and
leaves closing it to them.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio

from .._store import DELETE, SessionStore, open_store
from ..backends import Backend

__all__ = [
    "Record",
    "StoreHandle",
    "StoreTarget",
    "deleting",
    "items_with_prefix",
    "key_part",
    "next_updated_at",
    "now_ms",
]

#: A stored entry of the adapters: a JSON object.
Record = dict[str, Any]
#: What an adapter is made from: a store path or URL, a backend object (all as for
#: ``open_store``), or a store opened by the caller.
StoreTarget = str | os.PathLike[str] | Backend | SessionStore[Record]


def deleting(fn: Callable[[Record | None], Record | None]) -> Callable[[Record | None], Any]:
    """``fn`` for ``store.update``, where ``fn`` returns None for "no entry" (``DELETE`` it)."""

    def apply(current: Record | None) -> Any:
        result = fn(current)
        return DELETE if result is None else result

    return apply


def now_ms() -> int:
    """Wall-clock epoch milliseconds: what ``updatedAt`` and expiry times hold."""
    return time.time_ns() // 1_000_000


def next_updated_at(previous: Record | None) -> int:
    """The ``updatedAt`` of a new version of ``previous``: the clock, but always later.

    Written inside ``store.update`` (compare-and-swap), so it grows with every version
    of a key even across processes, and tells a reader whether a key changed.
    """
    now = now_ms()
    if previous is not None:
        before = previous.get("updatedAt")
        if isinstance(before, int) and not isinstance(before, bool) and before >= now:
            return before + 1
    return now


_PART_ESCAPES = str.maketrans({"%": "%25", ":": "%3A", "\x00": "%00"})


def key_part(value: str) -> str:
    """``value`` made safe as one ``:``-separated part of a session key, readably.

    Only ``%``, ``:`` and NUL are escaped (``%25``, ``%3A``, ``%00``), so the part
    never contains the separator and distinct values give distinct parts.
    """
    return value.translate(_PART_ESCAPES)


async def items_with_prefix(store: SessionStore[Record], prefix: str) -> AsyncIterator[tuple[str, Record]]:
    """Every ``(key, entry)`` whose key starts with ``prefix``, listed by the store at a cost
    that grows with the matches, not with the store (``store.items(prefix)``)."""
    async for key, entry in store.items(prefix):
        yield key, entry


class StoreHandle:
    """The store an adapter works on.

    Made from a path or URL, the store is opened (``entry_type=dict``) on first use and
    closed by :meth:`aclose`, from any task; a later use opens it again. Made from a
    backend object, the same: but a backend that cannot be opened twice (the Redis
    backend) raises then. Made from an open store, it uses that store and never closes it.
    """

    def __init__(self, target: StoreTarget, *, what: str, options: dict[str, Any] | None = None) -> None:
        if not isinstance(target, (str, os.PathLike, SessionStore)) and not hasattr(target, "write_batch"):
            raise TypeError(
                f"{what} needs a store path, a store URL or an open store, not {type(target).__name__}"
            )
        self._owned = not isinstance(target, SessionStore)
        if isinstance(target, SessionStore):
            if target.entry_type is not dict:
                raise TypeError(
                    f"{what} keeps JSON objects: open the store with entry_type=dict "
                    f"(this one holds {target.entry_type.__name__} entries), or pass its path"
                )
            if options:
                raise TypeError(f"{what}: store options apply only when it opens the store itself")
            self._store: SessionStore[Record] | None = target
        else:
            self._store = None
        self._target = target
        self._options = dict(options or {})
        self._close: Callable[[], Awaitable[None]] | None = None
        self._opening = anyio.Lock()

    @property
    def owned(self) -> bool:
        """Whether the adapter opened (and so closes) the store."""
        return self._owned

    @property
    def current(self) -> SessionStore[Record] | None:
        """The store if it is open now, else None (nothing is opened)."""
        store = self._store
        return store if store is not None and not store.closed else None

    async def store(self) -> SessionStore[Record]:
        """The open store, opening it first if the adapter owns it and it is not open."""
        store = self._store
        if store is not None and (not store.closed or not self._owned):
            return store
        async with self._opening:
            if self._store is None or self._store.closed:
                self._store, self._close = await _open_owned(self._target, self._options)
            return self._store

    async def aclose(self) -> None:
        """Close the store if the adapter opened it (flushing what is queued); idempotent."""
        if not self._owned:
            return
        async with self._opening:
            close, self._close = self._close, None
            if close is not None:
                await close()


async def _open_owned(
    target: StoreTarget, options: dict[str, Any]
) -> tuple[SessionStore[Record], Callable[[], Awaitable[None]]]:
    """Open a dict store that may be closed from another task than the one that opened it."""
    assert not isinstance(target, SessionStore)
    store: SessionStore[Record] = await open_store(target, entry_type=dict, **options)
    return store, store.aclose
