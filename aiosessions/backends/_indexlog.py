"""The records of the recency index's log, and how they are framed on disk.

Each record is ``<u32 length><u32 CRC-32 of the payload><payload>``, the payload
a MessagePack array whose first item names its kind:

``["h", version, log name]``
    the header, first in every log.
``["b", writer, seq, stripe, [key, ...]]``
    an intent: ``writer`` is about to change these keys of one lock stripe,
    appended under the stripe's lock before anything is written.
``["e", writer, seq, [[key, state], ...], folder]``
    the end of that intent, appended before the stripe's lock is released:
    the state of each key it changed (keys it left alone are not listed).
    ``folder`` is None, or ``[before, after]``: the store folder's signature
    before and after, when the intent may have added or removed a session folder.
``["f", [[writer, seq], ...], [[key, state], ...]]``
    a fix: the states a reader found in the session files for intents whose
    writer died (or could not append their end), and for keys whose state was
    unknown; appended under the stripe's lock too.

A state is None (no session), ``[rank, inode, size, mtime_ns]`` of its
``meta.json``, or 0: unknown (a write failed half-way; a reader reads the file).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .._keys import lock_stripe
from .._layout import LOCK_STRIPES

__all__ = [
    "LOG_VERSION",
    "UNKNOWN",
    "FolderSig",
    "LogDamaged",
    "State",
    "Tail",
    "encode_record",
    "is_unknown",
    "parse_records",
    "unwire",
    "wire",
]

LOG_VERSION = 1
#: The state of a key whose write failed half-way: read its file to know it.
UNKNOWN = 0
#: No record is this long; a longer length means a damaged log.
MAX_RECORD = 64 * 1024 * 1024

_FRAME = struct.Struct("<II")
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


class LogDamaged(ValueError):
    """A record that is not what was appended: a torn write or a change by hand."""


def encode_record(record: Sequence[Any]) -> bytes:
    payload = _encoder.encode(record)
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def parse_records(data: bytes | memoryview, start: int = 0) -> tuple[list[list[Any]], int]:
    """The whole records in ``data[start:]`` and where the first incomplete one begins.

    :raises LogDamaged: a record's length or checksum is wrong, or it does not decode.
    """
    records: list[list[Any]] = []
    end = len(data)
    at = start
    while at + _FRAME.size <= end:
        length, crc = _FRAME.unpack_from(data, at)
        if length > MAX_RECORD:
            raise LogDamaged(f"a record at offset {at} claims {length} bytes")
        if at + _FRAME.size + length > end:
            break
        payload = data[at + _FRAME.size : at + _FRAME.size + length]
        if zlib.crc32(payload) != crc:
            raise LogDamaged(f"the record at offset {at} does not match its checksum")
        try:
            record = _decoder.decode(payload)
        except msgspec.DecodeError as exc:
            raise LogDamaged(f"the record at offset {at} does not decode: {exc}") from None
        if not isinstance(record, list) or not record or not isinstance(record[0], str):
            raise LogDamaged(f"the record at offset {at} is not a record")
        records.append(record)
        at += _FRAME.size + length
    return records, at


#: A session's state in the index: (rank, inode, size, mtime_ns) of its meta.json; None:
#: no session; UNKNOWN: its file must be read to know.
State = tuple[int, int, int, int] | None | int

FolderSig = tuple[int, ...]


def wire(state: State) -> Any:
    return list(state) if isinstance(state, tuple) else state


def is_unknown(state: State) -> bool:
    return type(state) is int


def unwire(value: Any) -> State:
    if value is None:
        return None
    if type(value) is int and value == UNKNOWN:
        return UNKNOWN
    if isinstance(value, list) and len(value) == 4 and all(type(v) is int for v in value):
        return (value[0], value[1], value[2], value[3])
    raise LogDamaged(f"{value!r} is not a session state")


#: The directory store's lock stripes (the format's, ``_layout``), by which intents are kept.
STRIPES = LOCK_STRIPES


@dataclass
class Tail:
    """The records of one log past the database's: the latest state of each key they touch."""

    states: dict[str, State] = field(default_factory=dict)
    #: Intents without their end: (writer, seq) -> (stripe, keys, the record as read).
    intents: dict[tuple[int, int], tuple[int, list[str], list[Any]]] = field(default_factory=dict)
    #: Store-folder signatures after logged changes, and those seen before them.
    afters: dict[FolderSig, None] = field(default_factory=dict)  # ordered, as appended
    befores: list[FolderSig] = field(default_factory=list)

    def apply(self, record: list[Any]) -> list[str]:
        """Apply one record; return the keys whose state it set."""
        kind = record[0]
        try:
            if kind == "b":
                _, writer, seq, stripe, keys = record
                self.intents[(writer, seq)] = (stripe, list(keys), record)
                return []
            if kind == "e":
                _, writer, seq, states, folder = record
                self.intents.pop((writer, seq), None)
                if folder is not None:
                    before, after = folder
                    self.befores.append(tuple(before))
                    self.afters[tuple(after)] = None
            elif kind == "f":
                _, resolved, states = record
                for writer, seq in resolved:
                    self.intents.pop((writer, seq), None)
            elif kind == "h":
                if record[1] != LOG_VERSION:
                    raise LogDamaged(f"log version {record[1]}, not {LOG_VERSION}")
                return []
            else:
                raise LogDamaged(f"unknown record kind {kind!r}")
            changed = []
            for key, state in states:
                if not isinstance(key, str):
                    raise LogDamaged(f"{key!r} is not a key")
                self.states[key] = unwire(state)
                changed.append(key)
            return changed
        except (ValueError, TypeError) as exc:
            if isinstance(exc, LogDamaged):
                raise
            raise LogDamaged(f"a malformed {kind!r} record: {exc}") from None

    def unknown_by_stripe(self) -> dict[int, set[str]]:
        """Keys to read from their files, by lock stripe: unknown states and dead intents' keys."""
        out: dict[int, set[str]] = {}
        for key, state in self.states.items():
            if is_unknown(state):
                out.setdefault(lock_stripe(key, STRIPES), set()).add(key)
        return out
