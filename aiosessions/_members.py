"""Changing some top-level members of an encoded entry without decoding the others.

What :meth:`SessionStore.update_members` stands on. An entry is split into its top-level
members as ``msgspec.Raw`` slices (immutable, so never a mutable object shared with a
caller); the named members are decoded, the function's new values encoded, and the
entry joined again from the slices, so a 120 KB member nobody touched is copied, not
decoded and encoded. Splitting scans the whole entry once (~20-40 µs for 120 KB here), so
the split of the bytes an update produced is kept for the next update of that key, and
a backend that stores large members apart may hand over the split it knows already
(``members_of``, see ``backends/_base.py``). Joining copies the whole entry once (25-35 µs
for 120 KB here), so a changed entry stays :class:`Unjoined` until its bytes are needed:
by the flusher that writes it, once for however many changes it coalesced.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from typing import Any

import msgspec

from . import _parts

__all__ = ["MemberSplits", "Split", "Unjoined", "changed", "current", "split"]

#: The top-level members of an encoded entry (the format's own splitter of members).
split = _parts.members
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode

Split = Mapping[str, msgspec.Raw]
#: A backend's ``members_of(key, data)``: the split of ``data`` if it knows it without a scan.
KnownSplit = Callable[[str, bytes], "Split | None"]


class Unjoined:
    """An entry changed by member, held as its members until its bytes are needed.

    The write-behind queue holds it as a key's pending state: the caller's change costs
    what its members cost, and the copy of the whole entry is made once, by whoever needs
    the bytes first (the flusher writing it, or a reader), then kept. Its members are
    immutable slices, so it is never a mutable object shared with a caller.
    """

    __slots__ = ("_data", "members", "size")

    def __init__(self, members: Split) -> None:
        self.members = members
        self._data: bytes | None
        #: ``len(self.data)``, known without joining (a small entry is encoded at once).
        self.size: int
        self._data, self.size = _parts.measure(members)

    @property
    def data(self) -> bytes:
        """The entry's bytes (compact JSON), joined at the first call."""
        if self._data is None:
            self._data = _parts.encode_members(self.members)
        return self._data

    @property
    def joined(self) -> bytes | None:
        """The entry's bytes if they were joined already (None: not yet)."""
        return self._data


class MemberSplits:
    """The entries last changed by member, a few keys' worth, to find their members again.

    A split is used only for bytes equal to those it was made of, so it can never be
    stale: any other write of the key makes other bytes.
    """

    def __init__(self, max_keys: int = 64, known: KnownSplit | None = None) -> None:
        self._max_keys = max_keys
        self._from_backend = known
        self._entries: OrderedDict[str, Unjoined] = OrderedDict()

    def of(self, key: str, data: bytes) -> Split:
        """The members of ``data``, the encoded entry of ``key``.

        :raises msgspec.DecodeError: ``data`` is not a JSON object.
        """
        # The backend's first: once a change is written, its members are views of the bytes
        # written, and a large member handed back as that very slice is neither copied nor
        # compared by the next write (see backends/_directory.py).
        given = None if self._from_backend is None else self._from_backend(key, data)
        if given is not None:
            return given
        known = self._entries.get(key)
        # The bytes the flusher joined come back from a backend's cache as the very object,
        # or from a fresh read as an equal one: a memcmp, far cheaper than a scan.
        joined = None if known is None else known.joined
        if joined is not None and (joined is data or joined == data):
            self._entries.move_to_end(key)
            return known.members  # type: ignore[union-attr]
        return split(data)

    def remember(self, key: str, entry: Unjoined) -> None:
        """``entry`` is the new state of ``key``."""
        self._entries[key] = entry
        self._entries.move_to_end(key)
        if len(self._entries) > self._max_keys:
            self._entries.popitem(last=False)


def current(split: Split | None, names: Collection[str]) -> dict[str, Any] | None:
    """The named members present in ``split``, decoded (None: no entry)."""
    if split is None:
        return None
    return {name: _decode(split[name]) for name in names if name in split}


def changed(
    split: Split | None, names: Collection[str], new: Mapping[str, Any]
) -> tuple[Unjoined, list[bytes]]:
    """The entry ``split`` with the named members set to ``new`` (a name missing from it is
    removed; members not named keep their bytes and places), and the encodings of the new
    values (all that is new in it).

    :raises TypeError: a value is not JSON-encodable.
    """
    members = {} if split is None else dict(split)
    fresh = []
    for name in names:
        if name in new:
            value = _encode(new[name])
            fresh.append(value)
            members[name] = msgspec.Raw(value)
        else:
            members.pop(name, None)
    return Unjoined(members), fresh
