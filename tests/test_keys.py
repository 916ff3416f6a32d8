"""Key <-> directory name (aiosessions._keys): properties over arbitrary Unicode and hostile keys.

The encoding is pure, so it is tested exhaustively with hypothesis: every name it
makes must be safe on Linux, macOS and Windows, and no two keys may share one.
"""

from __future__ import annotations

import re
import unicodedata
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiosessions import InvalidKeyError, SessionStoreError, _keys
from aiosessions._keys import (
    MAX_KEY_BYTES,
    MAX_NAME_BYTES,
    decode_name,
    encode_key,
    is_shortened,
    lock_stripe,
    validate_key,
)

# Characters the encoding treats specially, or that filesystems do: separators,
# escapes, case, dots, spaces, controls, combining marks, astral and RTL characters.
TRICKY = list(
    ":./\\%~^=-_ AZaz09!$[]@+*?\"<>|#&'`\t\n\r\x01\x1f\x7f\x80\xa0é\u0301\u200b\u202e\ufeff\uffff"
    "ß\u0130\u212a\U0001f600\U00010000\U0010ffff"
)
# Any code point except NUL and the surrogates (which no str that is valid Unicode holds).
CHAR = st.one_of(
    st.sampled_from(TRICKY),
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
)
# At most 1024 code points of at most 4 UTF-8 bytes each: keys up to 4 KiB.
SHORT_KEYS = st.text(CHAR, min_size=1, max_size=40)
LONG_KEYS = st.text(CHAR, min_size=100, max_size=1024)
KEYS = st.one_of(SHORT_KEYS, LONG_KEYS)
# A small alphabet of the characters that escapes are made of, to provoke near-collisions.
CLASHING_KEYS = st.text(st.sampled_from(list(":~-._^%=2eEfFaAcC.é")), min_size=1, max_size=8)

SAFE_NAME = re.compile(r"[a-z0-9\-_.~^%=]+")
RESERVED_STEMS = {"con", "prn", "aux", "nul"} | {f"{d}{i}" for d in ("com", "lpt") for i in range(10)}
# A shortened prefix must end on a token boundary, never inside "^x" or "%xx".
SPLIT_TOKEN = re.compile(r"(\^|%[0-9a-f]?)\Z")


def assert_safe_name(key: str, name: str) -> None:
    """Every property a directory name must have, whatever the key."""
    assert isinstance(name, str)
    assert encode_key(key) == name, "not deterministic"
    assert len(name.encode("utf-8")) <= MAX_NAME_BYTES <= 255
    assert SAFE_NAME.fullmatch(name), name
    # Never differs from another name only by case: there is no uppercase at all.
    assert name == name.lower()
    assert name not in (".", "..")
    assert not name.startswith(".")
    assert not name.endswith((".", " "))
    assert name.split(".", 1)[0].lower() not in RESERVED_STEMS, name
    assert "/" not in name and "\\" not in name and "\x00" not in name
    if is_shortened(name):
        prefix, digest = name.split("=")
        full = _keys._encode_full(key)
        assert len(full) > MAX_NAME_BYTES, "a name short enough was shortened"
        assert full.startswith(prefix)
        assert len(prefix) >= _keys._PREFIX_BYTES - 2, "the readable prefix was cut short"
        assert not SPLIT_TOKEN.search(prefix), f"prefix splits an escape: {prefix[-4:]!r}"
        assert re.fullmatch(r"[0-9a-f]{40}", digest)
        with pytest.raises(ValueError, match="shortened"):
            decode_name(name)
    else:
        assert "=" not in name
        assert decode_name(name) == key


@settings(max_examples=400, deadline=None)
@given(KEYS)
def test_every_name_is_safe_and_decodes(key: str) -> None:
    assert_safe_name(key, encode_key(key))


@settings(max_examples=200, deadline=None)
@given(st.lists(CLASHING_KEYS, unique=True, min_size=2, max_size=60))
def test_injective_on_near_collisions(keys: list[str]) -> None:
    names = [encode_key(key) for key in keys]
    assert len(set(names)) == len(keys), sorted(zip(names, keys, strict=True))


@settings(max_examples=100, deadline=None)
@given(st.lists(KEYS, unique=True, min_size=2, max_size=8))
def test_injective_on_arbitrary_keys(keys: list[str]) -> None:
    names = [encode_key(key) for key in keys]
    assert len(set(names)) == len(keys)


@settings(max_examples=100, deadline=None)
@given(st.text(st.sampled_from(list("ab:^%=.")), min_size=1, max_size=4), st.integers(0, 4))
def test_injective_on_long_keys_sharing_a_prefix(tail: str, extra: int) -> None:
    """Shortened names of keys that differ only after the prefix still differ (by digest)."""
    head = "agent:main:" + "x" * (MAX_NAME_BYTES + extra)
    first, second = encode_key(head + tail), encode_key(head + tail + "!")
    assert is_shortened(first) and is_shortened(second)
    assert first != second
    assert first.split("=")[0] == second.split("=")[0]


def test_hostile_keys(hostile_keys: list[str]) -> None:
    assert any("\x00" in key for key in hostile_keys), "the fixture lost its NUL key"
    valid = [key for key in hostile_keys if "\x00" not in key]
    for key in hostile_keys:
        if "\x00" in key:
            with pytest.raises(InvalidKeyError, match="NUL"):
                encode_key(key)
        else:
            assert_safe_name(key, encode_key(key))
    assert len({encode_key(key) for key in valid}) == len(valid)


def test_separator_case_and_dash_keys_are_three_sessions() -> None:
    names = {encode_key(key) for key in ("a:b:c", "a--b:c", "A:b:c")}
    assert len(names) == 3
    assert len({name.lower() for name in names}) == 3


def test_ordinary_keys_stay_readable() -> None:
    assert encode_key("agent:main:telegram:direct:james") == "agent~main~telegram~direct~james"
    assert decode_name("agent~main~telegram~direct~james") == "agent:main:telegram:direct:james"


@pytest.mark.parametrize("key", [".", "..", "...", ".hidden", "trailing.", "trailing ", " ", "a/b", "a\\b"])
def test_dots_spaces_and_separators(key: str) -> None:
    assert_safe_name(key, encode_key(key))


@pytest.mark.parametrize(
    "key",
    ["con", "CON", "Con", "nul", "nul.txt", "aux.tar.gz", "prn", "com1", "COM9", "lpt0", "lpt9.x", "conin$"],
)
def test_windows_device_names_are_escaped(key: str) -> None:
    assert_safe_name(key, encode_key(key))


def test_nfc_and_nfd_are_different_sessions() -> None:
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    assert encode_key(nfc) != encode_key(nfd)
    assert decode_name(encode_key(nfc)) == nfc
    assert decode_name(encode_key(nfd)) == nfd


def test_long_multibyte_keys_fit() -> None:
    for key in ("é" * 128, "\U0001f600" * 1024, "x" * 4096, "A" * 4096, "%" * 4096):
        assert len(key.encode("utf-8")) <= 4096
        name = encode_key(key)
        assert len(name.encode("utf-8")) <= 255
        assert_safe_name(key, name)


def test_largest_key_is_accepted() -> None:
    key = "é" * (MAX_KEY_BYTES // 2)
    assert len(key.encode("utf-8")) == MAX_KEY_BYTES
    assert validate_key(key) is key
    assert_safe_name(key, encode_key(key))


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        (b"agent:main", "not bytes"),
        (42, "not int"),
        (None, "not NoneType"),
        ("", "empty"),
        ("a\x00b", "NUL"),
        ("\x00", "NUL"),
        ("\ud800", "surrogate"),
        ("ok\udfffok", "surrogate"),
        ("x" * (MAX_KEY_BYTES + 1), f"at most {MAX_KEY_BYTES} bytes"),
        ("é" * (MAX_KEY_BYTES // 2) + "x", f"at most {MAX_KEY_BYTES} bytes"),
    ],
)
def test_invalid_keys(key: object, problem: str) -> None:
    for function in (validate_key, encode_key):
        with pytest.raises(InvalidKeyError) as info:
            function(key)  # type: ignore[arg-type]
        assert isinstance(info.value, ValueError)
        assert isinstance(info.value, SessionStoreError)
        assert problem in str(info.value)
        assert info.value.key is key
        # A huge key is not repeated whole in the message.
        assert len(str(info.value)) < 300


@pytest.mark.parametrize(
    "name",
    [
        "",
        "A",  # uppercase is always "^a"
        "a^A",
        "%2F",  # hex is lowercase
        "a%2",  # truncated escape
        "a%",
        "^",
        "^1",
        "%41",  # an escaped literal: "A" is "^a"
        "%61",  # an escaped literal: "a" is "a"
        "%3a",  # ":" is "~"
        "%2d",  # "-" is literal
        ".",
        "..",
        ".hidden",  # a leading dot is escaped
        "trailing.",
        "con",  # a device name is escaped
        "nul.txt",
        "a/b",
        "a b",
        "%00",  # NUL is not a valid key
        "%c3",  # not UTF-8
        "%ed%a0%80",  # an encoded surrogate
        "%c0%af",  # overlong UTF-8
        "abc=0123456789abcdef0123456789abcdef01234567",  # shortened: key in the key file
        "a" * (MAX_NAME_BYTES + 1),  # encode_key would have shortened it
    ],
)
def test_decode_name_rejects_non_canonical_names(name: str) -> None:
    with pytest.raises(ValueError):
        decode_name(name)


@settings(max_examples=200, deadline=None)
@given(st.text(st.sampled_from(list("az09-_.~^%=AZ/é ")), max_size=12))
def test_decode_name_accepts_only_what_encode_key_makes(name: str) -> None:
    try:
        key = decode_name(name)
    except ValueError:
        return
    assert encode_key(key) == name


@settings(max_examples=200, deadline=None)
@given(KEYS, st.integers(1, 4096))
def test_lock_stripe_is_crc32_and_in_range(key: str, stripes: int) -> None:
    stripe = lock_stripe(key, stripes)
    assert 0 <= stripe < stripes
    assert stripe == zlib.crc32(key.encode("utf-8")) % stripes
    assert lock_stripe(key, stripes) == stripe


def test_lock_stripe_rejects_no_stripes() -> None:
    with pytest.raises(ValueError, match="stripes"):
        lock_stripe("a", 0)
