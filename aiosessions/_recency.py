"""Recency: what listings sort by, the same rule for every backend and for the store.

A session's recency is its ``updatedAt``: an integer (not a bool) of at most
2**53 in magnitude -- what a JSON number holds exactly in JavaScript (OpenClaw
writes them) and in a Redis sorted set's double score. Anything else (absent,
a float, a string, a bigger integer, an entry that does not decode) has no
recency, None, and sorts after every session that has one.

Listings order sessions by :func:`rank` ascending (the highest ``updatedAt``
first, then the sessions without one), ties by key ascending: that order is
total, so a page that starts after the last ``(key, updatedAt)`` pair of the
previous one neither repeats nor skips a session that did not change meanwhile.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Container, Iterable, Mapping
from heapq import merge
from itertools import islice

from ._entry import DECODE_ERRORS, recency_of

__all__ = [
    "MAX_RECENCY",
    "NO_RECENCY_RANK",
    "Ordered",
    "Position",
    "PendingRecency",
    "check_limit",
    "merge_pending",
    "position_of",
    "prefix_end",
    "rank",
    "recency_of_encoded",
    "recency_of_stored",
    "recency_of_rank",
]

#: The largest ``updatedAt`` magnitude that counts as a recency (exact in a double).
MAX_RECENCY = 2**53
#: The rank of a session without a recency: above every real rank, so those sort last.
NO_RECENCY_RANK = 2**62
#: Where a listing is: ``(rank, key)``; a page holds what sorts strictly after it.
Position = tuple[int, str]
#: Before every session: ranks are at least ``-MAX_RECENCY`` and keys are never empty.
_START: Position = (-MAX_RECENCY - 1, "")

#: Entries at least this long have their recency found by a byte search, not parsed.
FAST_FROM = 16 * 1024
_MARK = b'"updatedAt"'
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_INTEGER = re.compile(rb"[ \t\r\n]*:[ \t\r\n]*(-?(?:0|[1-9][0-9]*))(?![0-9.eE])")


def bounded(value: object) -> int | None:
    """``value`` if it is a recency (an int, not a bool, within :data:`MAX_RECENCY`), else None."""
    if type(value) is int and -MAX_RECENCY <= value <= MAX_RECENCY:
        return value
    return None


def recency_of_stored(data: bytes) -> int | None:
    """The recency of an entry as stored, whoever wrote it: a full parse; None if it does not decode."""
    try:
        return bounded(recency_of(data))
    except DECODE_ERRORS:
        return None


def recency_of_encoded(data: bytes) -> int | None:
    """The recency of an entry this library encoded, without parsing all of a large one.

    Decoding only ``updatedAt`` still parses the whole JSON text: about 2 us for a 3 KB
    entry but 200 us for a 120 KB one, more than writing it costs. From
    :data:`FAST_FROM` bytes up, the member is found with a byte search instead (it is
    usually near the start: the second field of :class:`SessionEntry`) and checked to be
    a member of the outer object (outside every string, at depth one, in a name's
    position). That is the parser's answer for JSON as msgspec writes it, which never
    escapes an ASCII letter in a name nor repeats a name; smaller entries are parsed.
    """
    if len(data) < FAST_FROM:
        return recency_of_stored(data)
    at = data.find(_MARK)
    while at >= 0:
        bare = _JSON_STRING.sub(b"", data[:at]).rstrip(b" \t\r\n")
        depth = bare.count(b"{") + bare.count(b"[") - bare.count(b"}") - bare.count(b"]")
        if b'"' not in bare and depth == 1 and bare.endswith((b"{", b",")):
            found = _INTEGER.match(data, at + len(_MARK))
            return None if found is None else bounded(int(found.group(1)))
        at = data.find(_MARK, at + len(_MARK))  # that one was nested, or inside a string
    return None


def rank(recency: int | None) -> int:
    """The sort rank of a recency: ascending rank is newest first, None last."""
    return NO_RECENCY_RANK if recency is None else -recency


def recency_of_rank(value: int) -> int | None:
    """The inverse of :func:`rank`."""
    return None if value == NO_RECENCY_RANK else -value


def check_limit(limit: object) -> int:
    """``limit`` if it is a valid page size; :raises ValueError/TypeError: otherwise."""
    if type(limit) is not int:
        raise TypeError(f"limit must be an int, not {type(limit).__name__}")
    if limit < 0:
        raise ValueError(f"limit must be 0 or more, not {limit}")
    return limit


def position_of(after: object) -> Position:
    """The listing position just after the pair ``after`` (None: the start).

    :raises TypeError: ``after`` is not a ``(key, updatedAt)`` pair as listings return.
    """
    if after is None:
        return _START
    if not (isinstance(after, tuple | list) and len(after) == 2):
        raise TypeError(f"after must be a (key, updated_at) pair from the previous page, not {after!r}")
    key, recency = after
    if not isinstance(key, str) or not (recency is None or bounded(recency) is not None):
        raise TypeError(
            f"after must be a (key, updated_at) pair from the previous page (a str and an int "
            f"within +-2**53 or None), not {after!r}"
        )
    return (rank(recency), key)


def prefix_end(prefix: str) -> str | None:
    """The least string above every string that starts with ``prefix``; None if there is none.

    Strings in ``[prefix, prefix_end(prefix))`` are exactly those starting with
    ``prefix``, in code point order (which is also UTF-8 byte order).
    """
    head = prefix.rstrip("\U0010ffff")
    if not head:
        return None
    following = ord(head[-1]) + 1
    if 0xD800 <= following <= 0xDFFF:
        following = 0xE000  # keys never hold surrogates
    return head[:-1] + chr(following)


class PendingRecency:
    """The recency of this process's pending changes, decoded once per pending value."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[bytes, int | None]] = {}

    def of(self, key: str, data: bytes) -> int | None:
        seen = self._seen.get(key)
        if seen is not None and seen[0] is data:
            return seen[1]
        found = recency_of_encoded(data)
        self._seen[key] = (data, found)
        return found

    def forget_all_but(self, keys: Iterable[str]) -> None:
        """Drop what is remembered of keys no longer pending (keeps memory bounded)."""
        keep = set(keys)
        self._seen = {key: seen for key, seen in self._seen.items() if key in keep}

    def __len__(self) -> int:
        return len(self._seen)


def merge_pending(
    stored: Iterable[tuple[str, int | None]],
    pending: Mapping[str, int | None],
    changed: Container[str],
    *,
    limit: int,
    start: Position,
) -> list[tuple[str, int | None]]:
    """A page of the newest sessions as this process sees them.

    ``stored`` is the backend's page from ``start``, with at least ``limit`` more
    rows than ``changed`` holds keys when the store has that many; ``changed``
    holds this process's unwritten keys (deletes included) and ``pending`` maps
    those that exist to their recency.
    """
    kept = ((rank(at), key) for key, at in stored if key not in changed)
    mine = sorted(item for key, at in pending.items() if (item := (rank(at), key)) > start)
    return [(key, recency_of_rank(r)) for r, key in islice(merge(kept, mine), limit)]


class Ordered:
    """The sessions of a small in-memory store sorted both ways, built once per version of it."""

    def __init__(self, pairs: Iterable[tuple[str, int | None]]) -> None:
        self.ranked = sorted((rank(at), key) for key, at in pairs)
        self.names = sorted(key for _, key in self.ranked)

    def newest(self, limit: int, start: Position) -> list[tuple[str, int | None]]:
        at = bisect_right(self.ranked, start)
        return [(key, recency_of_rank(r)) for r, key in self.ranked[at : at + limit]]

    def with_prefix(self, prefix: str) -> list[str]:
        end = prefix_end(prefix)
        low = bisect_left(self.names, prefix)
        high = len(self.names) if end is None else bisect_left(self.names, end, low)
        return self.names[low:high]
