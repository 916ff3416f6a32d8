"""Large members of an entry stored apart: split an entry's JSON into a small ``meta.json`` and
content-addressed blobs, and join them back, byte for byte (docs/design.md, "Large,
rarely-changing members stored apart").

Pure functions on bytes, no I/O: the directory format (format version 2) decides where blobs
live and when they are written; this module only decides what is split and how a split entry
reads. Members are handled as ``msgspec.Raw`` slices, never decoded, so splitting or joining a
123 KB entry scans it once and copies it once.

- A top-level member whose encoded value is ``BLOB_MIN`` bytes or more, in an entry of
  ``ENTRY_MIN`` bytes or more, goes into a blob named by the SHA-256 of its bytes. Smaller
  entries, and anything that is not a JSON object, are left whole: ``meta.json`` is the entry.
- The split ``meta.json`` holds the other members in their order plus one reserved member,
  ``"$parts": [[name, position, digest], ...]``. An entry's own top-level ``$parts`` member is
  always stored apart, so in a ``meta.json`` that name means this map and nothing else.
- :func:`join` puts every blob back at its position. The store writes compact JSON, so joining
  gives back exactly the bytes that were split (the compare-and-swap compares those bytes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import NamedTuple

import msgspec

__all__ = [
    "BLOB_MIN",
    "ENTRY_MIN",
    "PARTS",
    "Last",
    "Pieces",
    "encode_members",
    "join",
    "join_members",
    "measure",
    "members",
    "references",
    "split",
    "split_members",
    "views",
]

#: A member at least this large (its encoded JSON value) is stored apart ...
BLOB_MIN = 8 * 1024
#: ... in an entry at least this large.
ENTRY_MIN = 16 * 1024
#: The reserved member of a split ``meta.json``.
PARTS = "$parts"
_PARTS_BYTES = b'"' + PARTS.encode() + b'"'

#: The top-level members of an encoded entry, as slices. :raises msgspec.DecodeError: not an object.
members = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_parts = msgspec.json.Decoder(list[tuple[str, int, str]])
_encoder = msgspec.json.Encoder()


class Pieces(NamedTuple):
    """What :func:`split_members` found of an entry it split, so that nobody decodes its
    ``meta.json`` again to learn it."""

    #: ``(member, digest)`` of each member stored apart, in the order of ``$parts``.
    named: tuple[tuple[str, str], ...]
    #: The entry's top-level members, as slices of it.
    members: Mapping[str, msgspec.Raw]


#: What a store knows of a member's last stored value, by the member's name: its digest, its
#: bytes if still cached, and the slice of the entry it was in (or None).
Last = tuple[str, "bytes | None", "msgspec.Raw | None"]


def split(data: bytes, known: Mapping[str, Last] | None = None) -> tuple[bytes, dict[str, bytes]]:
    """``(meta, blobs)``: the bytes for ``meta.json`` and ``{digest: bytes}`` of each blob.

    ``meta`` is ``data`` itself (and ``blobs`` empty) when nothing is split. ``known`` tells
    a member's last stored value by its name: a member that is that very slice, or whose
    bytes are equal (a ``memcmp``), takes that digest without being hashed again.
    """
    meta, blobs, _ = split_members(data, known)
    return meta, blobs


def split_members(
    data: bytes, known: Mapping[str, Last] | None = None, slices: Mapping[str, msgspec.Raw] | None = None
) -> tuple[bytes, dict[str, bytes], Pieces | None]:
    """:func:`split`, and what it found of ``data`` when it is split (None otherwise): its
    parts and its top-level members (slices of ``data``), from the same scan.

    ``slices``: the top-level members of ``data`` when the caller has them (the store does
    after ``update_members()``): then ``data`` is not scanned, and a large member that is
    the very slice ``known`` names is neither copied nor compared. Slices whose lengths do
    not add up to ``data`` are not its members: ``data`` is scanned.
    """
    if len(data) < ENTRY_MIN and _PARTS_BYTES not in data:
        return data, {}, None
    own = None
    if slices is not None:
        try:
            own = views(data, slices)
        except ValueError:
            slices = None
    if slices is None or own is None:
        try:
            slices = own = members(data)
        except msgspec.DecodeError:
            return data, {}, None  # not a JSON object (an array-like Struct): kept whole
    small: dict[str, object] = {}
    parts: list[tuple[str, int, str]] = []
    blobs: dict[str, bytes] = {}
    for position, (name, raw) in enumerate(slices.items()):
        if name == PARTS or (len(data) >= ENTRY_MIN and len(raw) >= BLOB_MIN):
            last = None if known is None else known.get(name)
            if last is not None and last[2] is raw and last[1] is not None:
                digest, blob = last[0], last[1]  # the slice stored last time: the same bytes
            else:
                blob = bytes(raw)
                if last is not None and last[1] == blob:
                    digest, blob = last[0], last[1]  # the very bytes already cached: no second copy kept
                else:
                    digest = hashlib.sha256(blob).hexdigest()
            blobs[digest] = blob
            parts.append((name, position, digest))
        else:
            small[name] = own[name]
    if not parts:
        return data, {}, None
    small[PARTS] = parts
    return _encoder.encode(small), blobs, Pieces(tuple((n, d) for n, _, d in parts), own)


#: The encoded ``"name":`` of member names seen, bounded (names recur across entries).
_name_prefixes: dict[str, bytes] = {}
#: The total length of the ``"name":`` of a large entry's members, by its tuple of names
#: (sessions share their shape), bounded.
_names_sizes: dict[tuple[str, ...], int] = {}
#: Entries at least this large are joined by :func:`encode_members` in one allocation.
_JOIN_MIN = 16 * 1024


def _prefix(name: str) -> bytes:
    prefix = _name_prefixes.get(name)
    if prefix is None:
        prefix = _encoder.encode(name) + b":"
        if len(_name_prefixes) < 4096:
            _name_prefixes[name] = prefix
    return prefix


def encode_members(slices: Mapping[str, msgspec.Raw]) -> bytes:
    """The compact JSON object of ``slices`` (the encoder's bytes exactly).

    A large entry is joined from its pieces in one allocation of its exact size: the
    encoder grows its buffer as it writes (copying, and past glibc's mmap threshold touching
    fresh pages), which made a second change by member of a pending 121 KB session cost twice
    as much (docs/benchmarks.md). A small one goes to the encoder, which loops in C.
    """
    if sum(map(len, slices.values())) < _JOIN_MIN:
        return _encoder.encode(slices)
    pieces = [b"{"]
    for name, raw in slices.items():
        pieces += (_prefix(name), raw, b",")
    pieces[-1] = b"}"
    return b"".join(pieces)


def measure(slices: Mapping[str, msgspec.Raw]) -> tuple[bytes | None, int]:
    """``(encoding, size)``: the size of ``encode_members(slices)`` without joining them, and
    the encoding itself when they are small (under ``_JOIN_MIN`` bytes the encoder's C loop
    costs what counting does), else None."""
    values = sum(map(len, slices.values()))
    if values < _JOIN_MIN:
        data = _encoder.encode(slices)
        return data, len(data)
    names = tuple(slices)
    named = _names_sizes.get(names)
    if named is None:
        named = sum(len(_prefix(name)) for name in names)
        if len(_names_sizes) < 1024:
            _names_sizes[names] = named
    return None, 1 + named + values + len(names)  # "{" + each "name":value + "," (the last "}")


def views(data: bytes, slices: Mapping[str, msgspec.Raw]) -> dict[str, msgspec.Raw]:
    """``slices`` again, each a view into ``data`` itself, which must be their compact encoding
    in order (``data = encode(slices)``): found from their lengths, not by a scan.

    A slice keeps the bytes it views alive; views of ``data`` keep nothing else (a slice of
    the entry a change started from would keep that whole entry).

    :raises ValueError: the lengths do not add up to ``data``'s (it is not their encoding).
    """
    buffer = memoryview(data)
    out = {}
    position = 1  # after "{"
    for name, raw in slices.items():
        position += len(_prefix(name))
        end = position + len(raw)
        out[name] = msgspec.Raw(buffer[position:end])
        position = end + 1  # after "," (or the closing "}")
    # Past the closing "}" (or, with no member, at it).
    if position != (len(data) if slices else len(data) - 1) or data[:1] != b"{":
        raise ValueError("the bytes given are not the encoding of the members given")
    return out


def references(meta: bytes) -> list[tuple[str, int, str]] | None:
    """The blobs a ``meta.json`` names, as ``(member, position, digest)``; None when it is whole."""
    if _PARTS_BYTES not in meta:
        return None
    try:
        raw = members(meta).get(PARTS)
    except msgspec.DecodeError:
        return None
    return None if raw is None else _parts.decode(raw)


def join(meta: bytes, blobs: Mapping[str, bytes]) -> bytes:
    """The whole entry: ``meta`` with each blob it names put back at its position.

    Raises ``KeyError`` naming the digest of a blob missing from ``blobs``, and
    ``msgspec.DecodeError`` for a ``meta.json`` whose ``$parts`` is not this module's.
    """
    return join_members(meta, blobs)[0]


def join_members(meta: bytes, blobs: Mapping[str, bytes]) -> tuple[bytes, dict[str, msgspec.Raw] | None]:
    """:func:`join`, and the top-level members of the entry as slices of it, in its order (None
    when ``meta`` is whole): equal to ``members(join(meta, blobs))``, found by decoding ``meta``
    (a kilobyte or two) instead of scanning the whole entry. Raises as :func:`join`."""
    if _PARTS_BYTES not in meta:
        return meta, None
    slices = members(meta)
    raw = slices.pop(PARTS, None)
    if raw is None:
        return meta, None
    parts = _parts.decode(raw)
    ordered = list(slices.items())
    for name, position, digest in sorted(parts, key=lambda part: part[1]):
        ordered.insert(position, (name, msgspec.Raw(blobs[digest])))
    joined = dict(ordered)
    whole = encode_members(joined)
    return whole, views(whole, joined)
