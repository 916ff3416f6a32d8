"""Session key <-> directory name: pure functions, no I/O.

A key becomes a name made of lowercase ASCII letters, digits and ``- _ . ~ ^ % =``,
so names are safe on Linux, macOS and Windows and never differ only by case:

* ``a-z 0-9 - _`` stand for themselves, and so does ``.`` except first or last
  (a name is never ``.``/``..``, never hidden, and Windows strips trailing dots);
* ``:`` -- the separator of nearly every real key -- becomes ``~``, so
  ``agent:main:telegram:direct:james`` reads ``agent~main~telegram~direct~james``;
* an uppercase ASCII letter becomes ``^`` and its lowercase form (``A`` -> ``^a``);
* every other character becomes ``%`` and the lowercase hex of each of its UTF-8
  bytes (``/`` -> ``%2f``, ``é`` -> ``%c3%a9``). Non-ASCII is always escaped, so
  Unicode case folding and normalisation on macOS cannot merge two names;
* a name whose stem is a Windows device name (``con``, ``nul.x``, ``com1`` ...)
  gets its first character escaped.

Each token decodes one way, so the encoding is injective and reversible. A name
longer than :data:`MAX_NAME_BYTES` is shortened to a readable prefix, ``=`` and a
SHA-256 digest of the key; ``=`` appears in no other name, and the exact key of a
shortened name is kept in a ``key`` file beside its ``meta.json``.
"""

from __future__ import annotations

import hashlib
import re
import zlib

from ._errors import InvalidKeyError

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_NAME_BYTES",
    "decode_name",
    "encode_key",
    "is_shortened",
    "lock_stripe",
    "validate_key",
]

#: Longest encoded name kept whole. 143 bytes is the limit of eCryptfs, the
#: tightest common Linux filesystem; ext4, APFS and NTFS allow 255.
MAX_NAME_BYTES = 143
#: Longest key accepted, in UTF-8 bytes.
MAX_KEY_BYTES = 65536

_PREFIX_BYTES = 96
_DIGEST_HEX = 40
_HASH_MARK = "="

_LITERAL = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")
_HEX = frozenset("0123456789abcdef")
#: A name of plain tokens only, no "." first or last, not too long: decoded by one replace.
_PLAIN_NAME = re.compile(rf"[a-z0-9_~-](?:[a-z0-9_.~-]{{0,{MAX_NAME_BYTES - 2}}}[a-z0-9_~-])?")
_RESERVED = frozenset(
    ["con", "prn", "aux", "nul"] + [f"com{i}" for i in range(10)] + [f"lpt{i}" for i in range(10)]
)


def validate_key(key: object) -> str:
    """Return ``key`` if it can name a session, else raise :class:`InvalidKeyError`.

    :raises InvalidKeyError: not a ``str``, empty, holding NUL or a lone
        surrogate, or longer than :data:`MAX_KEY_BYTES` in UTF-8.
    """
    if not isinstance(key, str):
        raise InvalidKeyError(key, f"keys are str, not {type(key).__name__}")
    if not key:
        raise InvalidKeyError(key, "keys must not be empty")
    if "\x00" in key:
        raise InvalidKeyError(key, "keys must not contain NUL (\\x00)")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidKeyError(
            key, f"lone surrogate {key[exc.start]!r} at index {exc.start} is not valid Unicode"
        ) from None
    if size > MAX_KEY_BYTES:
        raise InvalidKeyError(key, f"keys are at most {MAX_KEY_BYTES} bytes of UTF-8, not {size}")
    return key


def _escape(char: str) -> str:
    return "".join(f"%{byte:02x}" for byte in char.encode("utf-8"))


def _ascii_token(char: str) -> str:
    if char in _LITERAL or char == ".":
        return char  # a first or last "." is escaped by _encode_full
    if char == ":":
        return "~"
    if "A" <= char <= "Z":
        return "^" + char.lower()
    return _escape(char)


#: Every ASCII character's token, for str.translate: keys are encoded on every
#: read and write, and nearly all are ASCII (one C call instead of a Python loop).
_ASCII_TOKENS = str.maketrans({chr(code): _ascii_token(chr(code)) for code in range(128)})


def _encode_full(key: str) -> str:
    if key.isascii():
        name = key.translate(_ASCII_TOKENS)
        if key[0] == ".":
            name = "%2e" + name[1:]
        if key[-1] == "." and len(key) > 1:
            name = name[:-1] + "%2e"
    else:
        name = _encode_loop(key)
    if name.split(".", 1)[0] in _RESERVED:
        name = _escape(name[0]) + name[1:]
    return name


def _encode_loop(key: str) -> str:
    last = len(key) - 1
    parts: list[str] = []
    for index, char in enumerate(key):
        if char in _LITERAL:
            parts.append(char)
        elif char == ":":
            parts.append("~")
        elif "A" <= char <= "Z":
            parts.append("^" + char.lower())
        elif char == "." and 0 < index < last:
            parts.append(".")
        else:
            parts.append(_escape(char))
    return "".join(parts)


def encode_key(key: str) -> str:
    """Return the directory name of ``key`` (validated; see the module docstring)."""
    validate_key(key)
    name = _encode_full(key)
    if len(name) <= MAX_NAME_BYTES:
        return name
    cut = _PREFIX_BYTES
    # Do not split an escape: back off to the start of a "%xx" or "^x" token.
    while cut > 0 and (name[cut - 1] in "%^" or (cut >= 2 and name[cut - 2] == "%")):
        cut -= 1
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:_DIGEST_HEX]
    return f"{name[:cut]}{_HASH_MARK}{digest}"


def is_shortened(name: str) -> bool:
    """Whether ``name`` is a shortened name whose key lives in a ``key`` file."""
    return _HASH_MARK in name


def decode_name(name: str) -> str:
    """Return the key that :func:`encode_key` turned into ``name``.

    :raises ValueError: ``name`` is not a name :func:`encode_key` produces
        (including shortened names, whose key must be read from their ``key`` file).
    """
    if _PLAIN_NAME.fullmatch(name) and name.split(".", 1)[0] not in _RESERVED:
        # Nearly every real name: letters, digits, "-", "_", inner "." and "~" for ":".
        # Each stands for itself (or ":"), so it is canonical as it is.
        return name.replace("~", ":")
    if is_shortened(name):
        raise ValueError(f"{name!r} is a shortened name; its key is in its key file")
    if len(name) > MAX_NAME_BYTES:
        # encode_key shortens every name this long, so this one is no session's name:
        # listing it as a key would yield a key that get() looks for under another name.
        raise ValueError(f"{name[:40]!r}... is longer than {MAX_NAME_BYTES} bytes, so not a canonical name")
    out = bytearray()
    i, n = 0, len(name)
    while i < n:
        char = name[i]
        if char in _LITERAL or char == ".":
            out += char.encode("ascii")
            i += 1
        elif char == "~":
            out += b":"
            i += 1
        elif char == "^" and i + 1 < n and "a" <= name[i + 1] <= "z":
            out += name[i + 1].upper().encode("ascii")
            i += 2
        elif char == "%" and i + 2 < n and set(name[i + 1 : i + 3]) <= _HEX:
            out.append(int(name[i + 1 : i + 3], 16))
            i += 3
        else:
            raise ValueError(f"{name!r} is not an encoded session key (at index {i})")
    try:
        key = out.decode("utf-8")
        validate_key(key)
    except (UnicodeDecodeError, InvalidKeyError):
        raise ValueError(f"{name!r} does not decode to a valid session key") from None
    if _encode_full(key) != name:
        raise ValueError(f"{name!r} is not the canonical name of its key")
    return key


def lock_stripe(key: str, stripes: int) -> int:
    """Return the cross-process lock stripe of ``key``: stable across processes and runs.

    :raises ValueError: ``stripes`` is not positive.
    """
    if stripes < 1:
        raise ValueError(f"stripes must be at least 1, not {stripes}")
    return zlib.crc32(key.encode("utf-8")) % stripes
