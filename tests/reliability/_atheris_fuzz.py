"""Coverage-guided fuzzing (atheris/libFuzzer) of the decoders the store runs on bytes from disk.

Run by ``test_hostile.py::test_atheris`` as ``python _atheris_fuzz.py [corpus] -runs=N``;
libFuzzer exits non-zero on the first input that raises anything else than the documented
error. The first byte of an input picks the decoder:

0. an entry codec (``SessionEntry`` and ``dict``): ``DECODE_ERRORS`` (which the store turns
   into ``CorruptSessionError``), or a value that encodes and decodes back to itself;
1. ``recency_of`` (``updated_at``): ``DECODE_ERRORS``, or an int or None;
2. ``decode_legacy`` (``sessions.json``): ``CorruptSessionError``;
3. ``check_format`` (the FORMAT marker): ``StoreFormatError``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from aiosessions import CorruptSessionError, SessionEntry, StoreFormatError
    from aiosessions._entry import DECODE_ERRORS, codec_for, recency_of
    from aiosessions._layout import check_format
    from aiosessions.backends._json import decode_legacy

CODECS = [codec_for(SessionEntry), codec_for(dict)]
FORMAT = Path("sessions.d/FORMAT")


def one_input(data: bytes) -> None:
    if not data:
        return
    which, body = data[0] % 4, data[1:]
    if which == 0:
        for codec in CODECS:
            try:
                value = codec.decode(body)
            except DECODE_ERRORS:
                continue
            encoded = codec.encode(value)
            assert codec.encode(codec.decode(encoded)) == encoded, "an entry changed on a round trip"
    elif which == 1:
        try:
            at = recency_of(body)
        except DECODE_ERRORS:
            return
        assert at is None or type(at) is int
    elif which == 2:
        try:
            decode_legacy(body, "sessions.json")
        except CorruptSessionError:
            return
    else:
        try:
            check_format(body, FORMAT)
        except StoreFormatError:
            return


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
