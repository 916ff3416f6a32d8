"""The recency rule, the listing order and the key-prefix bounds (pure functions)."""

from __future__ import annotations

import random
from typing import Any
from unittest import mock

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiosessions import SessionEntry, _recency
from aiosessions._entry import codec_for
from aiosessions._recency import (
    MAX_RECENCY,
    Ordered,
    merge_pending,
    position_of,
    prefix_end,
    rank,
    recency_of_encoded,
    recency_of_rank,
    recency_of_stored,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
updated = st.one_of(
    st.integers(),
    st.integers(-MAX_RECENCY - 2, MAX_RECENCY + 2),
    st.sampled_from([True, False, None, 1.0, 1e3, "17", -0, 2**53, -(2**53), 2**64]),
    json_values,
)


@given(
    st.dictionaries(st.text(max_size=10), json_values, max_size=5),
    updated,
    st.integers(0, 5),
    st.booleans(),
)
@settings(max_examples=500)
def test_the_byte_search_agrees_with_the_parser(
    members: dict[str, Any], at: Any, where: int, nest: bool
) -> None:
    """On JSON as msgspec writes it (the search is used from FAST_FROM bytes up; here always)."""
    items = list(members.items())
    if nest:  # an updatedAt one level down, and one in a string, must not count
        items.insert(0, ("inner", {"updatedAt": 5, "note": 'a "updatedAt": 7 mention'}))
    items.insert(min(where, len(items)), ("updatedAt", at))
    with mock.patch.object(_recency, "FAST_FROM", 0):
        for data in (
            msgspec.json.encode(dict(items)),
            msgspec.json.encode(dict(items[1:] if nest else items)),
        ):
            assert recency_of_encoded(data) == recency_of_stored(data), data


def test_the_rule() -> None:
    assert recency_of_stored(b'{"updatedAt": 5}') == 5
    assert recency_of_stored(b'{"updatedAt": true}') is None
    assert recency_of_stored(b'{"updatedAt": 5.0}') is None
    assert recency_of_stored(b'{"updatedAt": "5"}') is None
    assert recency_of_stored(b'{"updatedAt": 9007199254740992}') == 2**53
    assert recency_of_stored(b'{"updatedAt": 9007199254740993}') is None
    assert recency_of_stored(b"not json") is None
    assert recency_of_stored(b"[1, 2]") is None
    with mock.patch.object(_recency, "FAST_FROM", 0):
        assert recency_of_encoded(b'{"a":{"updatedAt":3},"updatedAt":4}') == 4
        assert recency_of_encoded(b'{"a":"updatedAt","b":1}') is None
        assert recency_of_encoded(b'{"a\\"updatedAt":1}') is None
        assert recency_of_encoded(b'{ "x" : 1 , "updatedAt" : -12 }') == -12
    assert recency_of_encoded(b'{"updated\\u0041t":4}') == 4  # small: parsed


def test_the_byte_search_on_large_entries() -> None:
    codec = codec_for(SessionEntry)
    entry = SessionEntry(session_id="s", updated_at=1_700_000_000_123, model="m")
    entry.extra["skillsSnapshot"] = {"prompt": 'x "updatedAt": 9 ' * 6_000, "updatedAt": 3}
    data = codec.encode(entry)
    assert len(data) > _recency.FAST_FROM
    assert recency_of_encoded(data) == recency_of_stored(data) == 1_700_000_000_123
    odd = SessionEntry(session_id="s")
    odd.extra["skillsSnapshot"] = {"prompt": "x" * 100_000, "updatedAt": 3}
    odd.extra["updatedAt"] = "yesterday"  # after the nested one
    data = codec.encode(odd)
    assert recency_of_encoded(data) is None and recency_of_stored(data) is None
    late = {"blob": {"updatedAt": 1, "text": "y" * 50_000}, "updatedAt": 77}
    data = msgspec.json.encode(late)
    assert recency_of_encoded(data) == recency_of_stored(data) == 77


def test_rank_order_is_newest_first_then_none() -> None:
    pairs = [("b", 5), ("a", 5), ("c", None), ("a2", None), ("z", 9), ("y", -3)]
    ordered = sorted(pairs, key=lambda p: (rank(p[1]), p[0]))
    assert ordered == [("z", 9), ("a", 5), ("b", 5), ("y", -3), ("a2", None), ("c", None)]
    assert all(recency_of_rank(rank(at)) == at for _, at in pairs)


def test_position_of_checks_its_argument() -> None:
    assert position_of(None) < (rank(MAX_RECENCY), "")
    assert position_of(("k", 5)) == (-5, "k")
    assert position_of(["k", None]) == (rank(None), "k")
    for bad in ("k", ("k",), (5, 5), ("k", 1.5), ("k", True), ("k", 2**60)):
        with pytest.raises(TypeError):
            position_of(bad)


@given(st.text(max_size=4), st.lists(st.text(max_size=5), max_size=30))
@settings(max_examples=300)
def test_prefix_end_bounds_exactly_the_prefixed(prefix: str, others: list[str]) -> None:
    keys = [k for k in [*others, prefix + "x", prefix] if not any(0xD800 <= ord(c) <= 0xDFFF for c in k)]
    end = prefix_end(prefix)
    for key in keys:
        inside = key >= prefix and (end is None or key < end)
        assert inside == key.startswith(prefix), (prefix, key, end)


def test_prefix_end_edges() -> None:
    assert prefix_end("") is None
    assert prefix_end("ab") == "ac"
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("\U0010ffff") is None
    assert prefix_end("a\ud7ff") == "a\ue000"


def test_merge_pending_overlays_this_process() -> None:
    rng = random.Random(5)
    stored = {f"k{i}": rng.choice([None, *range(10)]) for i in range(40)}
    pending: dict[str, int | None] = {"k1": 99, "k2": None, "new": 4}
    changed = {"k1", "k2", "new", "k3"}  # k3: a pending delete
    truth = {k: v for k, v in stored.items() if k not in changed} | pending
    ordered = sorted(((rank(v), k) for k, v in truth.items()))
    for after in (None, ("k5", stored["k5"]), ("new", 4), ("zz", None)):
        start = position_of(after)
        page = sorted((rank(v), k) for k, v in stored.items())
        rows = [(k, recency_of_rank(r)) for r, k in page if (r, k) > start][: 7 + len(changed)]
        got = merge_pending(rows, pending, changed, limit=7, start=start)
        want = [(k, recency_of_rank(r)) for r, k in ordered if (r, k) > start][:7]
        assert got == want


def test_ordered_pages_and_prefixes() -> None:
    pairs = [(f"a:{i}", i % 4 or None) for i in range(10)] + [("b", 2), ("a", 1)]
    ordered = Ordered(pairs)
    assert ordered.with_prefix("a:") == sorted(k for k, _ in pairs if k.startswith("a:"))
    assert ordered.with_prefix("") == sorted(k for k, _ in pairs)
    seen: list[tuple[str, int | None]] = []
    start = position_of(None)
    while page := ordered.newest(5, start):
        seen += page
        start = position_of(page[-1])
    assert seen == sorted(pairs, key=lambda p: (rank(p[1]), p[0]))
