"""What the directory backend remembers about entries split into ``meta.json`` and blobs
(format version 2; docs/design.md, "Large, rarely-changing members stored apart").

- **Blob bytes by digest.** A blob file never changes (its name is the SHA-256 of its
  bytes), so a cached blob needs no freshness check: reading a split entry whose
  ``meta.json`` changed costs a read of ``meta.json`` and a splice.
- **Per key, the last entry read or written**: the whole bytes, the ``meta.json`` bytes
  they were stored as, the digests of their parts and the entry's top-level members.
  Compare-and-swap then compares ``meta.json`` (a kilobyte or two) instead of the whole
  entry, a write hashes a large member only when its bytes differ from the last ones of
  that name, and ``update_members`` starts from the members without a scan.
- **Per key, the blob files this process made durable** in the session's folder, each by
  its digest and the file's signature (inode, size, mtime) when synced, kept apart from the
  entries (a few hundred bytes a key, :data:`SYNCED_KEYS` keys): a durable write naming
  the same file again does not fsync it again, even after the entry left the cache. A
  file of that digest made since (by another process, after a sweep or a delete, or by
  this one without fsync) has another signature, so it is synced again.

The first two are bounded by bytes (LRU); all three are shared by the writer threads of a
batch and the event loop, so every method takes a lock (held for dictionary operations only).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from .._fs import Signature
from .._parts import Last

__all__ = ["SYNCED_KEYS", "Blobs", "Known"]

#: Keys whose synced blob digests are remembered (LRU): ~300 bytes each at most.
SYNCED_KEYS = 32_768


@dataclass(frozen=True, slots=True)
class Known:
    """An entry as last read or written: ``whole`` bytes stored as ``meta``."""

    whole: bytes
    meta: bytes
    #: ``(member, digest)`` of each part ``meta`` names.
    parts: tuple[tuple[str, str], ...]
    #: The top-level members of ``whole`` as read-only slices of it (views: they keep
    #: nothing else alive), when it is split: what ``update_members`` starts from without
    #: scanning ``whole``.
    members: Mapping[str, msgspec.Raw] | None = None

    @property
    def size(self) -> int:
        return len(self.whole) + len(self.meta)


class Blobs:
    """Blob bytes by digest and the last known entry of each key, both LRU by bytes."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._blobs: OrderedDict[str, bytes] = OrderedDict()
        self._blob_bytes = 0
        self._known: OrderedDict[str, Known] = OrderedDict()
        self._known_bytes = 0
        self._synced: OrderedDict[str, Mapping[str, Signature]] = OrderedDict()

    # -- blobs ----------------------------------------------------------------------------

    def get(self, digest: str) -> bytes | None:
        with self._lock:
            data = self._blobs.get(digest)
            if data is not None:
                self._blobs.move_to_end(digest)
            return data

    def put(self, digest: str, data: bytes) -> None:
        """Cache ``data`` as the blob ``digest`` (its SHA-256: checked by the caller)."""
        if len(data) > self._max_bytes // 4:
            return
        with self._lock:
            if digest in self._blobs:
                self._blobs.move_to_end(digest)
                return
            self._blobs[digest] = data
            self._blob_bytes += len(data)
            while self._blob_bytes > self._max_bytes:
                _, evicted = self._blobs.popitem(last=False)
                self._blob_bytes -= len(evicted)

    # -- what each key last was -----------------------------------------------------------

    def known(self, key: str) -> Known | None:
        with self._lock:
            known = self._known.get(key)
            if known is not None:
                self._known.move_to_end(key)  # in step with the read cache, touched by every read
            return known

    def meta_of(self, key: str, whole: bytes) -> bytes | None:
        """The ``meta.json`` bytes ``whole`` was stored as, when this key's last entry was it."""
        known = self.known(key)
        if known is None or (known.whole is not whole and known.whole != whole):
            return None
        return known.meta

    def hints(self, key: str) -> dict[str, Last]:
        """What the key's last entry held of each member stored apart (for ``split``): its
        digest, its bytes while cached, and its slice of that entry (``Known.members``)."""
        known = self.known(key)
        if known is None or not known.parts:
            return {}
        slices = known.members or {}
        return {name: (digest, self.get(digest), slices.get(name)) for name, digest in known.parts}

    def remember(self, key: str, known: Known) -> None:
        size = known.size
        with self._lock:
            old = self._known.pop(key, None)
            if old is not None:
                self._known_bytes -= old.size
            if size > self._max_bytes // 4:
                return
            self._known[key] = known
            self._known_bytes += size
            while self._known_bytes > self._max_bytes:
                _, evicted = self._known.popitem(last=False)
                self._known_bytes -= evicted.size

    def forget(self, key: str) -> None:
        """The key's session is gone (deleted): nothing of it is remembered."""
        with self._lock:
            old = self._known.pop(key, None)
            if old is not None:
                self._known_bytes -= old.size
            self._synced.pop(key, None)

    # -- what this process made durable ---------------------------------------------------

    def synced(self, key: str) -> Mapping[str, Signature]:
        """``{digest: signature}`` of the key's blob files this process fsynced (with their
        folder); a file of that name with another signature is another file."""
        with self._lock:
            return self._synced.get(key, {})

    def set_synced(self, key: str, files: Mapping[str, Signature]) -> None:
        """The key's blobs now named are ``files``, all durable (empty: forget them)."""
        with self._lock:
            self._synced.pop(key, None)
            if files:
                self._synced[key] = files
                if len(self._synced) > SYNCED_KEYS:
                    self._synced.popitem(last=False)
